"""The one validation of a ``token_mask`` (key padding of a layer's or model's input tokens).

``token_mask`` is a bool tensor ``[batch, n]``, True for a real token and False for padding, as in
:meth:`PolyAttention.forward`, :meth:`PolyTransformer.forward`, :meth:`PolyTransformer.generate`
and the incremental decoder. Every entry point checks it here, so the rule and the message are the same.
"""

from __future__ import annotations

import torch

from ..errors import PolyAttentionError

__all__ = ["check_token_mask", "token_mask_or_all"]


def check_token_mask(token_mask: object, batch: int, n: int, what: str = "seq") -> torch.Tensor:
    """``token_mask`` itself when it is a bool tensor ``[batch, n]``; else a
    :class:`PolyAttentionError` naming the expected and the given dtype and shape (``what`` names
    the second dim in the message)."""
    if not isinstance(token_mask, torch.Tensor) or token_mask.dtype != torch.bool or tuple(token_mask.shape) != (batch, n):
        raise PolyAttentionError(
            f"token_mask must be a bool tensor [batch={batch}, {what}={n}] (True = real token, False = padding), "
            f"got {getattr(token_mask, 'dtype', type(token_mask).__name__)} {list(getattr(token_mask, 'shape', []))}"
        )
    return token_mask


def token_mask_or_all(token_mask: object, batch: int, n: int, device: torch.device, what: str = "seq") -> torch.Tensor:
    """The checked mask on ``device``, or all True (every token real) when ``token_mask`` is None."""
    if token_mask is None:
        return torch.ones(batch, n, dtype=torch.bool, device=device)
    return check_token_mask(token_mask, batch, n, what).to(device)
