"""Tree-attention by message passing (DESIGN §2), quadratic time.

Root the factor forest at x1 (other components hang under x1 by a *zero edge*: logits 0, only
masks/causality). Leaves first, for each edge (parent u, child c)::

    L      = s * Q_u Q_c^T + logZ_c        (child's subtree log-mass as a per-key bias; masks -inf)
    logZ_u += logsumexp_rows(L)
    M_u    *= softmax(L) @ M_c              (M_c = V_c * prod of c's incoming messages)

The output is ``M_1`` (rows with no admissible tuple are 0). The edges, their order, their
implementation and their causal handling are the plan's (:class:`~polyattn.planning.TreeDetail`);
:mod:`polyattn.ops.edge` runs each one.
"""

from __future__ import annotations

import torch

from ..planning import Plan, TreeDetail
from .common import NEG_INF, compact_rows, under_functorch
from .edge import _causal_bool, edge_attention
from .inputs import Problem

__all__ = ["tree_attention", "pass_messages", "finish_query"]


def tree_attention(prob: Problem, plan: Plan) -> torch.Tensor:
    detail = plan.detail
    assert isinstance(detail, TreeDetail)
    msg, logz, _ = pass_messages(prob, detail)
    return finish_query(prob, detail, msg.get(1), logz.get(1))


def pass_messages(
    prob: Problem, detail: TreeDetail
) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor], dict[int, torch.Tensor | None]]:
    """The edges in the plan's post-order: ``(messages {u: M_u}, log-masses {u: logZ_u}, final
    {c: V_c * prod of c's children's messages})``; ``final`` is what the decode cache keeps."""
    logz: dict[int, torch.Tensor] = {}
    msg: dict[int, torch.Tensor] = {}
    final: dict[int, torch.Tensor | None] = {}
    for e in detail.edges:
        u, c = e.parent, e.child
        # finalise c: its value times the product of its children's messages (already folded in)
        m_c = msg.get(c)
        v_c = prob.v[c]
        if v_c is not None:
            m_c = v_c if m_c is None else m_c * v_c
        final[c] = m_c
        mask = prob.masks.get((min(u, c), max(u, c))) if e.masked else None
        if mask is not None and u > c:
            mask = mask.transpose(-1, -2)
        q_c = prob.q[c]
        assert q_c is not None
        out, lse = edge_attention(
            e,
            prob.q[u] if e.logits else None,
            q_c,
            m_c,
            logz.get(c) if e.bias else None,
            mask=mask,
            scale=prob.scale,
            n_parent=prob.n(u),
        )
        logz[u] = lse if u not in logz else logz[u] + lse
        if out is not None:
            msg[u] = out if u not in msg else msg[u] * out
    return msg, logz, final


def finish_query(
    prob: Problem, detail: TreeDetail, m1: torch.Tensor | None, lz: torch.Tensor | None
) -> torch.Tensor:
    """The query's output ``[..., n1, dv]`` from its message and log-mass, with the NaN rule."""
    n1 = prob.n(1)
    if m1 is None:
        base = torch.ones((), dtype=prob.dtype, device=prob.device)
        m1 = base.expand(*prob.batch_shape, n1, prob.dv)
    if lz is None:
        return m1.expand(*prob.batch_shape, n1, m1.shape[-1])
    bad = (lz == NEG_INF) | lz.isnan()
    # Rows without an admissible tuple have logZ = -inf, so with every logZ finite (the usual case)
    # there is nothing to fix; under torch.func the test cannot branch on data.
    if under_functorch() or bool(bad.any()):
        # The NaN rule: a row is 0 only when no tuple is admissible under the masks and causality;
        # a row whose log-mass is -inf for any other reason (infinite inputs) is NaN, never 0.
        nan = torch.full((), float("nan"), dtype=m1.dtype, device=m1.device)
        m1 = torch.where(bad.unsqueeze(-1), nan, m1)
        nonempty = _admissible_rows(prob, detail)
        if nonempty is not None:
            m1 = torch.where(nonempty.unsqueeze(-1), m1, torch.zeros((), dtype=m1.dtype, device=m1.device))
    return m1.expand(*prob.batch_shape, n1, m1.shape[-1])


def _admissible_rows(prob: Problem, detail: TreeDetail) -> torch.Tensor | None:
    """``[..., n1]`` bool: the query rows with at least one admissible tuple, from the masks and the
    causal constraints alone (never from data); ``None`` when the tree has no constraint (every row
    is admissible). Booleans propagate leaves first like the messages: ``O(n_u n_c)`` per masked
    edge (the size of its mask), ``O(n)`` per causal or unconstrained edge."""
    if not any(e.masked or e.causal for e in detail.edges):
        return None
    ok: dict[int, torch.Tensor] = {}
    for e in detail.edges:
        u, c = e.parent, e.child
        nu, nc = prob.n(u), prob.n(c)
        child = ok.get(c, torch.ones(nc, dtype=torch.bool, device=prob.device))
        if e.masked:
            m = prob.masks[(min(u, c), max(u, c))]
            m = compact_rows(m.transpose(-1, -2) if u > c else m)
            if e.causal is not None:
                m = m & _causal_bool(e.causal, nu, nc, prob.device)
            has = (m & child.unsqueeze(-2)).any(-1)
            has = has.expand(*has.shape[:-1], nu)
        elif e.causal == "child<=parent":  # row i sees child positions j <= i
            pre = child.to(torch.int32).cummax(-1).values.bool()
            has = pre.index_select(-1, torch.arange(nu, device=prob.device).clamp_(max=nc - 1))
        elif e.causal == "parent<=child":  # row i sees child positions j >= i
            suf = child.flip(-1).to(torch.int32).cummax(-1).values.bool().flip(-1)
            idx = torch.arange(nu, device=prob.device)
            has = suf.index_select(-1, idx.clamp(max=nc - 1)) & (idx < nc)
        else:
            has = child.any(-1, keepdim=True).expand(*child.shape[:-1], nu)
        ok[u] = has if u not in ok else ok[u] & has
    return ok.get(1)
