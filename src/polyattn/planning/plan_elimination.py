"""Planner for ``method="elimination"``: numerically stable variable elimination (any polynomial).

The order comes from :func:`polyattn.polynomial.elimination_order` (exact subset DP up to 14
variables). Each step joins the logit factors and earlier messages that contain the eliminated
variable; it is *factored* (BLAS contraction of separately shifted exp-factors) when the join is
larger than every input and there are at least two inputs, else *dense*. Query rows and value
columns are chunked to stay within ``memory_budget``; the plain triangle and ``x1*x2*x3`` run on
fused kernels (:mod:`.plan_cubic`) when those fit the budget.
"""

from __future__ import annotations

import math

from ..polynomial import elimination_order
from .details import EliminationDetail, ElimStep, StepKind
from .methods import Method
from .plan import Plan, Step, fmt_bytes
from .plan_cubic import fused_cost, fused_cubic, fused_forward_bytes, fused_kind
from .spec import ProblemSpec

__all__ = ["plan_elimination", "elimination_steps"]


def _size(spec: ProblemSpec, vars_: tuple[int, ...]) -> int:
    out = 1
    for v in vars_:
        out *= spec.seq_lens[v - 1]
    return out


def _channels(spec: ProblemSpec) -> int:
    return spec.value_dim + 1  # values plus the all-ones channel that carries the normaliser


def factor_flops(spec: ProblemSpec) -> float:
    """Building the monomials' logit factors: ``2 d`` per entry."""
    return sum(2.0 * _size(spec, m) * spec.head_dim for m in spec.polynomial.monomials) * spec.batch


def elimination_steps(spec: ProblemSpec) -> tuple[tuple[int, ...], int, tuple[ElimStep, ...], tuple[int, ...]]:
    """``(order, width, steps, final)``: simulate the elimination on scopes only."""
    t = spec.num_variables
    edges = spec.factor_edges()
    order, width = elimination_order(edges, t)
    factors = [tuple(e) for e in edges]
    messages: list[tuple[int, tuple[int, ...]]] = []  # (producing step, scope)
    steps = []
    for i, v in enumerate(order):
        fs = tuple(s for s in factors if v in s)
        ms = [(j, s) for j, s in messages if v in s]
        factors = [s for s in factors if v not in s]
        messages = [(j, s) for j, s in messages if v not in s]
        scope = tuple(sorted({v}.union(*fs, *(s for _, s in ms))))
        biggest_input = max([_size(spec, s) for s in fs] + [_size(spec, s) for _, s in ms] + [spec.seq_lens[v - 1]])
        # factored steps re-check underflow on the data (a data-dependent branch that torch.func
        # transforms cannot trace): under vmap every step is dense
        factored = _size(spec, scope) > biggest_input and len(fs) + len(ms) >= 2 and not spec.functorch
        out_scope = tuple(x for x in scope if x != v)
        steps.append(ElimStep(
            var=v, scope=scope, kind=StepKind.FACTORED if factored else StepKind.DENSE,
            depends_on_query=1 in scope, factors=fs, messages=tuple(j for j, _ in ms), out_scope=out_scope,
        ))
        messages.append((i, out_scope))
    return tuple(order), width, tuple(steps), tuple(j for j, _ in messages)


def _step_cost(spec: ProblemSpec, st: ElimStep, rows: int, cc: int) -> tuple[float, float]:
    n1 = spec.seq_lens[0]
    frac = rows / max(1, n1) if st.depends_on_query else 1.0
    full = _size(spec, st.scope) * frac
    rest = _size(spec, st.out_scope) * frac
    b, isz = spec.batch, spec.itemsize
    flops = 2.0 * full * _channels(spec) * b  # every channel passes through the join once
    if st.kind == StepKind.FACTORED:
        # exp-factors are inputs; the contraction writes (and einsum may stage) rest x cc.
        mem = (3 * rest * cc) * b * isz
    else:
        mem = (3 * full + 2 * rest * cc + full * min(cc, 2)) * b * isz
    return flops, mem


def _factor_mem(spec: ProblemSpec, rows: int) -> float:
    """Logit factors; those containing x1 are materialised per row chunk."""
    n1 = spec.seq_lens[0]
    tot = sum(_size(spec, m) * (rows / max(1, n1) if 1 in m else 1.0) for m in spec.factor_edges())
    return tot * spec.batch * spec.itemsize


def _peak(spec: ProblemSpec, steps: tuple[ElimStep, ...], rows: int, cc: int) -> float:
    return _factor_mem(spec, rows) + max([_step_cost(spec, st, rows, cc)[1] for st in steps] + [0.0])


