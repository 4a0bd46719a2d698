"""One tree edge: attention from the parent's rows over the child's rows with a per-key bias.

``edge_attention(q_u, q_c, v_c, bias_c, mask, causal, scale)`` returns ``(out, lse)``::

    L[i, j] = scale * q_u[i] . q_c[j] + bias_c[j]      (-inf where masked; q_u None means L = bias)
    lse[i]  = logsumexp_j L[i, j]                      (-inf for a row with nothing admissible)
    out[i]  = softmax_j(L[i]) @ v_c                    (0 for such a row; None when v_c is None)

This module holds the plain, materialising implementation (chunked over parent rows so memory is
bounded); it is exact and differentiable through both outputs.
"""

from __future__ import annotations

import torch

from .common import NEG_INF

__all__ = ["edge_attention", "EDGE_ROW_CHUNK_ELEMS"]

#: parent-row chunks keep the materialised logits below this many elements
EDGE_ROW_CHUNK_ELEMS = 2**24


def _causal_bool(kind: str, nu: int, nc: int, device: torch.device) -> torch.Tensor:
    ones = torch.ones(nu, nc, dtype=torch.bool, device=device)
    return ones.tril() if kind == "child<=parent" else ones.triu()


def edge_attention(
    q_u: torch.Tensor | None,
    q_c: torch.Tensor,
    v_c: torch.Tensor | None,
    bias_c: torch.Tensor | None,
    *,
    mask: torch.Tensor | None = None,
    causal: str | None = None,
    scale: float,
    n_parent: int,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    nc = q_c.shape[-2]
    if causal is not None:
        cm = _causal_bool(causal, n_parent, nc, q_c.device)
        mask = cm if mask is None else (mask & cm)
    if q_u is None and mask is None:
        # Zero edge without constraints: the same weights for every parent row.
        logits = bias_c if bias_c is not None else torch.zeros(q_c.shape[:-1], dtype=q_c.dtype, device=q_c.device)
        lse = torch.logsumexp(logits, dim=-1, keepdim=True)
        ok = torch.isfinite(lse)
        safe = torch.where(ok, logits, torch.zeros_like(logits))
        lse_s = torch.logsumexp(safe, dim=-1, keepdim=True)
        out = None
        if v_c is not None:
            w = torch.exp(safe - lse_s)
            o = w.unsqueeze(-2) @ v_c  # [..., 1, dv]
            out = torch.where(ok.unsqueeze(-1), o, torch.zeros_like(o))
            out = out.expand(*out.shape[:-2], n_parent, out.shape[-1])
        lse = torch.where(ok, lse_s, torch.full_like(lse_s, NEG_INF)).expand(*lse.shape[:-1], n_parent)
        return out, lse
    rows = max(1, EDGE_ROW_CHUNK_ELEMS // max(1, nc))
    outs, lses = [], []
    for r0 in range(0, n_parent, rows):
        sl = slice(r0, min(n_parent, r0 + rows))
        if q_u is not None:
            logits = torch.matmul(q_u[..., sl, :], q_c.transpose(-1, -2)) * scale
        else:
            logits = torch.zeros((sl.stop - sl.start, nc), dtype=q_c.dtype, device=q_c.device)
        if bias_c is not None:
            logits = logits + bias_c.unsqueeze(-2)
        if mask is not None:
            logits = logits.masked_fill(~mask[..., sl, :], NEG_INF)
        mx = logits.detach().amax(-1, keepdim=True)
        ok = torch.isfinite(mx)
        safe = torch.where(ok, logits, torch.zeros_like(logits))
        lse = torch.logsumexp(safe, dim=-1)
        if v_c is not None:
            p = torch.exp(safe - lse.unsqueeze(-1))
            o = torch.matmul(p, v_c)
            outs.append(torch.where(ok, o, torch.zeros_like(o)))
        lses.append(torch.where(ok.squeeze(-1), lse, torch.full_like(lse, NEG_INF)))
    lse = torch.cat(lses, dim=-1) if len(lses) > 1 else lses[0]
    out = (torch.cat(outs, dim=-2) if len(outs) > 1 else outs[0]) if v_c is not None else None
    return out, lse
