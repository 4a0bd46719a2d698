"""One tree edge: attention from the parent's rows over the child's rows with a per-key bias.

``edge_attention(q_u, q_c, v_c, bias_c, mask, causal, scale)`` returns ``(out, lse)``::

    L[i, j] = scale * q_u[i] . q_c[j] + bias_c[j]      (-inf where masked; q_u None means L = bias)
    lse[i]  = logsumexp_j L[i, j]                      (-inf for a row with nothing admissible)
    out[i]  = softmax_j(L[i]) @ v_c                    (0 for such a row; None when v_c is None)

The implementation and the handling of causality are the plan's (:class:`EdgePlan`, chosen by
:mod:`polyattn.planning.capability` from the device type and dtype); this module executes them:

* ``flash`` (CPU, float32/float64, edges with logits): one flash-attention call per edge through
  :mod:`polyattn.ops.flash`, ``O((n_u + n_c) * (d + dv))`` memory in forward and backward. Causal
  edges use the kernel's ``is_causal`` (``child<=parent`` directly; ``parent<=child`` by reversing
  both sequences when ``n_u == n_c``) or a triangular mask; a pair mask is passed as an additive
  mask. Rows with no admissible key are found exactly in ``O(n)`` (or from the mask) and set to
  ``out = 0, lse = -inf``.
* ``materialised`` (other devices/dtypes, constrained zero edges): logits in chunks of the plan's
  ``row_chunk`` parent rows; exact and differentiable through both outputs.
* ``broadcast`` (zero edge without constraints): one weight vector shared by every parent row.
"""

from __future__ import annotations

import torch

from ..planning import EdgeCausal, EdgeImpl, EdgePlan
from . import trace
from .common import NEG_INF, compact_rows
from .flash import BIAS_FLOOR, flash_edge

__all__ = ["edge_attention"]


def _causal_bool(kind: str, nu: int, nc: int, device: torch.device) -> torch.Tensor:
    ones = torch.ones(nu, nc, dtype=torch.bool, device=device)
    return ones.tril() if kind == "child<=parent" else ones.triu()


