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
from .edge import edge_attention
from .inputs import Problem

__all__ = ["tree_attention"]


def tree_attention(prob: Problem, plan: Plan) -> torch.Tensor:
    detail = plan.detail
    assert isinstance(detail, TreeDetail)
    logz: dict[int, torch.Tensor] = {}
    msg: dict[int, torch.Tensor] = {}
    for e in detail.edges:
        u, c = e.parent, e.child
        # finalise c: its value times the product of its children's messages (already folded in)
        m_c = msg.get(c)
        v_c = prob.v[c]
        if v_c is not None:
            m_c = v_c if m_c is None else m_c * v_c
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
    lz = logz.get(1)
    m1 = msg.get(1)
    n1 = prob.n(1)
    if m1 is None:
        base = torch.ones((), dtype=prob.dtype, device=prob.device)
        m1 = base.expand(*prob.batch_shape, n1, prob.dv)
    if lz is not None:
        ok = torch.isfinite(lz)
        if not bool(ok.all()):  # skip a full pass over the output in the common all-finite case
            m1 = torch.where(ok.unsqueeze(-1), m1, torch.zeros_like(m1))
    return m1.expand(*prob.batch_shape, n1, m1.shape[-1])
