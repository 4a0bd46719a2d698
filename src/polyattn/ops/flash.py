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

from .nodiff import mark_no_double_backward

__all__ = ["flash_edge", "BIAS_FLOOR"]

#: stands in for a ``-inf`` key bias inside the kernel (finite, so the backward never multiplies 0 by inf)
BIAS_FLOOR = -1.0e30

_FWD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_BWD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


def _pad(x: torch.Tensor, width: int) -> torch.Tensor:
    extra = width - x.shape[-1]
    return F.pad(x, (0, extra)) if extra > 0 else x


def _augment(q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor, scale: float, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``q' = [s q, 1, 0...]``, ``k' = [k, b, 0...]`` of head size ``width`` (one allocation each;
    out-of-place, so that it also runs on torch.func's batched tensors)."""
    qa = torch.cat([q * scale, torch.ones_like(q[..., :1])], dim=-1)
    ka = torch.cat([k, bias.unsqueeze(-1).to(k.dtype)], dim=-1)
    return _pad(qa, width), _pad(ka, width)


def _value_operand(v: torch.Tensor | None, k: torch.Tensor, width: int) -> torch.Tensor:
    """``v`` zero-padded to head size ``width`` (zeros when the edge carries no value)."""
    if v is None:
        return k.new_zeros((*k.shape[:-1], width))
    return _pad(v, width) if v.shape[-1] < width else v.contiguous()


def _unit(x: torch.Tensor) -> torch.Tensor:
    """The op reads the head dim as contiguous: any other last-dim stride (a transposed, sliced or
    expanded view) gives silently wrong results, so such views are copied; everything else (expanded
    batch or sequence dims, permuted leading dims) is passed as it is."""
    return x if x.stride(-1) == 1 or x.shape[-1] == 1 else x.contiguous()


DOUBLE_BACKWARD = (
    "double backward through a fused flash tree edge (method='tree' on CPU float32/float64) is "
    "not supported: its backward is one fused ATen op without a derivative. Methods that support "
    "double backward: 'elimination' (generic steps), 'reference', and 'tree' on other devices"
)


class _FlashEdge(torch.autograd.Function):
    """``(out_full, lse)``: ``out_full`` is the op's output at its padded head width."""

    @staticmethod
    def forward(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor | None,
        bias: torch.Tensor | None,
        attn_mask: torch.Tensor | None,
        is_causal: bool,
        scale: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        q, k = _unit(q), _unit(k)
        d = q.shape[-1]
        dv = v.shape[-1] if v is not None else 0
        if bias is not None and attn_mask is None:
            # The bias enters as a broadcast additive mask [B, 1, 1, Lk]: no augmented copies of q
            # and k in the forward (their build costs ~10% of the call at n = 1024). The backward
            # augments, because the op returns no gradient for its mask.
            width = max(d, dv, 1)
            va = _value_operand(v, k, width)
            out, lse = _FWD(
                _pad(q, width), _pad(k, width), va, 0.0, is_causal,
                attn_mask=bias.unsqueeze(-2).to(q.dtype), scale=scale,
            )[:2]
            return out, lse
        width = max(d + (bias is not None), dv, 1)
        if bias is not None:
            qa, ka = _augment(q, k, bias, scale, width)
            op_scale = 1.0
        else:
            qa, ka, op_scale = _pad(q, width), _pad(k, width), scale
        va = _value_operand(v, k, width)
        out, lse = _FWD(qa, ka, va, 0.0, is_causal, attn_mask=attn_mask, scale=op_scale)[:2]
        return out, lse

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # noqa: ANN001
        q, k, v, bias, attn_mask, is_causal, scale = inputs
        out, lse = output
        ctx.save_for_backward(q, k, v, bias, attn_mask, out, lse)
        ctx.meta = (is_causal, scale)
        ctx.set_materialize_grads(False)
        ctx.mark_non_differentiable(out) if v is None else None

    @staticmethod
    def backward(ctx, g_full: torch.Tensor | None, g_lse: torch.Tensor | None):  # noqa: ANN001, ANN205
        saved = ctx.saved_tensors
        anchor = saved[0]
        # This backward is one fused op without a derivative: compute on detached tensors.
        q, k, v, bias, attn_mask, out, lse = (x.detach() if x is not None else None for x in saved)
        assert q is not None and k is not None and out is not None and lse is not None
        is_causal, scale = ctx.meta
        q, k = _unit(q), _unit(k)
        d = q.shape[-1]
        dv = v.shape[-1] if v is not None else 0
        hb = bias is not None
        width = max(d + hb, dv, 1)
        if bias is not None:
            qa, ka = _augment(q, k, bias, scale, width)
            op_scale = 1.0
        else:
            qa, ka, op_scale = _pad(q, width), _pad(k, width), scale
        va = _value_operand(v, k, width)
        out = _pad(out, width)[..., :width]
        g_out = None if g_full is None or v is None else g_full[..., :dv]
        if g_out is None:
            g_out = torch.zeros((*out.shape[:-1], dv), dtype=out.dtype, device=out.device)
        if g_lse is not None:
            if width == dv:
                # No spare zero column in V: widen everything by one (zeros change no logit).
                width += 1
                qa, ka, va = _pad(qa, width), _pad(ka, width), _pad(va, width)
            # out-of-place (torch.func's batched tensors refuse slice writes into new tensors)
            o = torch.cat([out[..., :dv], -g_lse.to(out.dtype).unsqueeze(-1)], dim=-1)
            g = torch.cat([g_out.to(out.dtype), torch.ones_like(o[..., :1])], dim=-1)
            out, g = _pad(o, width), _pad(g, width)
        else:
            g = _pad(g_out.to(out.dtype), width).contiguous()
            out = out.contiguous()
        dq, dk, dva = _BWD(
            g, qa, ka, va, out, lse, 0.0, is_causal, attn_mask=attn_mask, scale=op_scale
        )
        gq = dq[..., :d] * scale if hb else dq[..., :d]
        gk = dk[..., :d]
        gb = dk[..., d] if hb else None
        gv = dva[..., :dv] if (v is not None and ctx.needs_input_grad[2]) else None
        gq, gk, gv, gb = mark_no_double_backward((gq, gk, gv, gb), anchor, DOUBLE_BACKWARD)
        return gq, gk, gv, gb, None, None, None

    @staticmethod
    def vmap(info, in_dims, q, k, v, bias, attn_mask, is_causal, scale):  # noqa: ANN001, ANN205
        """torch.func.vmap: fold the vmapped dim into the batch dim ``B`` (the op is batched over B)."""
        size = info.batch_size

        def fold(x: torch.Tensor | None, dim: int | None, lead: int) -> torch.Tensor | None:
            # x is [B, ...] (or a 2-D mask [Lq, Lk] when lead == 0); returns [V*B, ...]
            if x is None:
                return None
            x = x.unsqueeze(0).expand(size, *x.shape) if dim is None else x.movedim(dim, 0)
            if lead == 0:  # shared 2-D mask -> [V, 1, Lq, Lk]
                return x.unsqueeze(1)
            return x.reshape(-1, *x.shape[2:])

        B = next(x.shape[0] if dim is None else x.shape[1 if dim == 0 else 0]
                 for x, dim in ((q, in_dims[0]), (k, in_dims[1])))
        qf, kf = fold(q, in_dims[0], 1), fold(k, in_dims[1], 1)
        vf = fold(v, in_dims[2], 1)
        bf = fold(bias, in_dims[3], 1)
        mf = None
        if attn_mask is not None:
            mdim = attn_mask.dim() - (in_dims[4] is not None)
            if mdim == 2:
                m = fold(attn_mask, in_dims[4], 0)  # [V, 1, Lq, Lk]
                mf = m.unsqueeze(1).expand(size, B, *m.shape[1:]).reshape(-1, *m.shape[1:])
            else:
                mf = fold(attn_mask, in_dims[4], 1)
        out, lse = _FlashEdge.apply(qf, kf, vf, bf, mf, is_causal, scale)
        return (out.reshape(size, -1, *out.shape[1:]), lse.reshape(size, -1, *lse.shape[1:])), (0, 0)


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
    out, lse = _FlashEdge.apply(q, k, v, bias, attn_mask, is_causal, scale)
    return (out[..., : v.shape[-1]] if v is not None else None), lse
