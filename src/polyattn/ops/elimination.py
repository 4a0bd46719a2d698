"""Numerically stable variable elimination: exact poly-attention for any polynomial.

Mathematics. For a value column ``c`` (plus an all-ones column that yields the normaliser)::

    out[l1, c] = sum_{l2..lt} prod_f exp(F_f) * prod_j V_j[l_j, c]   /   (same with V = 1)

where the factors ``F_f`` are the monomials' scaled generalised inner products and the masks
(0 / -inf). Summing the non-query variables out one at a time along a planned order turns this into
a chain of contractions. Each intermediate *message* is kept as ``mantissa * exp(logscale)``:

* ``dense`` step: materialise the join ``A = sum F + sum logscales`` over the step's scope (in
  query-row chunks), subtract its exact max over the eliminated variable, exponentiate, contract.
  Never overflows, and the dominant term is exactly 1, so nothing relevant underflows.
* ``factored`` step (e.g. the triangle): exponentiate each factor with its own max (a separable
  upper bound of the joint max) and contract the factors with BLAS without materialising the join.
  Entries whose normaliser lands below ``sqrt(tiny)`` may have lost their dominant term to
  underflow; they are recomputed exactly by a dense step on just those rows.

After each step the message is renormalised so its ones-column is 1 (scale moved into the
logscale). All rescalings are detached constants applied consistently, so autograd through the
torch ops gives exact gradients. The value columns are processed in chunks (each chunk carries the
ones column) and the query rows in chunks, bounding memory as the plan states.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..planning import EliminationDetail, Plan, StepKind
from . import trace
from .common import NEG_INF, expand_to, letters
from .cubic import fast_cubic
from .inputs import Problem

__all__ = ["elimination_attention"]


@dataclass
class _Msg:
    scope: tuple[int, ...]
    mant: torch.Tensor  # [..., n_scope..., (z)]
    logscale: torch.Tensor  # [..., n_scope...]
    chan: bool


@dataclass
class _Factor:
    scope: tuple[int, ...]
    logit: torch.Tensor  # [..., n_scope...]


def _threshold(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).tiny) ** 0.5


def _build_factors(prob: Problem, rows: slice | None, which: str = "all", data: bool = True) -> list[_Factor]:
    """Monomial factors with the masks folded in; pair masks with no monomial become 0/-inf factors.

    ``which``: ``"all"``, ``"query"`` (only factors containing x1, built on ``rows`` of x1) or
    ``"free"`` (only factors without x1, built once when query rows are chunked). ``data=False``:
    monomial logits are 0 (only the constraints count; see ``_admissible_rows``).
    """
    q = list(prob.q)
    if rows is not None:
        q[1] = q[1][..., rows, :]  # type: ignore[index]

    def wanted(scope: tuple[int, ...]) -> bool:
        return which == "all" or (which == "query") == (1 in scope)

    out: dict[tuple[int, ...], torch.Tensor] = {}
    for mono in prob.spec.polynomial.monomials:
        if not wanted(mono):
            continue
        if not data:
            sizes = [(rows.stop - rows.start) if (v == 1 and rows is not None) else prob.n(v) for v in mono]
            out[mono] = torch.zeros([*prob.batch_shape, *sizes], dtype=prob.dtype, device=prob.device)
            continue
        if len(mono) == 2:
            a, b = mono
            g = torch.matmul(q[a], q[b].transpose(-1, -2))  # type: ignore[union-attr,arg-type]
        else:
            spec = ",".join(f"...{letters((v,))}z" for v in mono) + f"->...{letters(mono)}"
            g = torch.einsum(spec, *[q[v] for v in mono])
        out[mono] = g * prob.scale
    for a, b in sorted(prob.constrained_pairs()):
        if not wanted((a, b)):
            continue
        m = prob.pair_mask(a, b)
        assert m is not None
        if rows is not None and a == 1:
            m = m[..., rows, :]
        if (a, b) in out:
            out[(a, b)] = out[(a, b)].masked_fill(~m, NEG_INF)
        else:
            zero = torch.zeros((), dtype=prob.dtype, device=prob.device)
            out[(a, b)] = torch.where(m, zero, torch.full_like(zero, NEG_INF))
    return [_Factor(s, f) for s, f in out.items()]


def _renormalize(mant: torch.Tensor, logscale: torch.Tensor, chan: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ones = (mant[..., -1] if chan else mant).detach()
    pos = ones > 0
    s = torch.where(pos, ones, torch.ones_like(ones))
    mant = mant / (s.unsqueeze(-1) if chan else s)
    logscale = torch.where(pos, logscale + s.log(), torch.full_like(logscale, NEG_INF))
    return mant, logscale, ones


def _contract(
    v: int,
    scope: tuple[int, ...],
    exp_terms: list[tuple[tuple[int, ...], torch.Tensor]],
    msgs: list[_Msg],
    value: torch.Tensor | None,
) -> tuple[torch.Tensor, bool]:
    """einsum of exp-terms (no channel), message mantissas and the value, summing out ``v``."""
    out_scope = tuple(x for x in scope if x != v)
    ops, specs = [], []
    chan = False
    for s, e in exp_terms:
        ops.append(e)
        specs.append("..." + letters(s))
    for m in msgs:
        ops.append(m.mant)
        specs.append("..." + letters(m.scope) + ("z" if m.chan else ""))
        chan |= m.chan
    if value is not None:
        ops.append(value)
        specs.append("..." + letters((v,)) + "z")
        chan = True
    eq = ",".join(specs) + "->..." + letters(out_scope) + ("z" if chan else "")
    return torch.einsum(eq, *ops), chan


def _dense_step(
    v: int, scope: tuple[int, ...], factors: list[_Factor], msgs: list[_Msg], value: torch.Tensor | None,
    like: torch.Tensor | None = None, n_v: int = 0,
) -> _Msg:
    A = None
    if not factors and not msgs:
        # A variable in no factor: every position has logit 0 (it contributes the mean of its values).
        assert like is not None
        A = like.new_zeros(n_v)
    for f in factors:
        e = expand_to(f.logit, f.scope, scope)
        A = e if A is None else A + e
    for m in msgs:
        e = expand_to(m.logscale, m.scope, scope)
        A = e if A is None else A + e
    assert A is not None
    pos = A.dim() - len(scope) + scope.index(v)
    lam = A.detach().amax(dim=pos, keepdim=True)
    lam = torch.where(torch.isfinite(lam), lam, torch.zeros_like(lam))
    P = torch.exp(A - lam)
    mant, chan = _contract(v, scope, [(scope, P)], msgs, value)
    logscale = lam.squeeze(pos)
    out_scope = tuple(x for x in scope if x != v)
    logscale = logscale.expand(mant.shape[: mant.dim() - (1 if chan else 0)])
    mant, logscale, _ = _renormalize(mant, logscale, chan)
    return _Msg(out_scope, mant, logscale, chan)


def _shift(x: torch.Tensor, scope: tuple[int, ...], v: int) -> torch.Tensor:
    pos = x.dim() - len(scope) + scope.index(v)
    s = x.detach().amax(dim=pos, keepdim=True)
    return torch.where(torch.isfinite(s), s, torch.zeros_like(s))


def _select(x: torch.Tensor, scope: tuple[int, ...], var: int, idx: torch.Tensor, trailing: int = 0) -> torch.Tensor:
    if var not in scope:
        return x
    pos = x.dim() - trailing - len(scope) + scope.index(var)
    return x.index_select(pos, idx)


def _factored_step(
    v: int, scope: tuple[int, ...], factors: list[_Factor], msgs: list[_Msg], value: torch.Tensor | None
) -> _Msg:
    out_scope = tuple(x for x in scope if x != v)
    exp_terms = []
    logscale = None
    for f in factors:
        sh = _shift(f.logit, f.scope, v)
        exp_terms.append((f.scope, torch.exp(f.logit - sh)))
        term = expand_to(sh.squeeze(sh.dim() - len(f.scope) + f.scope.index(v)), tuple(x for x in f.scope if x != v), out_scope)
        logscale = term if logscale is None else logscale + term
    shifted_msgs = []
    for m in msgs:
        sh = _shift(m.logscale, m.scope, v)
        w = torch.exp(m.logscale - sh)
        shifted_msgs.append(_Msg(m.scope, m.mant * (w.unsqueeze(-1) if m.chan else w), m.logscale, m.chan))
        term = expand_to(sh.squeeze(sh.dim() - len(m.scope) + m.scope.index(v)), tuple(x for x in m.scope if x != v), out_scope)
        logscale = term if logscale is None else logscale + term
    mant, chan = _contract(v, scope, exp_terms, shifted_msgs, value)
    assert logscale is not None
    logscale = logscale.expand(mant.shape[: mant.dim() - (1 if chan else 0)])
    mant, logscale, ones = _renormalize(mant, logscale, chan)
    bad = ones < _threshold(ones.dtype)
    if bool(bad.any()):
        # Recompute rows (of the first remaining variable) holding a suspect entry, exactly.
        r = out_scope[0]
        pos = bad.dim() - len(out_scope)
        other = [i for i in range(bad.dim()) if i != pos]
        rows = bad.any(dim=tuple(other)) if other else bad
        idx = rows.nonzero().flatten()
        sub_f = [_Factor(f.scope, _select(f.logit, f.scope, r, idx)) for f in factors]
        sub_m = [
            _Msg(m.scope, _select(m.mant, m.scope, r, idx, 1 if m.chan else 0), _select(m.logscale, m.scope, r, idx), m.chan)
            for m in msgs
        ]
        sub_v = value.index_select(value.dim() - 2, idx) if (value is not None and r == v) else value
        fix = _dense_step(v, scope, sub_f, sub_m, sub_v)
        mant = _index_copy(mant, pos, idx, fix.mant)
        logscale = _index_copy(logscale, pos, idx, fix.logscale)
    return _Msg(out_scope, mant, logscale, chan)


def _index_copy(x: torch.Tensor, dim: int, idx: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    shape = list(x.shape)
    shape[dim] = src.shape[dim]
    src = src.expand(shape) if list(src.shape) != shape else src
    return x.index_copy(dim, idx, src)


def _run_steps(
    prob: Problem,
    detail: EliminationDetail,
    indices: list[int],
    values: list[torch.Tensor | None],
    factors: dict[tuple[int, ...], _Factor],
    msgs: dict[int, _Msg],
    cols: tuple[int, int],
    rows: tuple[int, int] | None,
    event: str = "elim",
) -> None:
    """Run the planned steps ``indices``; each adds its message to ``msgs`` under its index."""
    for i in indices:
        st = detail.steps[i]
        fs = [factors[s] for s in st.factors]
        ms = [msgs[j] for j in st.messages]
        trace.emit(event, step=i, var=st.var, kind=str(st.kind), rows=rows, cols=cols)
        if st.kind == StepKind.FACTORED:
            msgs[i] = _factored_step(st.var, st.scope, fs, ms, values[st.var])
        else:
            msgs[i] = _dense_step(st.var, st.scope, fs, ms, values[st.var], like=prob.q[1], n_v=prob.n(st.var))


def elimination_attention(prob: Problem, plan: Plan) -> torch.Tensor:
    detail = plan.detail
    assert isinstance(detail, EliminationDetail)
    if detail.fused is not None:  # fused BLAS kernels for the plain triangle and x1*x2*x3 (ops/cubic.py)
        fast = fast_cubic(prob, detail.fused)
        if fast is not None:
            return fast
        # None: a separable-shift normaliser could have underflowed; the planned generic steps are exact.
        trace.emit("fallback")
    t = prob.t
    dv = prob.dv
    has_any_value = any(prob.v[j] is not None for j in range(2, t + 1))
    cc = detail.channel_chunk
    n1 = prob.n(1)
    rc = detail.row_chunk
    global_idx = [i for i, st in enumerate(detail.steps) if not st.depends_on_query]
    query_idx = [i for i, st in enumerate(detail.steps) if st.depends_on_query]
    col_chunks = range(0, dv, cc) if has_any_value else [0]
    outs: list[torch.Tensor] = []
    zeros: list[torch.Tensor] = []  # per query-row chunk of the first column chunk: normaliser == 0
    for c0 in col_chunks:
        cols = (c0, min(dv, c0 + cc))
        vals: list[torch.Tensor | None] = [None] * (t + 1)
        for j in range(2, t + 1):
            vj = prob.v[j]
            if vj is not None:
                part = vj[..., c0 : c0 + cc]
                ones = torch.ones((), dtype=prob.dtype, device=prob.device).expand(*part.shape[:-1], 1)
                vals[j] = torch.cat([part, ones], dim=-1)
        # Factors and steps that do not involve x1 are computed once for all query rows.
        one_chunk = rc >= n1
        all_f = _build_factors(prob, None) if one_chunk else None
        free_f = _build_factors(prob, None, "free") if all_f is None else [f for f in all_f if 1 not in f.scope]
        pre: dict[int, _Msg] = {}
        _run_steps(prob, detail, global_idx, vals, {f.scope: f for f in free_f}, pre, cols, None)
        row_outs: list[torch.Tensor] = []
        for r0 in range(0, n1, rc):
            rows = slice(r0, min(n1, r0 + rc))
            dep_f = [f for f in all_f if 1 in f.scope] if all_f is not None else _build_factors(prob, rows, "query")
            msgs = dict(pre)
            factors = {f.scope: f for f in free_f + dep_f}
            _run_steps(prob, detail, query_idx, vals, factors, msgs, cols, (rows.start, rows.stop))
            quot, z = _finish([msgs[i] for i in detail.final])
            row_outs.append(quot.expand(*prob.batch_shape, rows.stop - rows.start, quot.shape[-1]))
            if not outs:  # the normaliser is the same in every column chunk
                zeros.append(z.expand(*prob.batch_shape, rows.stop - rows.start))
        outs.append(torch.cat(row_outs, dim=-2) if len(row_outs) > 1 else row_outs[0])
    out = torch.cat(outs, dim=-1) if len(outs) > 1 else outs[0]
    if prob.masks or prob.causal:
        # The NaN rule: a zero normaliser means "no admissible tuple" (-> 0) only if the masks and
        # causality say so; from data (infinite inputs) it stays NaN. Decided by a mask-only pass.
        zero = torch.cat(zeros, dim=-1) if len(zeros) > 1 else zeros[0]
        if prob.spec.functorch or bool(zero.any()):
            empty = zero & ~_admissible_rows(prob, detail)
            out = torch.where(empty.unsqueeze(-1), torch.zeros((), dtype=out.dtype, device=out.device), out)
    return out


def _finish(msgs: list[_Msg]) -> tuple[torch.Tensor, torch.Tensor]:
    """Multiply the final messages (scopes {x1} or {}) and divide by the ones column.

    Returns ``(rows [..., r, dv], zero [..., r])``: rows whose normaliser is exactly 0 come back NaN
    (the caller zeroes those with no admissible tuple); the division never sees a 0 denominator,
    so no NaN reaches the gradients of the other rows.
    """
    prod = None
    chan = False
    for m in msgs:
        x = m.mant
        if m.scope == ():
            x = x.unsqueeze(-2) if m.chan else x.unsqueeze(-1)
        if not m.chan:
            x = x.unsqueeze(-1)
        chan |= m.chan
        prod = x if prod is None else prod * x
    if prod is None:  # t == 1 cannot happen (degree >= 2); keep a clear failure
        raise RuntimeError("no messages to combine")
    den = prod[..., -1:]
    zero = den == 0
    nan = torch.full((), float("nan"), dtype=prod.dtype, device=prod.device)
    if not chan:  # every variable value-less: the output is exactly 1 (NaN propagates)
        quot = torch.where(torch.isnan(den), nan, torch.ones_like(den))
    else:
        quot = prod[..., :-1] / torch.where(zero, torch.ones_like(den), den)
    return torch.where(zero, nan, quot), zero.squeeze(-1)


def _admissible_rows(prob: Problem, detail: EliminationDetail) -> torch.Tensor:
    """``[..., n1]`` bool: rows with at least one admissible tuple under the masks and causality
    alone, by the planned elimination on the constraint factors (monomial logits set to 0, no
    values): the count of admissible tuples, in one channel."""
    with torch.no_grad():
        n1 = prob.n(1)
        free = {f.scope: f for f in _build_factors(prob, None, "free", data=False)}
        pre: dict[int, _Msg] = {}
        vals: list[torch.Tensor | None] = [None] * (prob.t + 1)
        glob = [i for i, st in enumerate(detail.steps) if not st.depends_on_query]
        query = [i for i, st in enumerate(detail.steps) if st.depends_on_query]
        _run_steps(prob, detail, glob, vals, free, pre, (0, 0), None, "admissible")
        out = []
        for r0 in range(0, n1, detail.row_chunk):
            rows = slice(r0, min(n1, r0 + detail.row_chunk))
            msgs = dict(pre)
            dep = {f.scope: f for f in _build_factors(prob, rows, "query", data=False)}
            _run_steps(prob, detail, query, vals, {**free, **dep}, msgs, (0, 0), (rows.start, rows.stop), "admissible")
            _, zero = _finish([msgs[i] for i in detail.final])
            out.append((~zero).expand(*prob.batch_shape, rows.stop - rows.start))
        return torch.cat(out, dim=-1) if len(out) > 1 else out[0]