def edge_attention(
    edge: EdgePlan,
    q_u: torch.Tensor | None,
    q_c: torch.Tensor,
    v_c: torch.Tensor | None,
    bias_c: torch.Tensor | None,
    *,
    mask: torch.Tensor | None = None,
    scale: float,
    n_parent: int,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Run one planned edge. ``q_u`` is ``None`` for a zero edge (``edge.logits`` False)."""
    if edge.impl == EdgeImpl.FLASH:
        assert q_u is not None
        trace.emit("edge", parent=edge.parent, child=edge.child, impl=str(edge.impl), causal_via=str(edge.causal_via))
        return _fused_edge(q_u, q_c, v_c, bias_c, mask=mask, causal=edge.causal, via=edge.causal_via, scale=scale)
    if edge.impl == EdgeImpl.BROADCAST:
        trace.emit("edge", parent=edge.parent, child=edge.child, impl=str(edge.impl), causal_via=str(edge.causal_via))
        return _broadcast_edge(q_c, v_c, bias_c, n_parent=n_parent)
    return _materialised_edge(edge, q_u, q_c, v_c, bias_c, mask=mask, scale=scale, n_parent=n_parent)


def _flat(x: torch.Tensor, batch: torch.Size, trailing: int) -> torch.Tensor:
    """``[..., *trailing]`` broadcast to ``batch`` and flattened to ``[B, 1, *trailing]``."""
    tail = x.shape[x.dim() - trailing :]
    x = x.expand(*batch, *tail)
    return x.reshape(-1, 1, *tail)


def _fused_edge(
    q_u: torch.Tensor,
    q_c: torch.Tensor,
    v_c: torch.Tensor | None,
    bias_c: torch.Tensor | None,
    *,
    mask: torch.Tensor | None,
    causal: str | None,
    via: EdgeCausal,
    scale: float,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    nu, nc = q_u.shape[-2], q_c.shape[-2]
    shapes = [q_u.shape[:-2], q_c.shape[:-2]]
    if v_c is not None:
        shapes.append(v_c.shape[:-2])
    if bias_c is not None:
        shapes.append(bias_c.shape[:-1])
    if mask is not None:
        shapes.append(mask.shape[:-2])
    batch = torch.broadcast_shapes(*shapes)
    is_causal = via in (EdgeCausal.KERNEL, EdgeCausal.FLIPPED)
    flip = via == EdgeCausal.FLIPPED  # j >= i becomes j' <= i' after reversing both sequences
    if via == EdgeCausal.MASK:
        assert causal is not None
        cm = _causal_bool(causal, nu, nc, q_c.device)
        mask = cm if mask is None else (mask & cm)
    q = _flat(q_u, batch, 2)
    k = _flat(q_c, batch, 2)
    v = _flat(v_c, batch, 2) if v_c is not None else None
    # Child rows without mass (log-mass -inf: structurally empty subtrees) become a finite floor
    # inside the kernel; NaN stays NaN so that it propagates (the NaN rule, docs/numerics.md).
    mass = None
    bias = None
    if bias_c is not None:
        mass = bias_c.detach() != NEG_INF
        bias = _flat(torch.where(mass, bias_c, torch.full_like(bias_c, BIAS_FLOOR)), batch, 1)
    if flip:
        q, k = q.flip(-2), k.flip(-2)
        v = v.flip(-2) if v is not None else None
        bias = bias.flip(-1) if bias is not None else None
    add_mask = None
    if mask is not None:
        mask = compact_rows(mask)  # a key mask (e.g. padding) stays one row: O(n) floats, not n^2
        zero = torch.zeros((), dtype=q.dtype, device=q.device)
        add = torch.where(mask, zero, torch.full_like(zero, NEG_INF))
        if all(s == 1 for s in mask.shape[:-2]):
            add_mask = add.reshape(mask.shape[-2:])
        else:
            add_mask = _flat(add, torch.broadcast_shapes(batch, mask.shape[:-2]), 2)
    out, lse = flash_edge(q, k, v, bias, attn_mask=add_mask, is_causal=is_causal, scale=scale)
    if flip:
        out = out.flip(-2) if out is not None else None
        lse = lse.flip(-1)
    lse = lse.reshape(*batch, nu)
    if out is not None:
        out = out.reshape(*batch, nu, out.shape[-1])
    # The NaN rule. ATen's flash kernel returns out = 0, lse = 0 for a row whose logits are all
    # NaN. A row's logits are all non-finite exactly when its query is non-finite or none of its
    # admissible keys (with mass) is finite: such a row is NaN (SDPA's own CPU path has the same
    # gap, see ops/sdpa.py). Found in O(n * d) (or from the mask), never from the logits.
    good = torch.isfinite(q_c.detach()).all(-1)
    if bias_c is not None:
        good = good & torch.isfinite(bias_c.detach())
    bad = ~torch.isfinite(q_u.detach()).all(-1) | _no_key(good, mask, is_causal, flip, nu, nc, q_c.device)
    nan = torch.full((), float("nan"), dtype=lse.dtype, device=lse.device)
    lse = torch.where(bad.expand(*batch, nu), nan, lse)
    if out is not None:
        out = torch.where(bad.expand(*batch, nu).unsqueeze(-1), nan.to(out.dtype), out)
    # Rows with no admissible key (all masked, or every admissible key without mass) are empty.
    if mask is not None or mass is not None:
        empty = _no_key(mass, mask, is_causal, flip, nu, nc, q_c.device).expand(*batch, nu)
        lse = torch.where(empty, torch.full_like(lse, NEG_INF), lse)
        if out is not None:
            out = torch.where(empty.unsqueeze(-1), torch.zeros_like(out), out)
    return out, lse


def _no_key(
    flag: torch.Tensor | None,
    mask: torch.Tensor | None,
    is_causal: bool,
    flip: bool,
    nu: int,
    nc: int,
    device: torch.device,
) -> torch.Tensor:
    """``[..., nu]`` bool: parent rows with no admissible child key whose ``flag`` ``[..., nc]`` is
    True (``None``: every key qualifies). ``mask`` already holds any causal triangle; otherwise a
    causal edge admits keys ``j <= i`` (or ``j >= i`` when ``flip``). ``O(n)`` without a mask."""
    if mask is not None:
        allowed = mask if flag is None else (mask & flag.unsqueeze(-2))
        return ~allowed.any(-1)
    if flag is None:
        return torch.zeros(nu, dtype=torch.bool, device=device)
    if is_causal:
        # row i sees keys j <= i (in the kernel frame): any qualifying key up to min(i, nc-1)
        has = flag.flip(-1) if flip else flag
        prefix = has.to(torch.int32).cummax(-1).values.bool()
        idx = torch.arange(nu, device=flag.device).clamp_(max=nc - 1)
        out = ~prefix.index_select(-1, idx)
        return out.flip(-1) if flip else out
    return (~flag.any(-1, keepdim=True)).expand(*flag.shape[:-1], nu)


def _broadcast_edge(
    q_c: torch.Tensor,
    v_c: torch.Tensor | None,
    bias_c: torch.Tensor | None,
    *,
    n_parent: int,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Zero edge without constraints: the same weights for every parent row."""
    logits = bias_c if bias_c is not None else torch.zeros(q_c.shape[:-1], dtype=q_c.dtype, device=q_c.device)
    lse = torch.logsumexp(logits, dim=-1, keepdim=True)
    ok = lse != NEG_INF  # NaN passes: it propagates
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


def _materialised_edge(
    edge: EdgePlan,
    q_u: torch.Tensor | None,
    q_c: torch.Tensor,
    v_c: torch.Tensor | None,
    bias_c: torch.Tensor | None,
    *,
    mask: torch.Tensor | None,
    scale: float,
    n_parent: int,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    nc = q_c.shape[-2]
    if edge.causal is not None:
        cm = _causal_bool(edge.causal, n_parent, nc, q_c.device)
        mask = cm if mask is None else (mask & cm)
    rows = edge.row_chunk
    trace.emit("edge", parent=edge.parent, child=edge.child, impl=str(edge.impl),
               causal_via=str(edge.causal_via), row_chunk=rows)
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
        ok = mx != NEG_INF  # NaN passes: it propagates
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
