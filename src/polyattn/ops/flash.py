"""Fused (flash) attention with a per-key bias and a differentiable log-sum-exp.

One tree edge is ``out = softmax(s * Q K^T + b) V`` together with ``lse = logsumexp_rows(...)``,
where ``b`` (the child's subtree log-mass) is a *per-key* bias. ATen's CPU flash-attention op
returns ``(out, lse)`` with ``O(n * d)`` memory, but it takes no key bias and needs Q, K and V of
one head size. Both are solved by augmenting the head dimension by one column::

    q' = [s * q, 1, 0...]    k' = [k, b, 0...]    v' = [v, 0...]     (op scale = 1)
    q'_i . k'_j = s * q_i . k_j + b_j

so the op's logits are exactly the biased logits and its ``lse`` is the edge's log-mass. Without a
pair mask the forward instead passes the bias as a broadcast ``[B, 1, 1, Lk]`` additive mask (same
logits, no augmented copies of ``q`` and ``k``); the backward always uses the augmented form,
because that is how the op yields the bias gradient.

Backward. With ``P = softmax(S)``, ``dP = dO V^T`` and ``D_i = sum_c dO_ic O_ic`` the kernel
computes ``dS = P * (dP - D)``. A gradient ``g`` on ``lse`` adds ``P_ij g_i`` to ``dS_ij``
(``d lse_i / d S_ij = P_ij``), i.e. ``dS = P * (dP - (D - g))``. The fold: give the backward op
an ``out`` whose spare (zero-value) column holds ``-g`` and a ``dO`` whose spare column holds 1;
then its row sum is ``D - g`` while ``dP`` is unchanged (that column of ``V`` is 0). From
``dq', dk', dv'``: ``dq = s * dq'[:d]``, ``dk = dk'[:d]``, ``db = dk'[d]`` (the bias column of
``q'`` is 1), ``dv = dv'[:dv]``. No ``n x n`` buffer exists in forward or backward.

``-inf`` biases (child rows with no admissible tuple) are replaced by :data:`BIAS_FLOOR`, a finite
value far below any attainable logit: ``-inf`` inside ``k'`` would turn ``dS @ K'`` into
``0 * inf = NaN``. Rows left with no admissible key are detected exactly by the caller
(:mod:`polyattn.ops.edge`) and overwritten with ``out = 0, lse = -inf``.

Tensors here are 4-D ``[B, 1, n, d]`` (the caller flattens batch dims). Time ``O(n_q n_k (d+dv))``,
memory ``O((n_q + n_k)(d + dv))``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["flash_edge", "BIAS_FLOOR"]

#: stands in for a ``-inf`` key bias inside the kernel (finite, so the backward never multiplies 0 by inf)
BIAS_FLOOR = -1.0e30

_FWD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_BWD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


def _pad(x: torch.Tensor, width: int) -> torch.Tensor:
    extra = width - x.shape[-1]
    return F.pad(x, (0, extra)) if extra > 0 else x


def _augment(q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor, scale: float, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``q' = [s q, 1, 0...]``, ``k' = [k, b, 0...]`` of head size ``width`` (one allocation each)."""
    d = q.shape[-1]
    qa = q.new_empty((*q.shape[:-1], width))
    torch.mul(q, scale, out=qa[..., :d])
    qa[..., d] = 1.0
    ka = k.new_empty((*k.shape[:-1], width))
    ka[..., :d] = k
    ka[..., d] = bias
    if width > d + 1:
        qa[..., d + 1 :] = 0.0
        ka[..., d + 1 :] = 0.0
    return qa, ka


def _value_operand(v: torch.Tensor | None, k: torch.Tensor, width: int) -> torch.Tensor:
    """``v`` zero-padded to head size ``width`` (zeros when the edge carries no value)."""
    if v is None:
        return k.new_zeros((*k.shape[:-1], width))
    if v.shape[-1] == width:
        return v.contiguous()
    va = v.new_empty((*v.shape[:-1], width))
    va[..., : v.shape[-1]] = v
    va[..., v.shape[-1] :] = 0.0
    return va


