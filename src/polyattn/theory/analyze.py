"""``polyattn.analyze``: complexity and expressivity of an attention polynomial (DESIGN §1.4–§1.5).

The report is derived from the polynomial's structure only (plus the library's own planner for
the upper bound): nothing is looked up by name, so a relabelled or unusual polynomial gets the
same treatment as a named mechanism. Each item carries a one-line reason and the hypothesis it
rests on; ``None`` means the theory is silent (never a guess). See ``docs/theory.md``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from ..errors import PolyAttentionError
from ..planning import Plan, plan
from ..polynomial import AttentionPolynomial, parse
from . import classify as C

__all__ = ["AnalysisReport", "analyze", "DEFAULT_SEQ_LEN", "DEFAULT_HEAD_DIM"]

#: sizes used for the plan when ``analyze`` is called without ``seq_len`` / ``head_dim``
DEFAULT_SEQ_LEN = 4096
DEFAULT_HEAD_DIM = 64


@dataclass(frozen=True)
class AnalysisReport:
    """Classification of one polynomial. ``print(report)`` for text, ``report.to_dict()`` for JSON."""

    polynomial: AttentionPolynomial
    components: tuple[tuple[int, ...], ...]
    quadratic: C.Claim
    exact_upper: C.Claim
    exact_lower: C.Claim
    approximate: C.Claim
    composition: C.Claim
    match3: C.Claim
    plan: Plan
    notes: tuple[str, ...] = field(default=())

    # -- convenient scalar views ----------------------------------------------------------
    @property
    def num_variables(self) -> int:
        return self.polynomial.num_variables

    @property
    def degree(self) -> int:
        return self.polynomial.degree

    @property
    def is_tree(self) -> bool:
        return self.polynomial.is_tree

    @property
    def composition_depth(self) -> int | None:
        return self.composition.value  # type: ignore[return-value]

    @property
    def match3_solvable(self) -> bool | None:
        return self.match3.value  # type: ignore[return-value]

    @property
    def exact_upper_exponent(self) -> int:
        return self.plan.exponent

    @property
    def approx_bound_exponent(self) -> float:
        return 1.0 / self.polynomial.degree

    def to_dict(self) -> dict:
        p = self.polynomial
        return {
            "polynomial": str(p),
            "num_variables": p.num_variables,
            "degree": p.degree,
            "monomials": [list(m) for m in p.monomials],
            "structure": "graph" if p.degree == 2 else "hypergraph",
            "is_tree": p.is_tree,
            "components": [list(c) for c in self.components],
            "isolated_variables": list(p.isolated_variables),
            "quadratic": self.quadratic.value,
            "exact_upper_exponent": self.exact_upper_exponent,
            "exact_lower_bound": self.exact_lower.value,
            "approx_bound_exponent": self.approx_bound_exponent,
            "composition_depth": self.composition_depth,
            "match3": self.match3_solvable,
            "claims": {
                "quadratic": self.quadratic.to_dict(),
                "exact_upper": self.exact_upper.to_dict(),
                "exact_lower": self.exact_lower.to_dict(),
                "approximate": self.approximate.to_dict(),
                "composition_depth": self.composition.to_dict(),
                "match3": self.match3.to_dict(),
            },
            "plan": self.plan.to_dict(),
            "notes": list(self.notes),
        }

    def to_json(self, **kw: object) -> str:
        return json.dumps(self.to_dict(), indent=2, **kw)  # type: ignore[arg-type]

    def __str__(self) -> str:
        p = self.polynomial
        comps = ", ".join("{" + ",".join(f"x{v}" for v in c) + "}" for c in self.components)
        kind = "graph" if p.degree == 2 else "hypergraph"
        if p.is_tree:
            shape = "forest (tree polynomial)" if len(self.components) > 1 else "tree (tree polynomial)"
        else:
            shape = "not a tree polynomial"
        iso = ", ".join(f"x{v}" for v in p.isolated_variables) or "none"

        def fmt(v: object) -> str:
            if v is None:
                return "unknown"
            if v is True:
                return "yes"
            if v is False:
                return "no"
            return str(v)

        def line(label: str, c: C.Claim, value: str | None = None) -> list[str]:
            return [f"  {label:<22}: {value if value is not None else fmt(c.value)}",
                    f"  {'':<22}  why: {c.reason}",
                    f"  {'':<22}  rests on: {c.hypothesis}"
                    + ("" if c.basis != "restriction" else " (via a restriction)")]

        out = [
            f"Analysis of h = {p}",
            "structure",
            f"  variables             : t = {p.num_variables} (x1 is the query); isolated: {iso}",
            f"  degree                : k = {p.degree}; {len(p.monomials)} monomial(s): "
            + ", ".join("*".join(f"x{v}" for v in m) for m in p.monomials),
            f"  {kind:<22}: {shape}; components {comps}",
            "exact computation",
            *line("quadratic time", self.quadratic),
            *line("upper bound (planner)", self.exact_upper, f"n^{self.exact_upper_exponent}"),
            *line("lower bound", self.exact_lower),
            "approximate computation",
            *line("almost-linear iff", self.approximate,
                  f"B = o((log n)^(1/{p.degree}))  [approx_bound_exponent = {self.approx_bound_exponent:.4g}]"),
            "expressivity (one layer, one head)",
            *line("r-fold composition", self.composition),
            *line("Match3", self.match3),
            f"plan at n = {self.plan.spec.seq_lens[0]}, d = {self.plan.spec.head_dim}",
            *("  " + s for s in str(self.plan).splitlines()),
        ]
        out += [f"note: {n}" for n in self.notes]
        return "\n".join(out)


def _check_size(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PolyAttentionError(f"{name} must be a positive integer, got {value!r}")
    return value


def analyze(
    polynomial: str | AttentionPolynomial,
    *,
    seq_len: int | None = None,
    head_dim: int | None = None,
) -> AnalysisReport:
    """Classify ``polynomial``: structure, exact/approximate complexity, expressivity, plan.

    >>> r = analyze("x1*x2 + x2*x3")
    >>> r.quadratic.value, r.composition_depth, r.match3_solvable
    (True, 2, None)

    ``seq_len``/``head_dim`` (default 4096/64) only set the sizes of the reported plan; the
    classification does not depend on them. Malformed specs raise the parser's
    :class:`~polyattn.PolynomialSyntaxError` (with a caret under the column).
    """
    p = parse(polynomial)
    n = DEFAULT_SEQ_LEN if seq_len is None else _check_size("seq_len", seq_len)
    d = DEFAULT_HEAD_DIM if head_dim is None else _check_size("head_dim", head_dim)
    pl = plan(p, seq_len=n, head_dim=d)
    order, width = p.elimination_order()
    if pl.method == "elimination":
        up_reason = (f"variable elimination along {', '.join(f'x{v}' for v in pl.order)} "
                     f"(width {pl.width}): n^{pl.exponent} time")
    elif pl.method == "tree":
        up_reason = "tree message passing: one attention pass per edge, n^2 time"
    else:
        up_reason = f"method {pl.method!r}: {pl.reason}"
    notes = []
    if C.has_triangle(p) and p.degree == 2:
        notes.append("with fast matrix multiplication a triangle costs n^omega (omega < 2.372); "
                     "the library's BLAS elimination is n^3 * d arithmetic with n^2 memory")
    if p.isolated_variables:
        notes.append("variables in no monomial contribute the mean of their values (a constant "
                     "factor for every output row)")
    return AnalysisReport(
        polynomial=p,
        components=tuple(p.components()),
        quadratic=C.exact_quadratic(p),
        exact_upper=C.Claim(pl.exponent, up_reason, C.UNCONDITIONAL),
        exact_lower=C.exact_lower_bound(p),
        approximate=C.approximate(p),
        composition=C.composition_depth(p),
        match3=C.match3(p),
        plan=pl,
        notes=tuple(notes),
    )