def _chunks(spec: ProblemSpec, steps: tuple[ElimStep, ...], budget: int) -> tuple[int, int, bool]:
    """``(query rows, value columns, fits)``: halve rows first (cheap: rows are independent), then
    value columns (which repeat the whole elimination per chunk) only when that helps by >= 10%."""
    rows, cc = spec.seq_lens[0], _channels(spec)
    while _peak(spec, steps, rows, cc) > budget:
        cur = _peak(spec, steps, rows, cc)
        if rows > 1 and _peak(spec, steps, rows // 2, cc) <= 0.9 * cur:
            rows //= 2
        elif cc > 1 and _peak(spec, steps, rows, cc // 2) <= 0.9 * cur:
            cc //= 2
        elif rows > 1:
            rows //= 2
        else:
            return rows, max(1, min(cc, spec.value_dim)), False
    # channel chunks each carry the ones channel, so cc counts value columns only
    return rows, max(1, min(cc, spec.value_dim)), True


def _reason(spec: ProblemSpec, order: tuple[int, ...], width: int, exponent: int) -> str:
    p = spec.polynomial
    return (
        f"the factor graph is not a forest ({'degree ' + str(p.degree) if p.degree > 2 else 'it has a cycle'}): "
        f"numerically stable variable elimination along {', '.join(f'x{v}' for v in order) or 'nothing'} "
        f"(width {width}, cost n^{exponent})"
    )


def plan_elimination(spec: ProblemSpec, budget: int) -> Plan:
    order, width, esteps, final = elimination_steps(spec)
    rows, cc, fits = _chunks(spec, esteps, budget)
    n_chunks = math.ceil(spec.value_dim / cc)
    steps = []
    flops = factor_flops(spec)
    for st in esteps:
        fl = _step_cost(spec, st, spec.seq_lens[0], cc)[0] * (cc + 1) * n_chunks / _channels(spec)
        steps.append(Step(st.kind, st.var, st.scope, fl, _step_cost(spec, st, rows, cc)[1],
                          depends_on_query=st.depends_on_query))
        flops += fl
    exponent = max([len(st.scope) for st in esteps] + [len(m) for m in spec.factor_edges()] + [1])
    p = spec.polynomial
    notes = []
    if not fits:
        notes.append("the smallest chunks still exceed memory_budget; raise it or shrink the problem")
    if p.is_tree and exponent > 2:
        notes.append(
            f"{p} is a tree polynomial, but causal={spec.causal!r} / the masks add pairs that close "
            "a cycle, so the exact cost is superquadratic"
            + ("; causal='tree' keeps it quadratic" if spec.causal == "prefix" else "")
        )
    if spec.functorch:
        notes.append("torch.func transform: no data-dependent steps (dense elimination, row-wise fused kernel)")
    if any(st.kind == StepKind.FACTORED for st in esteps):
        notes.append("factored steps are BLAS contractions (n^|scope| * dv multiply-adds)")
    blas = any(st.kind == StepKind.FACTORED and len(st.scope) == exponent for st in esteps)
    detail = EliminationDetail(order=order, width=width, row_chunk=rows, channel_chunk=cc,
                               factors=tuple(tuple(e) for e in spec.factor_edges()), steps=esteps, final=final)
    reason = _reason(spec, order, width, exponent)
    kind = fused_kind(spec)
    if kind is not None:
        fc = fused_cubic(spec, kind, budget)
        f_flops, f_mem = fused_cost(spec, fc)
        if f_mem > budget:
            notes.append(f"the fused {'x1*x2*x3' if kind == StepKind.FUSED_TENSOR3 else 'triangle'} kernel "
                         "would exceed memory_budget; running the chunked generic steps")
        else:
            fused_step = Step(kind, 3, (1, 2, 3), f_flops, f_mem)
            if fc.fallback:
                notes.insert(0, "a fused BLAS kernel runs this polynomial; if any row's normaliser could have "
                             "underflowed, the exact generic steps (marked) recompute the call")
                shown = [fused_step] + [Step(st.kind, st.var, st.scope, 0.0, 0.0, depends_on_query=st.depends_on_query,
                                             fallback=True) for st in esteps]
            else:
                what = "this small triangle" if kind == StepKind.FUSED_TRIANGLE_ROWWISE else "this polynomial"
                notes = [f"a fused kernel runs {what} (exact per-row log-shift, BLAS contractions)"]
                shown = [fused_step]
            notes.append(f"peak memory {fmt_bytes(f_mem)} covers forward + backward (forward alone: "
                         f"{fmt_bytes(fused_forward_bytes(spec, fc))}; the backward recomputes per block)")
            detail = EliminationDetail(order=order, width=width, row_chunk=rows, channel_chunk=cc,
                                       factors=detail.factors, steps=esteps, final=final, fused=fc)
            return Plan(spec, Method.ELIMINATION, reason, tuple(shown), f_flops, f_mem,
                        exponent, detail=detail, notes=tuple(notes), blas=blas or kind == StepKind.FUSED_TRIANGLE)
    return Plan(spec, Method.ELIMINATION, reason, tuple(steps), flops, _peak(spec, esteps, rows, cc), exponent,
                detail=detail, notes=tuple(notes), blas=blas)
