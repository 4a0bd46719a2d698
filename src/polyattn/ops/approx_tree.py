r"""Tree strategy of ``method="approx"``: message passing in feature space (see :mod:`polyattn.ops.approx`).

The factor graph (degree-2 monomials plus causal pairs) is a forest rooted at ``x1``; variables are
visited leaves first. For a plain edge (parent ``u``, child ``c``) the child's message
``m_c = V_c (*) prod_g e_{g->c}`` (``[n_c, dv+1]``, the last channel carries the normaliser) is
summarised once as ``A_c = coef (*) F_c^T m_c / n_c`` (``[r, dv+1]``) and the parent receives
``e_{c->u} = F_u A_c``: ``O(n r (dv+1))`` per edge. A *zero edge* (no monomial joins ``u`` and
``c``: a component link or a pure causality constraint) uses the rank-1 "features" ``1``.
Causal edges (``l_c <= l_u`` or ``l_u <= l_c``) need the child's whole message and go through
chunked prefix sums (:func:`prefix_message`).

Everything is computed transposed (``[..., dv+1, rows]`` messages, ``[..., dv+1, r]`` summaries,
``F^T`` chunks ``[..., r, rows]``): see :mod:`polyattn.ops.approx_features` for why. Each variable's
rows are processed in chunks of ``plan.chunk_rows`` rows (features of one chunk at a time, so memory
is ``O(chunk * r + n * (dv+1))``); under autograd each chunk is recomputed in backward
(``torch.utils.checkpoint``) instead of storing its features.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

from ..planning.approx import ApproxPlan
from .approx_features import Features
from .approx_split import DenseProducts, SplitProducts, products_for
from .inputs import Problem

__all__ = ["tree_approx", "prefix_message", "run_chunk", "value_ext", "finish"]


# ----------------------------------------------------------------------------- shared helpers
def _needs_grad(*xs: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in xs)


def run_chunk(fn: Callable, *args: torch.Tensor):  # noqa: ANN201
    """Call ``fn``; under autograd recompute it in backward instead of storing its features."""
    if _needs_grad(*args):
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


def value_ext(prob: Problem, v: int) -> torch.Tensor:
    """``[..., n_v, dv+1]``: the value with the all-ones normaliser channel (all ones if value-less)."""
    x = prob.v[v]
    if x is None:
        return torch.ones(prob.n(v), prob.dv + 1, dtype=prob.dtype, device=prob.device)
    return torch.cat([x, torch.ones_like(x[..., :1])], dim=-1)


def finish(m1: torch.Tensor, prob: Problem) -> torch.Tensor:
    """Numerator / normaliser channel of the root message ``[..., n_1, dv+1]`` (0 where it is 0;
    a NaN normaliser propagates: the NaN rule of docs/numerics.md)."""
    num, den = m1[..., :-1], m1[..., -1:]
    ok = den != 0
    out = torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(num))
    return out.expand(*prob.batch_shape, prob.n(1), out.shape[-1])


# ----------------------------------------------------------------------------- causal edges
def _pad_rows(x: torch.Tensor, n: int) -> torch.Tensor:
    return torch.nn.functional.pad(x, (0, 0, 0, n - x.shape[-2])) if x.shape[-2] < n else x


def _ones_features(q: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(q[..., :1])


def _ones_pair(qa: torch.Tensor, qb: torch.Tensor) -> torch.Tensor:
    return torch.ones(*torch.broadcast_shapes(qa.shape[:-2], qb.shape[:-2]), qa.shape[-2], qb.shape[-2],
                      dtype=qa.dtype, device=qa.device)


def _poly_pair(coeffs: tuple[float, ...], scale: float) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``P(s qa qb^T)`` evaluated densely on the ``d``-dimensional logits (Horner)."""

    def pair(qa: torch.Tensor, qb: torch.Tensor) -> torch.Tensor:
        x = (qa @ qb.transpose(-1, -2)) * scale
        acc = torch.full_like(x, coeffs[-1])
        for c_ in reversed(coeffs[:-1]):
            acc = acc * x + c_
        return acc

    return pair


