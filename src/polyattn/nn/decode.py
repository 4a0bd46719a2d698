r"""Incremental forward of :class:`~polyattn.PolyAttention` with a :class:`~polyattn.DecodeCache`,
and key-padding masks.

``layer(x_new, cache=cache, token_mask=m)`` (``x_new``: ``[B, k, dim]``, ``m``: ``[B, k]`` bool, True =
real token) appends ``k`` positions to the cache and returns their outputs ``[B, k, dim]``, equal to
rows ``P..P+k-1`` of the full causal forward over all ``P + k`` positions (``P = len(cache)``):

* empty cache and ``k > 1`` (prefill): the planned tree kernels (fused flash edges) run on the
  prompt once, ``O(k^2 d)`` per edge, and every non-query variable's per-position messages are
  stored (:func:`polyattn.ops.decode.prefill_messages`);
* otherwise (one token, or a chunk after a prefill): one attention row per new position and edge
  over the cached rows, ``O(k (P + k) d)`` per edge (:func:`polyattn.ops.decode.extend_messages`).

Padding: a ``False`` entry of ``token_mask`` marks a pad slot; pads are excluded from every tuple
(no variable other than the query may sit on one), so any padding pattern works, left or right. A
pad slot's own output row is computed like any other (zeros when it has no admissible tuple) and
is meant to be ignored. :func:`polyattn.key_padding_masks` gives the equivalent ``mask=`` of a full forward.

Only cacheable (polynomial, causal) pairs are accepted (:func:`polyattn.planning.decode.decode_support`
says which and why); cross-attention contexts and pair masks cannot be combined with a cache.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from functools import lru_cache
from typing import TYPE_CHECKING

import torch

from ..errors import MethodError, PolyAttentionError
from ..functional import key_padding_masks
from ..ops import prepare
from ..ops.decode import extend_messages, prefill_messages
from ..ops.inputs import check_scale, compute_dtype_for
from ..ops.placement import apply_root_values
from ..planning import DEFAULT_MEMORY_BUDGET, make_plan, normalize_causal
from ..planning.decode import CACHEABLE_METHODS, DecodePlan, plan_decode
from ..polynomial import AttentionPolynomial
from .cache import DecodeCache
from .token_mask import token_mask_or_all

if TYPE_CHECKING:
    from .attention import PolyAttention

__all__ = ["attention_step", "layer_decode_plan"]


@lru_cache(maxsize=256)
def _plan(p: AttentionPolynomial, causal: str | bool, has_values: tuple[bool, ...], root: tuple[int, ...]) -> DecodePlan:
    return plan_decode(p, causal, has_values=has_values, root_values=root)


#: per layer: (the attributes the plan depends on, its DecodePlan, its signature string); saves
#: re-hashing the polynomial and re-formatting the signature on every decoded token
_LAYER_INFO: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _layer_info(layer: PolyAttention) -> tuple[DecodePlan, str]:
    key = (id(layer.polynomial), layer.causal, layer.valueless, tuple(layer._root_vars), layer.heads,
           layer.dim_head, layer.value_dim_head)
    hit = _LAYER_INFO.get(layer)
    if hit is not None and hit[0] == key:
        return hit[1], hit[2]
    hv = tuple(j in layer._value_vars for j in range(2, layer.t + 1))
    plan = _plan(layer.polynomial, normalize_causal(layer.causal), hv, tuple(layer._root_vars))
    sig = (
        f"'{layer.polynomial}', causal={normalize_causal(layer.causal)!r}, heads={layer.heads}, "
        f"dim_head={layer.dim_head}, value_dim_head={layer.value_dim_head}, "
        f"valueless={list(layer.valueless)}, root={list(layer._root_vars)}"
    )
    _LAYER_INFO[layer] = (key, plan, sig)
    return plan, sig


def layer_decode_plan(layer: PolyAttention) -> DecodePlan:
    """The :class:`DecodePlan` of ``layer`` (raises, saying why, when it cannot be cached)."""
    return _layer_info(layer)[0]


def attention_step(
    layer: PolyAttention,
    x: torch.Tensor,
    cache: DecodeCache | None,
    *,
    token_mask: torch.Tensor | None = None,
    contexts: object = None,
    mask: Mapping[tuple[int, int], torch.Tensor] | None = None,
) -> torch.Tensor:
    """``layer(x, cache=..., token_mask=...)``: see the module docstring. ``x``: ``[B, k, dim]``."""
    if x.dim() != 3 or x.shape[-1] != layer.dim:
        raise PolyAttentionError(f"x must be [batch, seq, dim={layer.dim}], got shape {tuple(x.shape)}")
    b, k, _ = x.shape
    if not isinstance(cache, DecodeCache):
        raise PolyAttentionError(f"cache must be a polyattn.DecodeCache, got {type(cache).__name__}")
    if contexts is not None or mask is not None:
        raise PolyAttentionError(
            "a DecodeCache cannot be combined with contexts= or mask=: the cache decodes causal "
            "self-attention; mark padding with token_mask= instead"
        )
    if layer.method not in CACHEABLE_METHODS:
        raise MethodError(
            f"the DecodeCache runs exact tree message passing; this layer asks for method="
            f"{layer.method!r}, which it does not reproduce. Use method='auto' or 'tree' for decoding"
        )
    plan, signature = _layer_info(layer)
    tm = token_mask_or_all(token_mask, b, k, x.device, "new tokens")
    cache.bind(signature, b)
    dtype = compute_dtype_for(x.dtype)
    q = {j: _as(layer._split(lin(x), layer.dim_head), dtype) for j, lin in enumerate(layer.to_q, 1)}
    v = {j: _as(layer._split(lin(x), layer.value_dim_head), dtype) for j, lin in zip(layer._value_vars, layer.to_v)}
    root = [v[j] for j in plan.root_values]
    v_kernel = {j: (v.get(j) if j not in plan.root_values else None) for j in range(2, layer.t + 1)}
    old = cache.length
    try:
        if old == 0 and k > 1:
            out = _prefill(layer, plan, cache, q, v_kernel, tm)
        else:
            cache.begin(tm)
            n = cache.length
            allowed = None
            if k > 1 or cache.padded:
                valid = cache.valid
                assert valid is not None
                rows = torch.arange(old, n, device=x.device).unsqueeze(-1)
                causal = torch.arange(n, device=x.device) <= rows  # [k, n]: j <= P + i
                allowed = causal & valid[:, None, None, :]  # [B, 1, k, n]
            out = extend_messages(plan, cache, q, v_kernel, allowed=allowed, scale=_scale(layer))
    except BaseException:
        cache.rollback(old)
        raise
    out = apply_root_values(out, root, out.dtype)  # root placement: values at the query position
    out = _as(out, x.dtype)
    out = out.transpose(1, 2).reshape(b, k, layer.heads * layer.value_dim_head)
    return layer.dropout(layer.to_out(out))


def _as(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return x if x.dtype == dtype else x.to(dtype)


def _scale(layer: PolyAttention) -> float:
    return check_scale(layer.scale, layer.dim_head)  # the full forward's default, bit for bit


def _prefill(
    layer: PolyAttention,
    plan: DecodePlan,
    cache: DecodeCache,
    q: dict[int, torch.Tensor],
    v_kernel: dict[int, torch.Tensor | None],
    tm: torch.Tensor,
) -> torch.Tensor:
    masks = None if bool(tm.all()) else key_padding_masks(layer.polynomial, tm)  # [B, 1, n, n] views
    prob = prepare(
        layer.polynomial, [q[j] for j in range(1, layer.t + 1)], [v_kernel[j] for j in range(2, layer.t + 1)],
        scale=_scale(layer), causal=layer.causal, mask=masks,
    )
    tree_plan = make_plan(prob.spec, "tree", DEFAULT_MEMORY_BUDGET)
    out, final, logz = prefill_messages(prob, tree_plan)
    cache.begin(tm)
    for var in plan.vars:
        c = var.var
        cache.append(
            c,
            _full(q[c], prob) if var.key else None,
            _full(final[c], prob) if var.message else None,
            _full(logz[c], prob, vec=True) if var.logz else None,
        )
    return out


def _full(x: torch.Tensor | None, prob: object, vec: bool = False) -> torch.Tensor:
    """Rows broadcast to the call's batch shape (messages may carry broadcast batch dims)."""
    assert x is not None
    batch = prob.batch_shape  # type: ignore[attr-defined]
    tail = x.shape[-1:] if vec else x.shape[-2:]
    return x.expand(*batch, *tail)
