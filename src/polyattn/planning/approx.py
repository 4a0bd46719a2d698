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

**Accuracy target.** ``tolerance=`` bounds the absolute error, ``rtol=`` the error relative to the
value radius ``R`` (``E <= rtol * R``, i.e. ``(U - L) / (2 L) <= rtol``: independent of the values'
scale); with both, both must hold. Degree selection: the smallest degree (even for Taylor) with
``E(p) <=`` the target; if that needs a degree above :data:`MAX_DEGREE` or a feature rank above
``max_rank`` (default :data:`MAX_RANK`) the planner raises :class:`ApproximationRangeError`
suggesting an exact method. This is the theory's regime ``B = o((log n)^{1/k})`` made concrete:
``X ~ s d B^k`` must stay O(1) for a small degree.

**Speed.** The plan estimates its own time and the exact plan's (:mod:`polyattn.planning.approx_cost`)
and raises :class:`ApproximationRangeError` when the approximation would be slower, unless
``allow_slower=True``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import PolyAttentionError
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
from .approx_cost import (
    DEFAULT_COST_MODEL,
    CostModel,
    approx_seconds,
    approx_work,
    exact_seconds,
    fmt_seconds,
)
from .approx_layout import (  # noqa: F401 - re-exported
    CAUSAL_BLOCK,
    CHUNK_FEATURE_BYTES,
    Layout,
    causal_block,
    chunk_rows,
    describe_step,
    layout,
    reason,
    structure,
    structure_steps,
)
from .approx_split import SplitTop
from .methods import Method
from .plan import DEFAULT_MEMORY_BUDGET, Plan, _fmt_bytes, _fmt_flops
from .spec import ProblemSpec

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
    "Accuracy",
    "accuracy_target",
    "CostModel",
    "DEFAULT_COST_MODEL",
    "causal_block",
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
    target_text: str | None = None,
) -> tuple[int, float]:
    """Smallest degree (even for Taylor) with ``error_bound <= tolerance``; raises beyond the limits.

    ``tolerance`` is the absolute target (0 is allowed: it is met exactly when ``radius == 0``);
    ``target_text`` names it in the error (default ``tolerance=...``).
    """
    if isinstance(tolerance, bool) or not (isinstance(tolerance, (int, float)) and math.isfinite(tolerance) and tolerance >= 0):
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
    what = target_text or f"tolerance={tolerance:g}"
    raise ApproximationRangeError(
        f"method='approx' cannot reach {what} affordably: the logits reach |x| <= "
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


# ------------------------------------------------------------------------------- accuracy target
@dataclass(frozen=True)
class Accuracy:
    """What the degree must guarantee: ``E <= target`` (absolute), described as the user asked."""

    tolerance: float | None  # absolute, as requested (None: not given)
    rtol: float | None  # relative to the value radius, as requested (None: not given)
    target: float | None  # the absolute bound the degree must meet (None: degree forced, no target)
    text: str  # e.g. "tolerance=0.001" or "rtol=0.001 (= 0.0202 absolute; value radius R = 20.2)"


def _check_positive(name: str, x: object, meaning: str) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not (math.isfinite(x) and x > 0):
        raise PolyAttentionError(f"{name} must be a positive finite float ({meaning}), got {x!r}")
    return float(x)


def accuracy_target(tolerance: float | None, rtol: float | None, radius: float, *, degree_forced: bool = False) -> Accuracy:
    """Combine ``tolerance=`` (absolute) and ``rtol=`` (times the value radius ``R``): both must hold.

    Neither given: ``tolerance = DEFAULT_TOLERANCE``, unless the degree is forced (then no target).
    """
    tol = None if tolerance is None else _check_positive(
        "tolerance", tolerance, "an absolute bound on max |approx - exact|; for a bound relative to the "
        "values' scale use rtol=")
    rel = None if rtol is None else _check_positive(
        "rtol", rtol, "a bound on max |approx - exact| relative to the value radius R")
    if tol is None and rel is None:
        if degree_forced:
            return Accuracy(None, None, None, "the forced degree")
        tol = DEFAULT_TOLERANCE
    parts, targets = [], []
    if tol is not None:
        parts.append(f"tolerance={tol:g}")
        targets.append(tol)
    if rel is not None:
        parts.append(f"rtol={rel:g} (= {rel * radius:.3g} absolute; value radius R = {radius:.3g})")
        targets.append(rel * radius)
    return Accuracy(tol, rel, min(targets), " and ".join(parts))


# ------------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class ApproxPlan(Plan):
    """A :class:`Plan` for ``method="approx"`` with the approximation's parameters.

    ``degree`` is ``None`` in a structure-only plan (``polyattn.plan(..., method="approx")``): the
    degree depends on the measured entry bound and is chosen at call time. ``seconds`` and
    ``exact_seconds`` are the estimated times of this plan and of the exact plan
    (``make_plan(spec, "auto")``, method ``exact_method``) under the cost model ``cost_source``.
    """

    order: tuple[int, ...] = ()  # tree strategy: post-order of the non-root variables
    parents: tuple[tuple[int, int], ...] = ()  # tree strategy: (child, parent)
    strategy: str = "tree"  # "tree" (feature message passing) or "contract" (opt_einsum path)
    degree: int | None = None
    basis: str = DEFAULT_BASIS
    exp_coeffs: tuple[tuple[float, ...], ...] = ()  # per monomial: a_0..a_p of the polynomial replacing exp
    rank: int = 0
    tolerance: float | None = None
    rtol: float | None = None
    target: float | None = None  # the absolute bound the degree was chosen to meet
    target_text: str = ""
    entry_bound: float | None = None
    scale: float | None = None
    logit_bound: tuple[float, ...] = ()
    value_radius: float | None = None
    error_bound: float | None = None
    degree_forced: bool = False
    memory_budget: int = DEFAULT_MEMORY_BUDGET
    chunk_rows: int = 0
    causal_block: int = 0  # tree strategy, causal edges: block length of the chunked prefix sums
    split: SplitTop | None = None  # tree strategy, plain edges: top-degree split products (approx_split)
    einsum: str = ""  # contract strategy: the final expression (x1 rows chunked)
    operands: tuple[tuple[Any, ...], ...] = ()
    summaries: tuple[tuple[int, str], ...] = ()  # contract strategy: (variable, summary expression)
    path: tuple[tuple[int, ...], ...] = ()
    largest_intermediate: float = 0.0
    seconds: float | None = None  # estimated time of this plan
    exact_seconds: float | None = None  # estimated time of the exact plan
    exact_method: str = ""
    cost_source: str = ""
    allow_slower: bool = False

    @property
    def faster_than_exact(self) -> bool | None:
        if self.seconds is None or self.exact_seconds is None:
            return None
        return self.seconds < self.exact_seconds

    def refine_options(self) -> dict[str, object]:
        """The options that chose this plan's degree, to re-refine it on new tensors."""
        if self.degree_forced:
            return {"degree": self.degree, "basis": self.basis}
        return {"tolerance": self.tolerance, "basis": self.basis}

    def to_dict(self) -> dict[str, object]:
        out = super().to_dict()
        out.update(
            strategy=self.strategy, degree=self.degree, basis=self.basis,
            exp_coeffs=[list(c) for c in self.exp_coeffs], rank=self.rank, tolerance=self.tolerance,
            rtol=self.rtol, target=self.target,
            entry_bound=self.entry_bound, scale=self.scale, logit_bound=list(self.logit_bound),
            value_radius=self.value_radius, error_bound=self.error_bound,
            degree_forced=self.degree_forced, chunk_rows=self.chunk_rows, einsum=self.einsum,
            path=[list(p) for p in self.path], largest_intermediate=self.largest_intermediate,
            seconds=self.seconds, exact_seconds=self.exact_seconds, exact_method=self.exact_method,
            cost_source=self.cost_source, allow_slower=self.allow_slower,
            split=self.split.to_dict() if self.split is not None else None,
        )
        return out

    def speed_line(self) -> str:
        """``approx ~ 0.6 s vs exact (tree) ~ 12 s: approx is faster (20x)``."""
        a, e = self.seconds, self.exact_seconds
        if a is None or e is None:
            return ""
        head = f"approx ~ {fmt_seconds(a)} vs exact ({self.exact_method}) ~ {fmt_seconds(e)}: "
        if a < e:
            return head + f"approx is faster ({e / a:.3g}x)"
        tail = "; running approx because allow_slower=True" if self.allow_slower else ""
        return head + f"exact is faster ({a / max(e, 1e-300):.3g}x){tail}"

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
            lines.append("  degree     : chosen at call time from the measured entry bound B and tolerance= / rtol=")
        else:
            lines += self._degree_lines()
        lines.append(f"  complexity : O({self.complexity}) time" + (" (n * r * (dv+1) per edge)" if self.strategy == "tree" else ""))
        if self.degree is not None:
            lines.append(f"  estimate   : {_fmt_flops(self.flops)}, peak working memory {_fmt_bytes(self.peak_bytes)}"
                         + self._chunk_text())
        if self.speed_line():
            lines.append(f"  speed      : {self.speed_line()}")
            lines.append(f"               ({self.cost_source})")
        lines.append("  steps      :")
        for i, st in enumerate(self.steps, 1):
            lines.append(f"    {i}. {describe_step(st)}" + (f"  [{_fmt_flops(st.flops)}]" if self.degree is not None else ""))
        for note in self.notes:
            lines.append(f"  note       : {note}")
        return "\n".join(lines)

    def _chunk_text(self) -> str:
        if self.split is not None:
            causal = f" ({self.chunk_rows} on causal edges)" if self.spec.causal else ""
            return f", row chunks of {self.split.rows}{causal}"
        return f", row chunks of {self.chunk_rows}" if self.chunk_rows else ""

    def _degree_lines(self) -> list[str]:
        how = ("forced by degree=" + (f", meets {self.target_text}" if self.target is not None else "")
               if self.degree_forced else f"smallest degree meeting {self.target_text}")
        kind = (
            "Taylor polynomial of exp" if self.basis == "taylor"
            else "Chebyshev interpolant of exp on [-X, X] per monomial"
        )
        return [
            f"  degree     : p = {self.degree} ({kind}; {how})",
            f"  rank       : r = C(d+p, p) = {self.rank:,} features per variable (symmetric tensor powers)",
            f"  entry bound: B = max|Q_j| = {self.entry_bound:.4g}; logit bound per monomial |x| <= "
            + ", ".join(f"{x:.4g}" for x in self.logit_bound)
            + f" (<= s*d*B^k); value radius R = {self.value_radius:.4g}",
            f"  error bound: max |approx - exact| <= {self.error_bound:.3g} (a priori, exact arithmetic; "
            "plus rounding of the compute dtype)",
        ]


# ------------------------------------------------------------------------------- planning
def plan_structure(spec: ProblemSpec, budget: int) -> ApproxPlan:
    """The planner-table entry: structure only (the degree needs the tensors' entry bound)."""
    strategy, parent, post = structure(spec)
    steps = structure_steps(spec, strategy, parent, post)
    return ApproxPlan(
        spec, Method.APPROX, reason(spec, strategy), steps, 0.0, 0.0, 1, order=post,
        parents=tuple(sorted(parent.items())) if parent else (), strategy=strategy,
        memory_budget=int(budget),
    )


def _magnitudes(spec: ProblemSpec, stats: ApproxStats | None, entry_bound: float | None, value_bound: float,
                s: float) -> tuple[tuple[float, ...], float, float]:
    """``(logit bound per monomial, value radius R, entry bound B)`` from measured stats or from ``B``."""
    if stats is not None:
        return logit_bounds(spec, stats, s), value_radius(spec, stats), stats.entry_bound
    if entry_bound is None:
        raise PolyAttentionError("plan_approx needs stats= (measured) or entry_bound=")
    b_val = float(entry_bound)
    xs = tuple(abs(s) * spec.head_dim * b_val ** len(m) for m in spec.polynomial.monomials)
    nvals = sum(1 for hv in spec.has_values if hv)
    radius = float(value_bound) ** nvals if nvals else 0.0
    return xs, radius, b_val


def _forced_degree(degree: int, xs: tuple[float, ...], radius: float, acc: Accuracy, d: int, basis: str,
                   max_rank: int) -> float:
    """The bound of a forced degree; raises when it has none, misses the target or is too large."""
    _check_degree(degree, basis)
    bound = error_bound(xs, degree, radius, basis)
    if not math.isfinite(bound):
        raise ApproximationRangeError(
            f"degree={degree} ({basis}) is not positive on the logit range |x| <= {max(xs):.3g}, so it has no "
            "error bound; use a higher degree, drop degree=, or use an exact method (method='auto')"
        )
    if acc.target is not None and bound > acc.target:
        raise ApproximationRangeError(
            f"degree={degree} guarantees only {bound:.3g} > {acc.text}; drop degree= to let "
            "the planner choose, or use an exact method"
        )
    if feature_rank(d, degree) > max_rank:
        raise ApproximationRangeError(
            f"degree={degree} with head dim {d} needs feature rank {feature_rank(d, degree):,} > max_rank="
            f"{max_rank:,}; use a smaller degree, raise max_rank=, or use an exact method (method='auto')"
        )
    return bound


def _speed(spec: ProblemSpec, strategy: str, parent: dict[int, int] | None, rank: int, degree: int,
           lay: Layout, budget: int, model: CostModel) -> tuple[float, str, float]:
    """``(approx seconds, exact method, exact seconds)`` under ``model``; the exact plan is ``make_plan(spec, "auto")``."""
    work = approx_work(spec, strategy, parent, rank, degree, lay.chunk, lay.flops, lay.split)
    from .strategy import make_plan  # the planner table imports this module

    exact = make_plan(spec, "auto", budget)
    return approx_seconds(work, model), exact.method, exact_seconds(exact, model)


def _slower_error(plan: ApproxPlan) -> ApproximationRangeError:
    assert plan.seconds is not None and plan.exact_seconds is not None
    return ApproximationRangeError(
        f"method='approx' would be slower than the exact method for {plan.target_text}: approx ~ "
        f"{fmt_seconds(plan.seconds)} (degree {plan.degree}, feature rank {plan.rank:,}) vs exact "
        f"{plan.exact_method!r} ~ {fmt_seconds(plan.exact_seconds)} ({plan.cost_source}). Use method='auto' "
        "for the exact result, loosen tolerance= / rtol=, or pass allow_slower=True to run the "
        "approximation anyway"
    )


def plan_approx(
    spec: ProblemSpec,
    *,
    stats: ApproxStats | None = None,
    entry_bound: float | None = None,
    value_bound: float = 1.0,
    scale: float | None = None,
    tolerance: float | None = None,
    rtol: float | None = None,
    degree: int | None = None,
    basis: str = DEFAULT_BASIS,
    max_rank: int = MAX_RANK,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    requested: str = "approx",
    cost_model: CostModel | None = None,
    allow_slower: bool = False,
    native: tuple[int, str] = (0, ""),
) -> ApproxPlan:
    """The full approx plan: degree, rank, bound, chunking / contraction path, time vs the exact plan.

    Give either measured ``stats`` (what ``poly_attention`` does) or just ``entry_bound`` (``B``) and
    ``value_bound`` (``|V| <= value_bound``), in which case ``X_m = |s| d B^k``.
    ``tolerance=`` (absolute) and ``rtol=`` (relative to the value radius ``R``) set the accuracy;
    ``degree=`` forces the degree (the bound is still reported; with a target it must meet it).
    ``cost_model`` (default :data:`DEFAULT_COST_MODEL`) turns both plans into seconds; when the
    approximation would be slower than the exact plan it raises :class:`ApproximationRangeError`
    unless ``allow_slower=True``. ``native`` = ``(threads, why not)``: whether the top-degree split's
    no-grad products may run in the native kernel (known only with the inputs: the caller checks
    dtype, device and that the library builds; :mod:`polyattn.ops.approx_native`).
    """
    strategy, parent, post = structure(spec)
    d = spec.head_dim
    s = 1.0 / math.sqrt(d) if scale is None else float(scale)
    if not isinstance(allow_slower, bool):
        raise PolyAttentionError(f"allow_slower must be True or False, got {allow_slower!r}")
    xs, radius, b_val = _magnitudes(spec, stats, entry_bound, value_bound, s)
    acc = accuracy_target(tolerance, rtol, radius, degree_forced=degree is not None)
    if degree is not None:
        p, bound = degree, _forced_degree(degree, xs, radius, acc, d, basis, max_rank)
    else:
        _check_degree(0, basis)
        p, bound = choose_degree(xs, radius, acc.target, d, max_rank=max_rank, basis=basis,  # type: ignore[arg-type]
                                 target_text=acc.text)
    r = feature_rank(d, p)
    lay = layout(spec, strategy, parent, post, r, p, memory_budget, native)
    if lay.overflow:
        raise ApproximationRangeError(
            f"method='approx' with degree {p} (rank {r:,}) needs {_fmt_bytes(lay.peak)} of working memory "
            f"for {spec.polynomial} ({lay.overflow}), above memory_budget={_fmt_bytes(memory_budget)}: the "
            "feature indices of a cyclic polynomial multiply. Use a looser tolerance, a larger "
            "memory_budget=, or an exact method (method='auto')"
        )
    model = DEFAULT_COST_MODEL if cost_model is None else cost_model
    secs, exact_method, exact_secs = _speed(spec, strategy, parent, r, p, lay, memory_budget, model)
    plan = ApproxPlan(
        spec, Method.APPROX, reason(spec, strategy), lay.steps, lay.flops, lay.peak, 1, order=post,
        parents=tuple(sorted(parent.items())) if parent else (), requested=requested,
        notes=lay.notes, strategy=strategy, degree=p, rank=r,
        tolerance=acc.tolerance, rtol=acc.rtol, target=acc.target, target_text=acc.text,
        entry_bound=b_val, scale=s, logit_bound=tuple(xs), value_radius=radius, error_bound=bound,
        degree_forced=degree is not None, basis=basis,
        exp_coeffs=tuple(exp_coefficients(basis, p, float(x)) for x in xs), memory_budget=int(memory_budget),
        chunk_rows=lay.chunk, causal_block=lay.block, split=lay.split, einsum=lay.einsum, operands=lay.operands, path=lay.path,
        largest_intermediate=lay.largest, summaries=lay.summaries, seconds=secs, exact_seconds=exact_secs,
        exact_method=exact_method, cost_source=_source_text(model), allow_slower=allow_slower,
    )
    if not allow_slower and not plan.faster_than_exact:
        raise _slower_error(plan)
    return plan


def _source_text(model: CostModel) -> str:
    exact = model.exact_probe or "default rates per step kind"
    approx = f"cost model {model.source}" + (f", {model.approx_probe}" if model.approx_probe else "")
    return f"approx: {approx}; exact: {exact}"

