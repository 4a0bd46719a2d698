"""Strategy choice and cost model: turn a :class:`ProblemSpec` into a :class:`Plan`.

Strategies by structure of the *factor graph* (monomials plus mask and causal pairs):

* exactly ``x1*x2`` (masks on that pair only)          -> ``"sdpa"`` (one fused attention call)
* every factor a pair and the graph a forest            -> ``"tree"`` (message passing, n^2)
* anything else                                         -> ``"elimination"`` (n^(width+1))
* ``method="reference"``                                -> brute force in float64 (the specification)

An explicitly requested method that cannot handle the input raises :class:`MethodError`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache

from ..errors import MethodError, PolyAttentionError
from ..polynomial import AttentionPolynomial, elimination_order
from .plan import Plan, Step
from .spec import ProblemSpec
from .structure_ext import rooted_forest

__all__ = [
    "plan",
    "make_plan",
    "register_planner",
    "available_methods",
    "DEFAULT_MEMORY_BUDGET",
    "REFERENCE_MAX_TUPLES",
]

#: Working-memory target of one call (bytes); chunk sizes are chosen to stay under it.
DEFAULT_MEMORY_BUDGET = 256 * 2**20
#: The reference refuses to enumerate more than this many (batch x tuple) entries.
REFERENCE_MAX_TUPLES = 2**24
#: Working-set bound of one chunk of the fused cubic kernels (ops/cubic.py), bytes.
FUSED_CHUNK_BYTES = 64 * 2**20
#: At most this many (batch x n1 x n2 x n3) tuples, the fused triangle materialises the logits of a
#: query-row chunk with an exact per-row max (no n^3-sized exp is cheaper than separable shifts at
#: large n, but at training sizes the separable kernel's tiny batched GEMMs dominate).
DENSE_TRIANGLE_TUPLES = 2**24
#: ... and only while every sequence is at most this long: from n ~ 64 on, the row-wise kernel's n^3
#: exps cost more than the separable kernel's GEMM overhead (forward at b=1, n=128, d=32: 17 ms vs
#: 6 ms; training step at b=64, n=32, d=64: row-wise 85 ms vs separable 138 ms; 1 thread).
DENSE_TRIANGLE_MAX_LEN = 64

_TRIANGLE = ((1, 2), (1, 3), (2, 3))
_TENSOR3 = ((1, 2, 3),)

Planner = Callable[[ProblemSpec, int], Plan]
_PLANNERS: dict[str, Planner] = {}
_AUTO_ORDER = ["sdpa", "tree", "elimination"]


def register_planner(name: str, fn: Planner, *, auto: bool = False) -> None:
    """Register a planner for ``method=name`` (used by ops that live outside this module)."""
    _PLANNERS[name] = fn
    if auto and name not in _AUTO_ORDER:
        _AUTO_ORDER.append(name)


def available_methods() -> tuple[str, ...]:
    return ("auto", *_PLANNERS)


def _size(spec: ProblemSpec, vars_: tuple[int, ...] | set[int] | frozenset[int]) -> int:
    out = 1
    for v in vars_:
        out *= spec.seq_lens[v - 1]
    return out


def _value_channels(spec: ProblemSpec) -> int:
    return spec.value_dim + 1  # values plus the all-ones channel that carries the normaliser


def _factor_flops(spec: ProblemSpec) -> float:
    return sum(2.0 * _size(spec, m) * spec.head_dim for m in spec.polynomial.monomials) * spec.batch


# --------------------------------------------------------------------------------------- sdpa
def _plan_sdpa(spec: ProblemSpec, budget: int) -> Plan:
    p = spec.polynomial
    if p.monomials != ((1, 2),) or p.num_variables != 2:
        raise MethodError(
            f"method='sdpa' computes exactly x1*x2 (standard attention); got {p}. "
            "Use method='auto' to let the planner choose"
        )
    n1, n2 = spec.seq_lens
    flops = 2.0 * n1 * n2 * (spec.head_dim + spec.value_dim) * spec.batch
    mem = (n1 * n2 if spec.mask_pairs else 0) * spec.batch * 1.0 + n1 * spec.value_dim * spec.batch * spec.itemsize
    step = Step("sdpa", 2, (1, 2), flops, mem, parent=1)
    return Plan(spec, "sdpa", "x1*x2 is standard softmax attention: one fused SDPA call",
                (step,), flops, mem, 2)


# --------------------------------------------------------------------------------------- tree
def _plan_tree(spec: ProblemSpec, budget: int) -> Plan:
    p = spec.polynomial
    t = p.num_variables
    edges = spec.factor_edges()
    rooted = rooted_forest(edges, t)
    if rooted is None:
        why = (
            f"degree {p.degree}" if p.degree > 2 else "its factor graph has a cycle"
        )
        extra = ""
        if p.is_tree and spec.causal == "prefix":
            extra = " (causal='prefix' couples x1 with non-neighbours; causal='tree' keeps it a tree)"
        elif p.is_tree and spec.mask_pairs:
            extra = " (a mask on a pair that is not an edge closes a cycle)"
        raise MethodError(
            f"method='tree' needs a factor graph that is a forest of pairs; {p} has {why}{extra}. "
            "Use method='elimination' or 'auto'"
        )
    parent, post = rooted
    monos = set(p.monomials)
    steps = []
    flops = 0.0
    peak = 0.0
    dv = spec.value_dim
    for c in post:
        u = parent[c]
        has_logits = (min(u, c), max(u, c)) in monos
        nu, nc = spec.seq_lens[u - 1], spec.seq_lens[c - 1]
        f = 2.0 * nu * nc * ((spec.head_dim if has_logits else 0) + dv + 1) * spec.batch
        # The fused kernel keeps O(n*d) per edge; a masked edge materialises its boolean mask.
        m = (nu + nc) * (spec.head_dim + dv + 2) * spec.batch * spec.itemsize
        if (min(u, c), max(u, c)) in spec.mask_pairs:
            m += nu * nc * spec.batch
        steps.append(Step("edge", c, (u, c), f, m, parent=u, logits=has_logits))
        flops += f
        peak = max(peak, m)
    exponent = 2 if steps else 1
    reason = (
        "the factor graph is a forest: message passing from the leaves, one attention pass per "
        "edge with the child's log-mass as a key bias (quadratic time, O(n*d) memory per edge)"
    )
    return Plan(spec, "tree", reason, tuple(steps), flops, peak, exponent,
                order=tuple(post), width=1 if steps else 0,
                parents=tuple(sorted(parent.items())))


# -------------------------------------------------------------------------------- elimination
def _elimination_steps(spec: ProblemSpec) -> tuple[tuple[int, ...], int, list[tuple[int, tuple[int, ...], bool, bool]]]:
    """Order, width and for each step (var, scope sorted, factored?, depends_on_query)."""
    t = spec.num_variables
    edges = spec.factor_edges()
    order, width = elimination_order(edges, t)
    # Simulate: factors are (scope, is_logit); messages are scopes.
    logit_scopes = [tuple(e) for e in edges]
    messages: list[tuple[int, ...]] = []
    out = []
    for v in order:
        fs = [s for s in logit_scopes if v in s]
        ms = [s for s in messages if v in s]
        logit_scopes = [s for s in logit_scopes if v not in s]
        messages = [s for s in messages if v not in s]
        scope = tuple(sorted({v}.union(*fs, *ms)))
        biggest_input = max([_size(spec, s) for s in fs + ms] + [spec.seq_lens[v - 1]])
        factored = _size(spec, scope) > biggest_input and len(fs) + len(ms) >= 2
        dep = 1 in scope
        out.append((v, scope, factored, dep))
        new = tuple(x for x in scope if x != v)
        if new:
            messages.append(new)
    return tuple(order), width, out


def _plan_elimination(spec: ProblemSpec, budget: int) -> Plan:
    order, width, raw = _elimination_steps(spec)
    C = _value_channels(spec)
    b, isz = spec.batch, spec.itemsize
    n1 = spec.seq_lens[0]

    def step_cost(scope: tuple[int, ...], v: int, factored: bool, dep: bool, rows: int, cc: int) -> tuple[float, float]:
        frac = rows / n1 if dep else 1.0
        full = _size(spec, scope) * frac
        rest = _size(spec, tuple(x for x in scope if x != v)) * frac
        flops = 2.0 * full * C * b  # every channel passes through the join once
        if factored:
            # exp-factors are inputs; the contraction writes (and einsum may stage) rest x cc.
            mem = (3 * rest * cc) * b * isz
        else:
            mem = (3 * full + 2 * rest * cc + full * min(cc, 2)) * b * isz
        return flops, mem

    # Logit factors containing x1 are materialised per row chunk too.
    def factor_mem(rows: int) -> float:
        tot = 0.0
        for m in spec.factor_edges():
            frac = rows / n1 if 1 in m else 1.0
            tot += _size(spec, m) * frac
        return tot * b * isz

    rows, cc = n1, C

    def peak(rows: int, cc: int) -> float:
        return factor_mem(rows) + max([step_cost(s, v, f, d, rows, cc)[1] for v, s, f, d in raw] + [0.0])

    # Halve the query-row chunk first (cheap: rows are independent); halve the value-column chunk
    # (which repeats the whole elimination per chunk) only when that still helps by >= 10%.
    notes_budget = False
    while peak(rows, cc) > budget:
        cur = peak(rows, cc)
        if rows > 1 and peak(rows // 2, cc) <= 0.9 * cur:
            rows //= 2
        elif cc > 1 and peak(rows, cc // 2) <= 0.9 * cur:
            cc //= 2
        elif rows > 1:
            rows //= 2
        else:
            notes_budget = True
            break
    # Channel chunks each carry the ones channel, so cc counts value columns only.
    cc = max(1, min(cc, spec.value_dim))
    steps = []
    flops = _factor_flops(spec)
    n_chunks = math.ceil((spec.value_dim) / cc)
    for v, s, f, d in raw:
        fl, _ = step_cost(s, v, f, d, n1, cc)
        fl *= (cc + 1) * n_chunks / C
        steps.append(Step("factored" if f else "dense", v, s, fl, step_cost(s, v, f, d, rows, cc)[1],
                          depends_on_query=d))
        flops += fl
    exponent = max([len(s) for _, s, _, _ in raw] + [len(m) for m in spec.factor_edges()] + [1])
    notes = []
    p = spec.polynomial
    if notes_budget:
        notes.append("the smallest chunks still exceed memory_budget; raise it or shrink the problem")
    if p.is_tree and exponent > 2:
        notes.append(
            f"{p} is a tree polynomial, but causal={spec.causal!r} / the masks add pairs that close "
            "a cycle, so the exact cost is superquadratic"
            + ("; causal='tree' keeps it quadratic" if spec.causal == "prefix" else "")
        )
    if any(f for _, _, f, _ in raw):
        notes.append("factored steps are BLAS contractions (n^|scope| * dv multiply-adds)")
    reason = (
        f"the factor graph is not a forest ({'degree ' + str(p.degree) if p.degree > 2 else 'it has a cycle'}): "
        f"numerically stable variable elimination along {', '.join(f'x{v}' for v in order) or 'nothing'} "
        f"(width {width}, cost n^{exponent})"
    )
    blas = any(f and len(s) == exponent for _, s, f, _ in raw)
    fused = _fused_kernel(spec)
    if fused and _fused_steps(spec, fused)[2] > budget:
        notes.append(f"the fused {fused} kernel would exceed memory_budget; running the chunked generic steps")
        fused = ""
    if fused:
        steps, fl, mem = _fused_steps(spec, fused)
        flops = _factor_flops(spec) + fl
        if steps[0].kind == "fused-triangle-rowwise":
            notes = ["a fused kernel runs this small triangle (exact per-row log-shift, BLAS contractions)"]
            rows, cc = _fused_rows(spec), spec.value_dim
        elif fused == "triangle":
            notes.insert(0, "a fused BLAS kernel runs this polynomial; if any row's normaliser could have "
                         "underflowed, the exact generic steps (marked) recompute the call")
        else:
            notes = ["a fused kernel runs this polynomial (exact per-row log-shift, BLAS contractions)"]
            rows, cc = _fused_rows(spec), spec.value_dim
        return Plan(spec, "elimination", reason, tuple(steps), flops, mem, exponent,
                    order=order, width=width, row_chunk=rows, channel_chunk=cc, notes=tuple(notes),
                    blas=blas or fused == "triangle", fused=fused)
    return Plan(spec, "elimination", reason, tuple(steps), flops, peak(rows, cc), exponent,
                order=order, width=width, row_chunk=rows, channel_chunk=cc, notes=tuple(notes),
                blas=blas)


def _fused_kernel(spec: ProblemSpec) -> str:
    """``"triangle"`` / ``"tensor3"`` when the fused cubic kernels apply (no masks, no causality)."""
    if spec.num_variables != 3 or spec.mask_pairs or spec.causal:
        return ""
    monos = spec.polynomial.monomials
    return "triangle" if monos == _TRIANGLE else "tensor3" if monos == _TENSOR3 else ""


def _fused_steps(spec: ProblemSpec, kind: str) -> tuple[list[Step], float, float]:
    n1, n2, n3 = spec.seq_lens
    C = _value_channels(spec)
    b, isz, d = spec.batch, spec.itemsize, spec.head_dim
    rowwise = b * n1 * n2 * n3 <= DENSE_TRIANGLE_TUPLES and max(n1, n2, n3) <= DENSE_TRIANGLE_MAX_LEN
    if kind == "triangle" and rowwise:
        flops = 2.0 * n1 * n2 * n3 * C * b
        rows = max(1, min(n1, FUSED_CHUNK_BYTES // max(1, b * n2 * (n3 + 2 * C) * isz)))
        mem = (n1 * n2 + n1 * n3 + n2 * n3) * b * isz + rows * b * n2 * (n3 + 2 * C) * isz
        return [Step("fused-triangle-rowwise", 3, (1, 2, 3), flops, mem)], flops, mem
    if kind == "triangle":
        flops = 2.0 * n1 * n2 * n3 * C * b
        mem = (n1 * n2 + n1 * n3 + n2 * n3) * b * isz + min(FUSED_CHUNK_BYTES, 2 * (n1 + n2) * n3 * C * b * isz)
        step = Step("fused-triangle", 3, (1, 2, 3), flops, mem)
        # The generic elimination is the exact fallback: show it after the fused step.
        generic = [st for st in _plan_elimination_generic_steps(spec)]
        return [step, *generic], flops, mem
    flops = 2.0 * n1 * n2 * n3 * (d + C) * b
    per_row = b * n2 * (n3 + 2 * C + d) * isz
    mem = _fused_rows(spec) * per_row * 2
    return [Step("fused-tensor3", 3, (1, 2, 3), flops, mem)], flops, mem


def _fused_rows(spec: ProblemSpec) -> int:
    """Query rows per chunk of the fused x1*x2*x3 kernel (same rule as ops/cubic.py)."""
    n1, n2, n3 = spec.seq_lens
    per_row = spec.batch * n2 * (n3 + 2 * _value_channels(spec) + spec.head_dim) * spec.itemsize
    return max(1, min(n1, FUSED_CHUNK_BYTES // max(1, per_row)))


def _plan_elimination_generic_steps(spec: ProblemSpec) -> list[Step]:
    _, _, raw = _elimination_steps(spec)
    return [Step("fallback-" + ("factored" if f else "dense"), v, s, 0.0, 0.0, depends_on_query=d)
            for v, s, f, d in raw]


# -------------------------------------------------------------------------------- reference
def _plan_reference(spec: ProblemSpec, budget: int) -> Plan:
    t = spec.num_variables
    tuples = _size(spec, tuple(range(1, t + 1)))
    total = tuples * spec.batch
    if total > REFERENCE_MAX_TUPLES:
        from ..errors import ReferenceSizeError

        raise ReferenceSizeError(
            f"method='reference' enumerates batch x n1 x ... x nt = {total:,} tuples, above its limit "
            f"of {REFERENCE_MAX_TUPLES:,} (polyattn.planning.REFERENCE_MAX_TUPLES). Use a smaller "
            "problem or an exact method such as method='auto'"
        )
    flops = 2.0 * total * (len(spec.polynomial.monomials) * spec.head_dim + spec.value_dim * t)
    mem = total * 8.0 * 4
    step = Step("reference", 0, tuple(range(1, t + 1)), flops, mem)
    return Plan(spec, "reference", "brute force over all tuples in float64 (the specification)",
                (step,), flops, mem, t)


register_planner("sdpa", _plan_sdpa)
register_planner("tree", _plan_tree)
register_planner("elimination", _plan_elimination)
register_planner("reference", _plan_reference)


def make_plan(spec: ProblemSpec, method: str = "auto", memory_budget: int = DEFAULT_MEMORY_BUDGET) -> Plan:
    """Plan ``spec`` with ``method`` (``"auto"`` picks the cheapest exact strategy that applies)."""
    if not isinstance(method, str) or (method != "auto" and method not in _PLANNERS):
        raise PolyAttentionError(
            f"unknown method {method!r}; choose one of {', '.join(repr(m) for m in available_methods())}"
        )
    if method != "auto":
        pl = _PLANNERS[method](spec, memory_budget)
        return _with_requested(pl, method)
    for name in _AUTO_ORDER:
        try:
            return _PLANNERS[name](spec, memory_budget)
        except MethodError:
            continue
    raise PolyAttentionError(f"no method can compute {spec.polynomial}")  # pragma: no cover


def _with_requested(pl: Plan, requested: str) -> Plan:
    from dataclasses import replace

    return replace(pl, requested=requested)


@lru_cache(maxsize=512)
def _cached(spec: ProblemSpec, method: str, budget: int) -> Plan:
    return make_plan(spec, method, budget)


def plan(
    polynomial: str | AttentionPolynomial,
    *,
    seq_len: int | tuple[int, ...] | list[int],
    head_dim: int,
    value_dim: int | None = None,
    batch: int = 1,
    causal: object = False,
    mask_pairs: object = (),
    has_values: tuple[bool, ...] | None = None,
    method: str = "auto",
    itemsize: int = 4,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> Plan:
    """Plan a poly-attention call without running it. ``print(plan(...))`` shows the report.

    >>> print(plan("x1*x2 + x2*x3", seq_len=4096, head_dim=64).complexity)
    n^2
    """
    spec = ProblemSpec.build(
        polynomial, seq_len=tuple(seq_len) if isinstance(seq_len, list) else seq_len,
        head_dim=head_dim, value_dim=value_dim, batch=batch, causal=causal,
        mask_pairs=tuple(mask_pairs), has_values=has_values, itemsize=itemsize,  # type: ignore[arg-type]
    )
    return _cached(spec, method, int(memory_budget))