def prefix_message(
    fu: Callable, fc: Callable, coef: torch.Tensor, q_u: torch.Tensor, q_c: torch.Tensor,
    m_c: torch.Tensor, n_u: int, n_c: int, block: int, reverse: bool, chunk: int,
    pair: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """``e[l_u] = (1/n_c) sum_{l_c <= l_u} P(x) m_c[l_c]`` (``reverse``: over ``l_c >= l_u``).

    Chunked linear attention (prefix sums over blocks): both sequences are zero-padded to a common
    multiple ``N`` of ``block`` (padded child rows carry ``m = 0``; padded parent rows are dropped);
    ``reverse`` flips them, turning the suffix condition into a prefix one. Per block, the
    running state ``S = sum_{earlier blocks} coef F_c^T m_c`` serves every row through ``F_u S``, and
    the block itself is done densely with a triangular mask, ``(P(s Q_u Q_c^T) * tril) @ m_c`` —
    ``pair`` evaluates the polynomial on the ``d``-dimensional logits, equal to ``F_u coef F_c^T``
    but ``r/d`` times cheaper; blocks are batched ``chunk`` rows at a time.
    Cost ``O(n (r dv + block (d + dv)))``. Returns ``[..., n_u, dv+1]``.
    """
    N = -(-max(n_u, n_c) // block) * block
    qu, qc, mc = _pad_rows(q_u, N), _pad_rows(q_c, N), _pad_rows(m_c, N)
    if reverse:
        qu, qc, mc = qu.flip(-2), qc.flip(-2), mc.flip(-2)
    allowed = torch.ones(block, block, dtype=torch.bool, device=q_u.device).tril()
    r = coef.shape[0]

    def chunk_fn(qu_: torch.Tensor, qc_: torch.Tensor, mc_: torch.Tensor, st: torch.Tensor):  # noqa: ANN202
        nb = qu_.shape[-2] // block
        Fu = fu(qu_)
        Fu = Fu.reshape(*Fu.shape[:-2], nb, block, Fu.shape[-1])
        Fc = fc(qc_) * coef
        Fc = Fc.reshape(*Fc.shape[:-2], nb, block, Fc.shape[-1])
        mb = mc_.reshape(*mc_.shape[:-2], nb, block, mc_.shape[-1])
        qub = qu_.reshape(*qu_.shape[:-2], nb, block, qu_.shape[-1])
        qcb = qc_.reshape(*qc_.shape[:-2], nb, block, qc_.shape[-1])
        w = pair(qub, qcb).masked_fill(~allowed, 0.0)  # in-block pairs, l_c <= l_u
        tot = Fc.transpose(-1, -2) @ mb  # [..., nb, r, dv1] per-block sums
        csum = tot.cumsum(-3)
        before = torch.cat([torch.zeros_like(csum[..., :1, :, :]), csum[..., :-1, :, :]], dim=-3)
        e = w @ mb + Fu @ (before + st.unsqueeze(-3))
        return e.reshape(*e.shape[:-3], nb * block, e.shape[-1]), st + csum[..., -1, :, :]

    state = torch.zeros(*m_c.shape[:-2], r, m_c.shape[-1], dtype=m_c.dtype, device=m_c.device)
    step = max(block, chunk // block * block)
    pieces = []
    for a in range(0, N, step):
        e, state = run_chunk(chunk_fn, qu[..., a : a + step, :], qc[..., a : a + step, :],
                             mc[..., a : a + step, :], state)
        pieces.append(e)
    out = torch.cat(pieces, dim=-2) if len(pieces) > 1 else pieces[0]
    if reverse:
        out = out.flip(-2)
    return out[..., :n_u, :] / n_c


# ----------------------------------------------------------------------------- the forest
@dataclass(frozen=True)
class _Edge:
    """The edge from ``child`` up to ``parent`` in the rooted factor forest."""

    parent: int
    child: int
    logit: bool  # a monomial joins them (else a zero edge: logits 0, rank-1 features)
    causal: str | None  # "prefix" (l_c <= l_u), "suffix" (l_u <= l_c) or None
    coeffs: tuple[float, ...]  # coefficients a_0..a_p of the polynomial replacing exp (logit edges)


def _edges(prob: Problem, plan: ApproxPlan) -> dict[int, _Edge]:
    monos = prob.spec.polynomial.monomials
    index = {m: i for i, m in enumerate(monos)}
    out = {}
    for c, u in plan.parent_map().items():
        key = (min(u, c), max(u, c))
        causal = "prefix" if (u, c) in prob.causal else "suffix" if (c, u) in prob.causal else None
        coeffs = plan.exp_coeffs[index[key]] if key in index else ()
        out[c] = _Edge(u, c, key in index, causal, coeffs)
    return out


def _fits(small: torch.Size, big: torch.Size) -> bool:
    """``small`` broadcasts to ``big`` without growing it (so ``big *= small`` is valid in place)."""
    if len(small) > len(big):
        return False
    return all(a in (1, b) for a, b in zip(reversed(small), reversed(big)))


def _times(e: torch.Tensor | None, x: torch.Tensor, owned: bool, fresh: bool) -> tuple[torch.Tensor, bool]:
    """``e * x`` (``x`` itself when ``e`` is None), in place when ``e`` is this chunk's own tensor."""
    if e is None:
        return x, fresh
    if owned and not (torch.is_grad_enabled() and (e.requires_grad or x.requires_grad)) and _fits(x.shape, e.shape):
        return e.mul_(x), True
    return e * x, True


def _visit(
    prob: Problem, c: int, prods: DenseProducts | SplitProducts, coefs: dict[tuple[float, ...], torch.Tensor],
    plain: list[tuple[_Edge, torch.Tensor]], row_msgs: list[torch.Tensor], up: _Edge | None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """One pass over variable ``c``'s rows, chunk by chunk.

    ``plain``: (edge, summary ``A_g^T`` ``[..., dv1, r]`` or ``[..., dv1, 1]``) of c's plain children;
    ``row_msgs``: c's incoming causal messages ``[..., n_c, dv1]``. Returns ``(m_c^T, A_c^T)``:
    the full message ``[..., dv1, n_c]`` when c is the root or its up-edge is causal (else None),
    and the summary for a plain up-edge (else None). ``prods`` runs the feature-space products
    (materialised, top-degree split or native, as the plan says) and sets the rows per chunk.
    """
    n = prob.n(c)
    keep = up is None or up.causal is not None
    up_plain = up is not None and up.causal is None
    logit_in = [e.logit for e, _ in plain]
    needs_feats = any(logit_in) or (up_plain and up.logit)  # type: ignore[union-attr]
    qt = prob.q[c].transpose(-1, -2)  # type: ignore[union-attr]
    if needs_feats and not qt.requires_grad:
        qt = qt.contiguous()  # [..., d, n]: each chunk's coordinate rows are then contiguous copies
    rest = [m.transpose(-1, -2) for m in row_msgs]
    if prob.v[c] is not None:
        rest.append(value_ext(prob, c).transpose(-1, -2))
    summaries = [prods.prepare(a) if lg else a for (_, a), lg in zip(plain, logit_in)]
    n_sum = len(summaries)
    dv1 = prob.dv + 1
    inplace = not _needs_grad(qt, *summaries, *rest)  # accumulate the up-summary inside the chunk
    box: list[torch.Tensor | None] = [None]

    def chunk_fn(qt_: torch.Tensor, *tensors: torch.Tensor):  # noqa: ANN202
        ch = prods.chunk(qt_) if needs_feats else None
        rows = qt_.shape[-1]
        e = None
        owned = False  # e is a fresh tensor of this chunk: multiply in place outside autograd
        for a_g, lg in zip(tensors[:n_sum], logit_in):
            msg = prods.apply(a_g, ch) if lg and ch is not None else a_g  # zero edge: same [.., dv1, 1] for every row
            e, owned = _times(e, msg, owned, fresh=lg)
        for x in tensors[n_sum:]:
            e, owned = _times(e, x, owned, fresh=False)
        if e is None:
            e = torch.ones(dv1, rows, dtype=qt_.dtype, device=qt_.device)
        elif e.shape[-1] != rows:
            e = e.expand(*e.shape[:-1], rows)
        contrib = None
        if up_plain and up.logit:  # type: ignore[union-attr]
            if inplace:
                box[0] = prods.summarize(e, ch, box[0])
            else:
                contrib = prods.summarize(e, ch, None)
        elif up_plain:
            contrib = e.sum(-1, keepdim=True)
        return e, contrib

    chunk = prods.chunk_rows(grad=not inplace)
    kept, acc = [], None
    for r0 in range(0, n, chunk):
        r1 = min(n, r0 + chunk)
        e, contrib = run_chunk(chunk_fn, qt[..., r0:r1], *summaries, *[x[..., r0:r1] for x in rest])
        if keep:
            kept.append(e)
        if contrib is not None:
            acc = contrib if acc is None else (acc.add_(contrib) if not acc.requires_grad else acc + contrib)
    m = None
    if keep:
        m = torch.cat(kept, dim=-1) if len(kept) > 1 else kept[0]
    if up_plain and up.logit:  # type: ignore[union-attr]
        acc = prods.finish(box[0] if inplace else acc)  # type: ignore[arg-type]
    if acc is not None:
        coef = coefs[up.coeffs] if up.logit else None  # type: ignore[union-attr]
        acc = (acc * coef if coef is not None else acc) / n
    return m, acc


def tree_approx(prob: Problem, plan: ApproxPlan, feats: Features) -> torch.Tensor:
    """Forward pass of the tree strategy: leaves first, the root's message is the output."""
    edges = _edges(prob, plan)
    coefs = {e.coeffs: feats.coef(e.coeffs) for e in edges.values() if e.logit}
    children: dict[int, list[int]] = {v: [] for v in range(1, prob.t + 1)}
    for c in plan.order:
        children[edges[c].parent].append(c)
    chunk = max(1, plan.chunk_rows)
    prods = products_for(plan, feats, prob.dv + 1)
    block = plan.causal_block
    summary: dict[int, torch.Tensor] = {}  # plain child -> A^T [..., dv1, r or 1]
    causal_msg: dict[int, torch.Tensor] = {}  # causal child -> message to its parent [..., n_u, dv1]
    for c in (*plan.order, 1):
        up = edges.get(c)
        plain = [(edges[g], summary.pop(g)) for g in children[c] if g in summary]
        row_msgs = [causal_msg.pop(g) for g in children[c] if g in causal_msg]
        m, a = _visit(prob, c, prods, coefs, plain, row_msgs, up)
        if up is None:
            return finish(m.transpose(-1, -2), prob)  # type: ignore[union-attr]
        if up.causal is None:
            summary[c] = a  # type: ignore[assignment]
        else:
            causal_msg[c] = _causal_edge(prob, up, feats, coefs, m.transpose(-1, -2), block, chunk)  # type: ignore[union-attr]
    raise AssertionError("the root x1 is always visited last")  # pragma: no cover


def _causal_edge(prob: Problem, e: _Edge, feats: Features, coefs: dict, m_c: torch.Tensor,
                 block: int, chunk: int) -> torch.Tensor:
    u, c = e.parent, e.child
    fu: Callable[[torch.Tensor], torch.Tensor]
    fc: Callable[[torch.Tensor], torch.Tensor]
    if e.logit:
        fu = fc = feats
        coef, pair = coefs[e.coeffs], _poly_pair(e.coeffs, prob.scale)
    else:
        fu = fc = _ones_features
        coef, pair = torch.ones(1, dtype=prob.dtype, device=prob.device), _ones_pair
    return prefix_message(fu, fc, coef, prob.q[u], prob.q[c], m_c, prob.n(u), prob.n(c), block,  # type: ignore[arg-type]
                          reverse=(e.causal == "suffix"), chunk=chunk, pair=pair)
