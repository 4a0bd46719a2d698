"""Tree-attention by message passing (DESIGN §2), quadratic time.

Root the factor forest at x1 (other components hang under x1 by a *zero edge*: logits 0, only
masks/causality). Leaves first, for each edge (parent u, child c)::

    L      = s * Q_u Q_c^T + logZ_c        (child's subtree log-mass as a per-key bias; masks -inf)
    logZ_u += logsumexp_rows(L)
    M_u    *= softmax(L) @ M_c              (M_c = V_c * prod of c's incoming messages)

The output is ``M_1`` (rows with no admissible tuple are 0). Each edge is one attention pass with
a key bias; :mod:`polyattn.ops.edge` provides the kernel (fused flash attention when possible).
"""

from __future__ import annotations

import torch

from ..planning import Plan
from .edge import edge_attention
from .inputs import Problem

__all__ = ["tree_attention"]


def tree_attention(prob: Problem, plan: Plan) -> torch.Tensor:
    parent = plan.parent_map()
    logz: dict[int, torch.Tensor | None] = {}
    msg: dict[int, torch.Tensor | None] = {}
    for c in plan.order:
        u = parent[c]
        # finalise c: its value times the product of its children's messages (already folded in)
        m_c = msg.get(c)
        v_c = prob.v[c]
        if v_c is not None:
            m_c = v_c if m_c is None else m_c * v_c
        has_logits = (min(u, c), max(u, c)) in set(prob.spec.polynomial.monomials)
        causal = None
        if (u, c) in prob.causal:
            causal = "child<=parent"
        elif (c, u) in prob.causal:
            causal = "parent<=child"
        key = (min(u, c), max(u, c))
        mask = prob.masks.get(key)
        if mask is not None and u > c:
            mask = mask.transpose(-1, -2)
        out, lse = edge_attention(
            prob.q[u] if has_logits else None,
            prob.q[c],
            m_c,
            logz.get(c),
            mask=mask,
            causal=causal,
            scale=prob.scale,
            n_parent=prob.n(u),
        )
        logz[u] = lse if logz.get(u) is None else logz[u] + lse
        if out is not None:
            msg[u] = out if msg.get(u) is None else msg[u] * out
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