class _FlashEdge(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor | None,
        bias: torch.Tensor | None,
        attn_mask: torch.Tensor | None,
        is_causal: bool,
        scale: float,
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        d = q.shape[-1]
        dv = v.shape[-1] if v is not None else 0
        hb = bias is not None
        if bias is not None and attn_mask is None:
            # The bias enters as a broadcast additive mask [B, 1, 1, Lk]: no augmented copies of q
            # and k in the forward (their build costs ~10% of the call at n = 1024). The backward
            # augments, because the op returns no gradient for its mask.
            width = max(d, dv, 1)
            va = _value_operand(v, k, width)
            out, lse = _FWD(
                _pad(q, width), _pad(k, width), va, 0.0, is_causal,
                attn_mask=bias.unsqueeze(-2).to(q.dtype), scale=scale,
            )
            ctx.save_for_backward(q, k, va, out, lse, bias)
            ctx.meta = (d, dv, hb, is_causal, 1.0, scale, True)
            ctx.set_materialize_grads(False)
            return (out[..., :dv] if v is not None else None), lse
        width = max(d + hb, dv, 1)
        if bias is not None:
            qa, ka = _augment(q, k, bias, scale, width)
            op_scale = 1.0
        else:
            qa, ka, op_scale = _pad(q, width), _pad(k, width), scale
        va = _value_operand(v, k, width)
        out, lse = _FWD(qa, ka, va, 0.0, is_causal, attn_mask=attn_mask, scale=op_scale)
        ctx.save_for_backward(qa, ka, va, out, lse, attn_mask)
        ctx.meta = (d, dv, hb, is_causal, op_scale, scale, False)
        ctx.set_materialize_grads(False)
        return (out[..., :dv] if v is not None else None), lse

    @staticmethod
    def backward(ctx, g_out: torch.Tensor | None, g_lse: torch.Tensor | None):
        qa, ka, va, out, lse, attn_mask = ctx.saved_tensors
        d, dv, hb, is_causal, op_scale, scale, bias_as_mask = ctx.meta
        if bias_as_mask:
            # Rebuild the augmented operands the forward skipped; their logits equal the forward's.
            q, k, bias = qa, ka, attn_mask
            width = max(d + 1, dv, 1)
            qa, ka = _augment(q, k, bias, scale, width)
            va, out, attn_mask = _pad(va, width), _pad(out, width), None
        width = out.shape[-1]
        if g_out is None:
            g_out = torch.zeros((*out.shape[:-1], dv), dtype=out.dtype, device=out.device)
        if g_lse is not None:
            if width == dv:
                # No spare zero column in V: widen everything by one (zeros change no logit).
                width += 1
                qa, ka, va = _pad(qa, width), _pad(ka, width), _pad(va, width)
            o = out.new_empty((*out.shape[:-1], width))
            o[..., :dv] = out[..., :dv]
            o[..., dv] = -g_lse.to(out.dtype)
            g = out.new_empty((*out.shape[:-1], width))
            g[..., :dv] = g_out
            g[..., dv] = 1.0
            if width > dv + 1:
                o[..., dv + 1 :] = 0.0
                g[..., dv + 1 :] = 0.0
            out = o
        else:
            g = _pad(g_out.to(out.dtype), width).contiguous()
        dq, dk, dva = _BWD(
            g, qa, ka, va, out, lse, 0.0, is_causal, attn_mask=attn_mask, scale=op_scale
        )
        gq = dq[..., :d] * scale if hb else dq[..., :d]
        gk = dk[..., :d]
        gb = dk[..., d] if hb else None
        gv = dva[..., :dv] if ctx.needs_input_grad[2] else None
        return gq, gk, gv, gb, None, None, None


def flash_edge(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor | None,
    bias: torch.Tensor | None,
    *,
    attn_mask: torch.Tensor | None,
    is_causal: bool,
    scale: float,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """``softmax(scale * q k^T + bias + attn_mask) v`` and its row log-sum-exp, fused.

    Shapes: ``q [B, 1, Lq, d]``, ``k [B, 1, Lk, d]``, ``v [B, 1, Lk, dv]`` or None, ``bias [B, 1, Lk]``
    (finite; see :data:`BIAS_FLOOR`) or None, ``attn_mask`` additive float ``[Lq, Lk]`` or
    ``[B, 1, Lq, Lk]`` or None; ``is_causal`` masks ``j > i`` (top-left aligned). Returns
    ``(out [B, 1, Lq, dv] or None, lse [B, 1, Lq])``; rows with no admissible key come back with
    unspecified finite values, which the caller overwrites.
    """
    return _FlashEdge.apply(q, k, v, bias, attn_mask, is_causal, scale)
