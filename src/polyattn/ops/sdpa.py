"""``x1*x2``: a single :func:`torch.nn.functional.scaled_dot_product_attention` call."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..planning import Plan, SdpaDetail
from . import trace
from .inputs import Problem

__all__ = ["sdpa_attention"]


def sdpa_attention(prob: Problem, plan: Plan) -> torch.Tensor:
    q, k = prob.q[1], prob.q[2]
    assert q is not None and k is not None
    v = prob.v[2]
    trace.emit("sdpa")
    if v is None:
        v = torch.ones((), dtype=prob.dtype, device=prob.device).expand(*k.shape[:-1], 1)
    detail = plan.detail
    assert isinstance(detail, SdpaDetail)
    mask = prob.pair_mask(1, 2) if detail.masked else None
    shape = prob.batch_shape
    q = q.expand(*shape, *q.shape[-2:])
    k = k.expand(*shape, *k.shape[-2:])
    v = v.expand(*shape, *v.shape[-2:])
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=detail.is_causal, scale=prob.scale)
    # The NaN rule: SDPA's fused CPU kernel returns 0 for a query row whose logits are all NaN,
    # i.e. a non-finite query or no finite admissible key. Such rows are NaN (O(n d) to find).
    good = torch.isfinite(k.detach()).all(-1)  # [..., n2]
    if mask is not None:
        has = (mask & good.unsqueeze(-2)).any(-1)
    elif detail.is_causal:  # row i admits keys j <= i (top-left aligned)
        pre = good.to(torch.int32).cummax(-1).values.bool()
        has = pre.index_select(-1, torch.arange(q.shape[-2], device=q.device).clamp_(max=k.shape[-2] - 1))
    else:
        has = good.any(-1, keepdim=True)
    bad = ~torch.isfinite(q.detach()).all(-1) | ~has
    out = torch.where(bad.unsqueeze(-1), torch.full((), float("nan"), dtype=out.dtype, device=out.device), out)
    if mask is None:
        return out
    # A row that may attend to nothing is 0 by contract (SDPA versions differ: NaN or 0).
    ok = mask.any(-1, keepdim=True)
    return torch.where(ok, out, torch.zeros_like(out))
