"""``x1*x2``: a single :func:`torch.nn.functional.scaled_dot_product_attention` call."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..planning import Plan
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
    mask = prob.pair_mask(1, 2)
    shape = prob.batch_shape
    q = q.expand(*shape, *q.shape[-2:])
    k = k.expand(*shape, *k.shape[-2:])
    v = v.expand(*shape, *v.shape[-2:])
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=prob.scale)
    # The NaN rule: SDPA's fused CPU kernel returns 0 for a query row whose logits are all NaN,
    # i.e. a non-finite query or no finite admissible key. Such rows are NaN (O(n d) to find).
    good = torch.isfinite(k.detach()).all(-1)
    allowed = good.unsqueeze(-2) if mask is None else (mask & good.unsqueeze(-2))
    bad = ~torch.isfinite(q.detach()).all(-1, keepdim=True) | ~allowed.any(-1, keepdim=True)
    out = torch.where(bad, torch.full((), float("nan"), dtype=out.dtype, device=out.device), out)
    if mask is None:
        return out
    # A row that may attend to nothing is 0 by contract (SDPA versions differ: NaN or 0).
    ok = mask.any(-1, keepdim=True)
    return torch.where(ok, out, torch.zeros_like(out))
