r"""Planning for ``method="approx"``: the polynomial method with an a-priori error bound (pure Python).

**The approximation.** Every monomial ``m`` of ``h`` contributes a factor ``exp(x_m)`` to a tuple's
weight, with ``x_m = s * sum_c prod_{v in m} Q_v[l_v, c]``. We replace ``exp`` by its Taylor
polynomial of *even* degree ``p``, ``P_p(x) = sum_{i<=p} x^i / i!`` (positive on all of R). By the
multinomial theorem

.. math::
    P_p(x_m) = \sum_{|\alpha| \le p} \frac{s^{|\alpha|}}{\alpha!} \prod_{v \in m} Q_v[l_v]^{\alpha},

a sum over multi-indices ``alpha`` in ``N^d`` (the symmetric tensor powers of the rows, *not* the
Kronecker powers), so each monomial factorises through per-variable features
``F_v[l, alpha] = Q_v[l]^alpha`` of rank ``r = C(d + p, p)``. The tuple sum then contracts in
``O(n * r * (dv + 1))`` per edge for tree-shaped factor graphs and along an opt_einsum path otherwise.

**The bound** (rigorous, in exact arithmetic). Let ``f_p(x) = P_p(x) e^{-x}``. Then
``f_p'(x) = -x^p/p! * e^{-x} <= 0`` for even ``p``, so ``f_p`` is decreasing on R and for
``|x| <= X``: ``f_p(X) <= f_p(x) <= f_p(-X)``, with ``f_p(X) > 0``. Let ``X_m`` bound ``|x_m|`` over
all tuples (see :func:`logit_bounds`). Every tuple's approximate weight is its exact weight times
``1 + delta_T = prod_m f_p(x_m)`` in ``[L, U] = [prod_m f_p(X_m), prod_m f_p(-X_m)]``.
With exact softmax weights ``w_T`` and ``dbar = sum_T w_T delta_T``, the approximate weights are
``w_T (1 + delta_T) / (1 + dbar)``, so for any constant ``c``

.. math::
    |\tilde o - o| = \Big|\sum_T w_T \frac{\delta_T - \bar\delta}{1 + \bar\delta} (V_T - c)\Big|
    \le \frac{(U - L)/2}{L} \max_T |V_T - c| ,

because the mean absolute deviation of a quantity confined to an interval of length ``U - L`` is at
most ``(U - L)/2`` and ``1 + dbar >= L``. ``V_T`` is the Hadamard product of the tuple's value rows;
per value column its range is enclosed by interval products of each value's column range, and
``c`` is the midpoint, giving the *value radius* ``R``. The stated bound is
``E(p) = (U - L) / (2 L) * R`` on the max abs error of every output entry. It covers the
truncation of ``exp``; floating-point rounding of the compute dtype (about ``1e-7`` relative in
float32) comes on top.

This is the analysis the issue sketches (``2 eps / (1 - eps)`` per tuple, compounding over the ``M``
monomials as ``(1 + eps)^M - 1``), made exact by the monotonicity of ``f_p``: ``U - 1`` and
``1 - L`` are the compounded upper and lower relative errors.

Degree selection: the smallest even ``p`` with ``E(p) <= tolerance``; if that needs a degree above
:data:`MAX_DEGREE` or a feature rank above ``max_rank`` (default :data:`MAX_RANK`) the planner raises
:class:`ApproximationRangeError` suggesting an exact method. This is the theory's regime
``B = o((log n)^{1/k})`` made concrete: ``X ~ s d B^k`` must stay O(1) for a small degree.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import MethodError, PolyAttentionError
from .approx_bound import (  # noqa: F401 - re-exported
    BASES,
    DEFAULT_BASIS,
    DEFAULT_TOLERANCE,
    MAX_DEGREE,
    MAX_RANK,
    ApproximationRangeError,
    _check_degree,
    _degrees,
    _horner,
    _ratio_interval,
    error_bound,
    exp_coefficients,
    feature_rank,
    feature_table,
    relative_error_interval,
    taylor_ratio,
)
from .plan import Plan, Step, _fmt_bytes, _fmt_flops
from .spec import ProblemSpec
from .strategy import DEFAULT_MEMORY_BUDGET, register_planner
from .structure_ext import rooted_forest

__all__ = [
    "ApproxPlan",
    "ApproxStats",
    "ApproximationRangeError",
    "DEFAULT_TOLERANCE",
    "MAX_DEGREE",
    "MAX_RANK",
    "taylor_ratio",
    "exp_coefficients",
    "relative_error_interval",
    "BASES",
    "DEFAULT_BASIS",
    "feature_rank",
    "feature_table",
    "logit_bounds",
    "value_radius",
    "error_bound",
    "choose_degree",
    "plan_approx",
    "degree_needed",
]

# ------------------------------------------------------------------------------- statistics
@dataclass(frozen=True)
class ApproxStats:
    """Measured magnitudes of the actual tensors (computed by the kernel; pure data here).

    ``entry_max[v-1]`` = max |Q_v| (the entry bound of x_v), ``row_norm_max[v-1]`` = max row l2 norm,
    ``coord_max[v-1][c]`` = max_l |Q_v[l, c]``; ``value_lo/value_hi[v-1]`` = per-column min/max of
    V_v (``None`` for x1 and value-less variables).
    """

    entry_max: tuple[float, ...]
    row_norm_max: tuple[float, ...]
    coord_max: tuple[tuple[float, ...], ...]
    value_lo: tuple[tuple[float, ...] | None, ...]
    value_hi: tuple[tuple[float, ...] | None, ...]

    @property
    def entry_bound(self) -> float:
        """``B``: max |entry| over all query projections."""
        return max(self.entry_max)


def logit_bounds(spec: ProblemSpec, stats: ApproxStats, scale: float) -> tuple[float, ...]:
    """``X_m >= |s * sum_c prod_{v in m} Q_v[l_v, c]|`` for every monomial, over all tuples.

    The minimum of three rigorous bounds: ``|s| d prod B_v`` (the issue's ``s d B^k``),
    ``|s| sum_c prod_v max_l |Q_v[l, c]|``, and Cauchy-Schwarz on a pair ``(a, b)`` of the
    monomial times the entry bounds of the others, ``|s| |Q_a|_2 |Q_b|_2 prod_{v != a, b} B_v``.
    """
    out = []
    d = spec.head_dim
    for m in spec.polynomial.monomials:
        ent = 1.0
        for v in m:
            ent *= stats.entry_max[v - 1]
        cands = [d * ent]
        coord = 0.0
        for c in range(d):
            prod = 1.0
            for v in m:
                prod *= stats.coord_max[v - 1][c]
            coord += prod
        cands.append(coord)
        for a, b in itertools.combinations(m, 2):
            rest = 1.0
            for v in m:
                if v not in (a, b):
                    rest *= stats.entry_max[v - 1]
            cands.append(stats.row_norm_max[a - 1] * stats.row_norm_max[b - 1] * rest)
        out.append(abs(scale) * min(cands))
    return tuple(out)


def value_radius(spec: ProblemSpec, stats: ApproxStats) -> float:
    """Max over value columns of the half-width of an interval enclosing every ``V_T`` entry."""
    cols = None
    for v in range(2, spec.num_variables + 1):
        lo, hi = stats.value_lo[v - 1], stats.value_hi[v - 1]
        if lo is None or hi is None:
            continue
        if cols is None:
            cols = [(a, b) for a, b in zip(lo, hi)]
            continue
        nxt = []
        for (a, b), (c, e) in zip(cols, zip(lo, hi)):
            ps = (a * c, a * e, b * c, b * e)
            nxt.append((min(ps), max(ps)))
        cols = nxt
    if cols is None:  # no values: the output is exactly 1
        return 0.0
    return max((b - a) / 2.0 for a, b in cols)


def choose_degree(
    logit_bound: Sequence[float],
    radius: float,
    tolerance: float,
    d: int,
    *,
    max_degree: int = MAX_DEGREE,
    max_rank: int = MAX_RANK,
    basis: str = DEFAULT_BASIS,
) -> tuple[int, float]:
    """Smallest degree (even for Taylor) with ``error_bound <= tolerance``; raises beyond the limits."""
    if not (isinstance(tolerance, (int, float)) and math.isfinite(tolerance) and tolerance > 0):
        raise PolyAttentionError(f"tolerance must be a positive finite float, got {tolerance!r}")
    best = None
    for p in _degrees(basis, max_degree):
        r = feature_rank(d, p)
        if r > max_rank:
            if best is None:
                best = (p, math.inf, r)
            break
        e = error_bound(logit_bound, p, radius, basis)
        best = (p, e, r)
        if e <= tolerance:
            return p, e
    p, e, r = best  # type: ignore[misc]
    xmax = max(logit_bound, default=0.0)
    raise ApproximationRangeError(
        f"method='approx' cannot reach tolerance={tolerance:g} affordably: the logits reach |x| <= "
        f"{xmax:.3g} and degree {p} ({basis}, feature rank C({d}+{p},{p}) = {r:,}) only guarantees "
        f"{e:.3g}; the limits are degree <= {max_degree} and rank <= {max_rank:,}. The entries are "
        "outside the regime where the polynomial method is cheap (B = o((log n)^(1/k))). Use an exact "
        "method (method='auto'), a looser tolerance, a smaller scale or head dim, or raise max_rank="
    )


def degree_needed(
    entry_bound: float, *, head_dim: int, degree_k: int = 2, num_monomials: int = 1,
    scale: float | None = None, value_radius_: float = 1.0, tolerance: float = DEFAULT_TOLERANCE,
    max_degree: int = 64, basis: str = DEFAULT_BASIS,
) -> int | None:
    """Smallest degree whose bound meets ``tolerance`` when only ``B`` is known (``X = s d B^k``).

    ``None`` when no degree up to ``max_degree`` suffices. Pure arithmetic: used by the benchmark
    that shows the degree growing with ``B``.
    """
    s = 1.0 / math.sqrt(head_dim) if scale is None else scale
    xs = [abs(s) * head_dim * entry_bound**degree_k] * num_monomials
    for p in _degrees(basis, max_degree):
        if error_bound(xs, p, value_radius_, basis) <= tolerance:
            return p
    return None


# ------------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class ApproxPlan(Plan):
    """A :class:`Plan` for ``method="approx"`` with the approximation's parameters.

    ``degree`` is ``None`` in a structure-only plan (``polyattn.plan(..., method="approx")``): the
    degree depends on the measured entry bound and is chosen at call time.
    """

    strategy: str = "tree"  # "tree" (feature message passing) or "contract" (opt_einsum path)
    degree: int | None = None
    basis: str = DEFAULT_BASIS
    exp_coeffs: tuple[tuple[float, ...], ...] = ()  # per monomial: a_0..a_p of the polynomial replacing exp
    rank: int = 0
    tolerance: float | None = None
    entry_bound: float | None = None
    scale: float | None = None
    logit_bound: tuple[float, ...] = ()
    value_radius: float | None = None
    error_bound: float | None = None
    degree_forced: bool = False
    memory_budget: int = DEFAULT_MEMORY_BUDGET
    chunk_rows: int = 0
    einsum: str = ""  # contract strategy: the final expression (x1 rows chunked)
    operands: tuple[tuple, ...] = ()
    summaries: tuple[tuple[int, str], ...] = ()  # contract strategy: (variable, summary expression)
    path: tuple[tuple[int, ...], ...] = ()
    largest_intermediate: float = 0.0

    def to_dict(self) -> dict:
        out = super().to_dict()
        out.update(
            strategy=self.strategy, degree=self.degree, basis=self.basis,
            exp_coeffs=[list(c) for c in self.exp_coeffs], rank=self.rank, tolerance=self.tolerance,
            entry_bound=self.entry_bound, scale=self.scale, logit_bound=list(self.logit_bound),
            value_radius=self.value_radius, error_bound=self.error_bound,
            degree_forced=self.degree_forced, chunk_rows=self.chunk_rows, einsum=self.einsum,
            path=[list(p) for p in self.path], largest_intermediate=self.largest_intermediate,
        )
        return out

    def __str__(self) -> str:
        s = self.spec
        lens = f"n={s.seq_lens[0]}" if len(set(s.seq_lens)) == 1 else "n=" + "/".join(map(str, s.seq_lens))
        lines = [
            f"Plan for {s.polynomial}",
            f"  sizes      : t={s.num_variables}, {lens}, d={s.head_dim}, dv={s.value_dim}, "
            f"batch={s.batch}, causal={s.causal}, masks=none",
            "  method     : approx" + ("" if self.requested == "auto" else " (requested)"),
            f"  why        : {self.reason}",
        ]
        if self.degree is None:
            lines.append("  degree     : chosen at call time from the measured entry bound B and tolerance=")
        else:
            how = "forced by degree=" if self.degree_forced else f"smallest degree meeting tolerance={self.tolerance:g}"
            kind = (
                "Taylor polynomial of exp" if self.basis == "taylor"
                else "Chebyshev interpolant of exp on [-X, X] per monomial"
            )
            lines += [
                f"  degree     : p = {self.degree} ({kind}; {how})",
                f"  rank       : r = C(d+p, p) = {self.rank:,} features per variable (symmetric tensor powers)",
                f"  entry bound: B = max|Q_j| = {self.entry_bound:.4g}; logit bound per monomial |x| <= "
                + ", ".join(f"{x:.4g}" for x in self.logit_bound)
                + f" (<= s*d*B^k); value radius R = {self.value_radius:.4g}",
                f"  error bound: max |approx - exact| <= {self.error_bound:.3g} (a priori, exact arithmetic; "
                "plus rounding of the compute dtype)",
            ]
        lines.append(f"  complexity : O({self.complexity}) time" + (" (n * r * (dv+1) per edge)" if self.strategy == "tree" else ""))
        if self.degree is not None:
            lines.append(f"  estimate   : {_fmt_flops(self.flops)}, peak working memory {_fmt_bytes(self.peak_bytes)}")
        lines.append("  steps      :")
        for i, st in enumerate(self.steps, 1):
            lines.append(f"    {i}. {_describe(st)}" + (f"  [{_fmt_flops(st.flops)}]" if self.degree is not None else ""))
        for note in self.notes:
            lines.append(f"  note       : {note}")
        return "\n".join(lines)


def _describe(st: Step) -> str:
    if st.kind == "approx_edge":
        how = "prefix sums" if st.scope and st.scope[-1] == -1 else "one feature-space product"
        if not st.logits:
            return f"edge x{st.parent} <- x{st.var}: mean message (no monomial), {how}"
        return f"edge x{st.parent} <- x{st.var}: features F_x{st.var}^T M -> F_x{st.parent} @ (.), {how}"
    if st.kind == "approx_summary":
        return f"summary of x{st.var}: sum over its rows of its features (x) values, in row chunks"
    if st.kind == "approx_direct":
        return "one contraction of all features, values and coefficients along the opt_einsum path"
    if st.kind == "approx_contract":
        return "x1 row chunks: contract x1's features with the summaries along the opt_einsum path"
    return st.kind


def _structure(spec: ProblemSpec) -> tuple[str, dict[int, int] | None, tuple[int, ...]]:
    """``("tree", parent, post-order)`` or ``("contract", None, ())``; raises for masks and cycles."""
    p = spec.polynomial
    if spec.mask_pairs:
        raise MethodError(
            "method='approx' does not support pair masks: a boolean mask on a pair does not factor "
            "through the polynomial features. Use an exact method (method='auto') for masked inputs"
        )
    if spec.causal:
        rooted = rooted_forest(spec.factor_edges(), spec.num_variables)
        if rooted is None:
            raise MethodError(
                f"method='approx' supports causal masks only when monomials plus causal pairs form a "
                f"forest (prefix sums along tree edges); {p} with causal={spec.causal!r} does not"
                + (" (causal='tree' would)" if p.is_tree else "")
                + ". Use an exact method (method='auto') or causal=False"
            )
        return "tree", rooted[0], rooted[1]
    rooted = rooted_forest(spec.factor_edges(), spec.num_variables)
    if rooted is not None:
        return "tree", rooted[0], rooted[1]
    return "contract", None, ()


#: Row chunks aim at about this many feature entries, so a chunk's features stay in cache while
#: both BLAS products read them (measured: 1024 rows x rank 969 is ~3x faster than 16384 rows).
CHUNK_FEATURE_ELEMS = 2**20


def _chunk_rows(spec: ProblemSpec, rank: int, budget: int) -> int:
    elems = max(1, budget // max(1, spec.itemsize))
    per_row = spec.batch * (rank * 3 + 2 * (spec.value_dim + 1))
    cache_rows = max(64, CHUNK_FEATURE_ELEMS // max(1, spec.batch * rank))
    return int(max(1, min(max(spec.seq_lens), elems // max(1, per_row), cache_rows)))


#: Block length of the chunked prefix sums (causal edges): the dense in-block part costs
#: ``block * (d + dv)`` per row (polynomial of the logits) against ``2 r (dv+1)`` for the state.
CAUSAL_BLOCK = 64


def causal_block(spec: ProblemSpec, rank: int, budget: int) -> int:
    elems = max(1, budget // max(1, spec.itemsize))
    per_row = spec.batch * (rank * 3 + 2 * CAUSAL_BLOCK)
    return int(max(1, min(CAUSAL_BLOCK, elems // max(1, per_row))))


def _contract_setup(spec: ProblemSpec) -> tuple[tuple[tuple[int, str], ...], str, tuple[tuple, ...]]:
    """Einsum expressions of the contraction strategy (opt_einsum symbols; ``B`` batch, ``z`` value channel).

    Each ``l_v`` (v >= 2) appears only in variable v's own factors, so its sum is pushed inside:
    the *summary* ``T_v[alpha_m for m containing v, z] = sum_l prod_m F_v[l, alpha_m] V_v[l, z]``
    (one expression per variable, accumulated over row chunks). The final expression contracts
    x1's features (a chunk of rows), the coefficient vectors and the summaries over all alphas.
    Returns ``(((v, summary_expr), ...), final_expr, final_operands)``.
    """
    import opt_einsum

    sym = opt_einsum.get_symbol
    t = spec.num_variables
    b, z, row = sym(0), sym(1), sym(2)
    monos = spec.polynomial.monomials
    alpha = {m: sym(3 + i) for i, m in enumerate(monos)}
    summaries = []
    final_terms: list[str] = []
    final_ops: list[tuple] = []
    for v in range(2, t + 1):
        mine = [m for m in monos if v in m]
        ins = [b + row + alpha[m] for m in mine] + [b + row + z]
        summaries.append((v, ",".join(ins) + "->" + b + "".join(alpha[m] for m in mine) + z))
    for m in monos:
        if 1 in m:
            final_terms.append(b + row + alpha[m])
            final_ops.append(("F1", m))
    for m in monos:
        final_terms.append(alpha[m])
        final_ops.append(("coef", m))
    for v in range(2, t + 1):
        mine = [m for m in monos if v in m]
        final_terms.append(b + "".join(alpha[m] for m in mine) + z)
        final_ops.append(("T", v))
    if 1 not in spec.polynomial.used_variables:
        final_terms.append(b + row)
        final_ops.append(("ones", 1))
    return tuple(summaries), ",".join(final_terms) + "->" + b + row + z, tuple(final_ops)


def _final_shapes(spec: ProblemSpec, operands: tuple[tuple, ...], rank: int, rows: int) -> list[tuple[int, ...]]:
    monos = spec.polynomial.monomials
    shapes = []
    for kind, x in operands:
        if kind == "F1":
            shapes.append((spec.batch, rows, rank))
        elif kind == "coef":
            shapes.append((rank,))
        elif kind == "T":
            deg = sum(1 for m in monos if x in m)
            shapes.append((spec.batch, *([rank] * deg), spec.value_dim + 1))
        else:
            shapes.append((spec.batch, rows))
    return shapes


def _plan_direct(spec: ProblemSpec, r: int) -> dict:
    """One einsum over every variable's full features, values and coefficients (no summaries).

    Cheaper than the summaries for short sequences of cyclic polynomials (the row indices are
    contracted first), but it holds every feature matrix ``n_v x r`` at once.
    """
    import opt_einsum

    sym = opt_einsum.get_symbol
    t = spec.num_variables
    b, z = sym(0), sym(1)
    lvar = {v: sym(1 + v) for v in range(1, t + 1)}
    alpha = {m: sym(2 + t + i) for i, m in enumerate(spec.polynomial.monomials)}
    terms, ops, shapes = [], [], []
    for m in spec.polynomial.monomials:
        for v in m:
            terms.append(b + lvar[v] + alpha[m])
            ops.append(("F", v))
            shapes.append((spec.batch, spec.seq_lens[v - 1], r))
        terms.append(alpha[m])
        ops.append(("coef", m))
        shapes.append((r,))
    for v in range(2, t + 1):
        terms.append(b + lvar[v] + z)
        ops.append(("V", v))
        shapes.append((spec.batch, spec.seq_lens[v - 1], spec.value_dim + 1))
    if 1 not in spec.polynomial.used_variables:
        terms.append(b + lvar[1])
        ops.append(("ones", 1))
        shapes.append((spec.batch, spec.seq_lens[0]))
    expr = ",".join(terms) + "->" + b + lvar[1] + z
    path_list, info = opt_einsum.contract_path(expr, *shapes, shapes=True, optimize="auto")
    feat = float(sum(spec.batch * spec.seq_lens[v - 1] * r for v in spec.polynomial.used_variables))
    largest = float(info.largest_intermediate)
    return dict(summaries=(), einsum=expr, operands=tuple(ops), rows=spec.seq_lens[0], largest=largest,
                path=tuple(tuple(int(i) for i in st) for st in path_list), flops=float(info.opt_cost),
                peak=(largest + feat) * spec.itemsize, summary_elems=0.0, feature_elems=feat)


def _plan_contract(spec: ProblemSpec, r: int, p: int, memory_budget: int) -> dict:
    """Summaries, final expression, x1 row chunk and opt_einsum path within the memory budget."""
    import opt_einsum

    summaries, final, ops = _contract_setup(spec)
    monos = spec.polynomial.monomials
    dv1 = spec.value_dim + 1
    sizes = {v: spec.batch * r ** sum(1 for m in monos if v in m) * dv1 for v, _ in summaries}
    t_total = float(sum(sizes.values()))
    # Summary cost: n_v * r^deg(v) * dv1 multiply-adds (plus the features).
    flops = sum(2.0 * spec.seq_lens[v - 1] * sizes[v] for v in sizes)
    elems = memory_budget // max(1, spec.itemsize)
    rows = _chunk_rows(spec, r, memory_budget)
    while True:
        shapes = _final_shapes(spec, ops, r, rows)
        path_list, info = opt_einsum.contract_path(final, *shapes, shapes=True, optimize="auto")
        largest = float(info.largest_intermediate)
        # summaries + the largest summary under construction (its chunk einsum) + x1 chunk features
        build = max((float(sizes[v]) + spec.batch * rows * r for v in sizes), default=0.0)
        peak_elems = t_total + max(build, largest + spec.batch * rows * r * 2)
        if peak_elems <= elems or rows == 1:
            break
        rows = max(1, rows // 2)
    n1 = spec.seq_lens[0]
    flops += float(info.opt_cost) * math.ceil(n1 / rows)
    return dict(summaries=summaries, einsum=final, operands=ops, rows=rows, largest=largest,
                path=tuple(tuple(int(i) for i in st) for st in path_list), flops=flops,
                peak=peak_elems * spec.itemsize, summary_elems=t_total)


def _structure_plan(spec: ProblemSpec, budget: int) -> ApproxPlan:
    """The registered planner: structure only (the degree needs the tensors' entry bound)."""
    strategy, parent, post = _structure(spec)
    steps = _steps(spec, strategy, parent, post, rank=0)
    return ApproxPlan(
        spec, "approx", _reason(spec, strategy), steps, 0.0, 0.0, 1, order=post,
        parents=tuple(sorted(parent.items())) if parent else (), strategy=strategy,
        memory_budget=int(budget),
    )


def _reason(spec: ProblemSpec, strategy: str) -> str:
    if strategy == "tree":
        extra = " with prefix sums for the causal edges" if spec.causal else ""
        return (
            "polynomial method: exp of each monomial -> a low-degree polynomial, factorised through "
            f"per-variable symmetric-power features; the factor graph is a forest, so message passing in feature space{extra}"
        )
    return (
        "polynomial method: exp of each monomial -> a low-degree polynomial, factorised through "
        "per-variable symmetric-power features, contracted along an opt_einsum path"
    )


def _steps(spec: ProblemSpec, strategy: str, parent: dict[int, int] | None, post: tuple[int, ...], rank: int) -> tuple[Step, ...]:
    dv1 = spec.value_dim + 1
    if strategy == "tree":
        assert parent is not None
        monos = set(spec.polynomial.monomials)
        causal = spec.causal_pairs()
        steps = []
        for c in post:
            u = parent[c]
            logits = (min(u, c), max(u, c)) in monos
            r = rank if logits else 1
            is_causal = (u, c) in causal or (c, u) in causal
            nu, nc = spec.seq_lens[u - 1], spec.seq_lens[c - 1]
            fl = spec.batch * (nu + nc) * r * (2.0 * dv1 + 1)
            if is_causal:
                fl += spec.batch * nu * 2.0 * (r * dv1 + CAUSAL_BLOCK * (spec.head_dim + dv1))
            scope = (u, c, -1) if is_causal else (u, c)
            steps.append(Step("approx_edge", c, scope, fl, 0.0, parent=u, logits=logits))
        return tuple(steps)
    return (Step("approx_contract", 1, tuple(range(1, spec.num_variables + 1)), 0.0, 0.0),)


def plan_approx(
    spec: ProblemSpec,
    *,
    stats: ApproxStats | None = None,
    entry_bound: float | None = None,
    value_bound: float = 1.0,
    scale: float | None = None,
    tolerance: float | None = None,
    degree: int | None = None,
    basis: str = DEFAULT_BASIS,
    max_rank: int = MAX_RANK,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    requested: str = "approx",
) -> ApproxPlan:
    """The full approx plan: degree, rank, bound, chunking / contraction path.

    Give either measured ``stats`` (what ``poly_attention`` does) or just ``entry_bound`` (``B``) and
    ``value_bound`` (``|V| <= value_bound``), in which case ``X_m = |s| d B^k``.
    ``degree=`` forces the degree (the bound is still reported; with ``tolerance=`` too it must meet it).
    """
    strategy, parent, post = _structure(spec)
    d = spec.head_dim
    s = 1.0 / math.sqrt(d) if scale is None else float(scale)
    if stats is not None:
        xs = logit_bounds(spec, stats, s)
        radius = value_radius(spec, stats)
        b_val = stats.entry_bound
    else:
        if entry_bound is None:
            raise PolyAttentionError("plan_approx needs stats= (measured) or entry_bound=")
        b_val = float(entry_bound)
        xs = tuple(abs(s) * d * b_val ** len(m) for m in spec.polynomial.monomials)
        nvals = sum(1 for hv in spec.has_values if hv)
        radius = float(value_bound) ** nvals if nvals else 0.0
    if degree is not None:
        _check_degree(degree, basis)
        p = degree
        bound = error_bound(xs, p, radius, basis)
        if not math.isfinite(bound):
            raise ApproximationRangeError(
                f"degree={p} ({basis}) is not positive on the logit range |x| <= {max(xs):.3g}, so it has no "
                "error bound; use a higher degree, drop degree=, or use an exact method (method='auto')"
            )
        if tolerance is not None and bound > tolerance:
            raise ApproximationRangeError(
                f"degree={p} guarantees only {bound:.3g} > tolerance={tolerance:g}; drop degree= to let "
                "the planner choose, or use an exact method"
            )
        if feature_rank(d, p) > max_rank:
            raise ApproximationRangeError(
                f"degree={p} with head dim {d} needs feature rank {feature_rank(d, p):,} > max_rank="
                f"{max_rank:,}; use a smaller degree, raise max_rank=, or use an exact method (method='auto')"
            )
    else:
        tol = DEFAULT_TOLERANCE if tolerance is None else tolerance
        _check_degree(0, basis)
        p, bound = choose_degree(xs, radius, tol, d, max_rank=max_rank, basis=basis)
    r = feature_rank(d, p)
    steps = _steps(spec, strategy, parent, post, rank=r)
    itemsize = spec.itemsize
    einsum, operands, path, largest = "", (), (), 0.0
    summaries: tuple = ()
    chunk = 0
    if strategy == "tree":
        chunk = _chunk_rows(spec, r, memory_budget)
        flops = sum(st.flops for st in steps)
        peak = spec.batch * (chunk * r * 3 + max(spec.seq_lens) * (spec.value_dim + 1) * 2) * itemsize
        if spec.causal:
            blk = _causal_block(spec, r, memory_budget)
            peak = max(peak, spec.batch * blk * (r * 3 + 2 * blk) * itemsize)
    else:
        cp = _plan_contract(spec, r, p, memory_budget)
        direct = _plan_direct(spec, r)
        if direct["peak"] <= memory_budget and (cp["peak"] > memory_budget or direct["flops"] < cp["flops"]):
            cp = direct
        einsum, operands, path, largest = cp["einsum"], cp["operands"], cp["path"], cp["largest"]
        summaries, chunk, flops, peak = cp["summaries"], cp["rows"], cp["flops"], cp["peak"]
        steps = tuple(
            Step("approx_summary", v, (v,), 2.0 * spec.seq_lens[v - 1] * spec.batch
                 * r ** sum(1 for m in spec.polynomial.monomials if v in m) * (spec.value_dim + 1), 0.0)
            for v, _ in summaries
        ) + (Step("approx_contract" if summaries else "approx_direct", 1, tuple(range(1, spec.num_variables + 1)),
                  flops, peak),)
        if peak > memory_budget:
            raise ApproximationRangeError(
                f"method='approx' with degree {p} (rank {r:,}) needs {_fmt_bytes(peak)} of working memory "
                f"for {spec.polynomial} (per-variable summaries {cp['summary_elems']:,.0f} elements, r^(number of "
                f"monomials containing the variable) each; largest intermediate {largest:,.0f}; contracting all "
                f"rows at once instead would need {_fmt_bytes(direct['peak'])}), above "
                f"memory_budget={_fmt_bytes(memory_budget)}: the feature indices of a cyclic polynomial multiply. "
                "Use a looser tolerance, a larger memory_budget=, or an exact method (method='auto')"
            )
    notes = []
    if strategy == "contract":
        if summaries:
            notes.append(f"final einsum {einsum} over x1 chunks of {chunk} rows (opt_einsum path {list(path)})")
        else:
            notes.append(f"one einsum {einsum} over all rows (short sequences; opt_einsum path {list(path)})")
    return ApproxPlan(
        spec, "approx", _reason(spec, strategy), steps, flops, float(peak), 1, order=post,
        parents=tuple(sorted(parent.items())) if parent else (), requested=requested,
        notes=tuple(notes), strategy=strategy, degree=p, rank=r,
        tolerance=None if tolerance is None and degree is not None else (DEFAULT_TOLERANCE if tolerance is None else float(tolerance)),
        entry_bound=b_val, scale=s, logit_bound=tuple(xs), value_radius=radius, error_bound=bound,
        degree_forced=degree is not None, basis=basis,
        exp_coeffs=tuple(exp_coefficients(basis, p, float(x)) for x in xs), memory_budget=int(memory_budget), chunk_rows=chunk,
        einsum=einsum, operands=operands, path=path, largest_intermediate=largest, summaries=summaries,
    )


register_planner("approx", _structure_plan, auto=False)

_causal_block = causal_block
