r"""``DecodeCache``: the per-position messages of one causal tree-attention layer.

For every non-query variable ``c`` of the layer's polynomial the cache stores, per position and
head, what its parent's edge reads (see :class:`~polyattn.planning.decode.DecodePlan`): the key
``Q_c`` (``[B, H, n, d]``), the value product ``M_c`` (``[B, H, n, dv]``: ``V_c`` times the
messages of ``c``'s children) and the subtree log-mass ``logZ_c`` (``[B, H, n]``), plus which
positions are real tokens (``[B, n]`` bool; padding is excluded from every tuple). For ``x1*x2``
that is the ordinary KV cache. Memory: ``B * H * n * cached_floats`` elements
(:meth:`DecodePlan.cached_floats`), e.g. ``2 d + dv + 1`` per position for the path
``x1*x2 + x2*x3`` versus ``d + dv`` for ``x1*x2``.

Storage grows by doubling (amortised ``O(1)`` copies per token) and is written in place when
autograd is off (``torch.no_grad()``, the usual generation loop). With autograd on, rows are
concatenated instead, so gradients flow through cached messages into earlier tokens.

A cache belongs to one layer: it remembers the layer's signature (polynomial, causal mode, head
sizes, value placement) on first use and refuses another layer's. :meth:`state_dict` holds only
tensors, ints and strings, so ``torch.load(..., weights_only=True)`` restores it.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import PolyAttentionError

__all__ = ["DecodeCache"]

_FORMAT = 1
_KINDS = ("key", "message", "logz")


class _Rows:
    """Append-only rows along ``dim`` (``-2`` for ``[..., n, w]``, ``-1`` for ``[..., n]``)."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.data: torch.Tensor | None = None
        self.n = 0

    def view(self) -> torch.Tensor:
        assert self.data is not None
        return self.data.narrow(self.dim, 0, self.n)

    def append(self, x: torch.Tensor) -> None:
        k = x.shape[self.dim]
        if torch.is_grad_enabled():
            # functional: earlier views may be saved for backward, so never write in place
            self.data = x if self.data is None else torch.cat([self.view(), x], dim=self.dim)
        else:
            cap = 0 if self.data is None else self.data.shape[self.dim]
            if self.data is None or self.data.requires_grad or self.n + k > cap:
                self._grow(x, max(16, 2 * cap, 2 * (self.n + k)))
            assert self.data is not None
            self.data.narrow(self.dim, self.n, k).copy_(x)
        self.n += k

    def _grow(self, like: torch.Tensor, cap: int) -> None:
        shape = list(like.shape)
        shape[self.dim] = cap
        buf = like.new_empty(shape)
        if self.data is not None and self.n:
            buf.narrow(self.dim, 0, self.n).copy_(self.view().detach())
        self.data = buf

    def truncate(self, n: int) -> None:
        self.n = min(self.n, n)


class DecodeCache:
    """Incremental-decoding state of one :class:`~polyattn.PolyAttention` layer.

    >>> import torch, polyattn
    >>> layer = polyattn.PolyAttention(16, "x1*x2 + x2*x3", heads=2, causal="tree")
    >>> cache = polyattn.DecodeCache()
    >>> x = torch.randn(1, 5, 16)
    >>> y_prompt = layer(x[:, :4], cache=cache)        # prefill: messages of positions 0..3
    >>> y_next = layer(x[:, 4:], cache=cache)          # one token: O(n * d) per edge
    >>> torch.allclose(y_next, layer(x)[:, 4:], atol=1e-5)
    True

    ``len(cache)`` is the number of cached positions (padding included).
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget every position (and the layer signature)."""
        self.length = 0
        self.signature: str | None = None
        self._rows: dict[tuple[int, str], _Rows] = {}
        self._valid = _Rows(-1)
        self.padded = False  #: some cached position is padding (masks are then needed)

    def __len__(self) -> int:
        return self.length

    def __repr__(self) -> str:
        held = ", ".join(f"x{v}.{k}" for v, k in sorted(self._rows))
        return f"DecodeCache(length={self.length}, padded={self.padded}, stores=[{held}])"

    # -- used by the layer ------------------------------------------------------------------
    def bind(self, signature: str, batch: int) -> None:
        """Check (or record, when empty) the owning layer's signature and the batch size."""
        if self.signature is None:
            self.signature = signature
        elif self.signature != signature:
            raise PolyAttentionError(
                f"this DecodeCache was filled by a different layer ({self.signature}); this layer is "
                f"{signature}. Use one cache per layer, or cache.reset()"
            )
        if self.length and self.batch_size != batch:
            raise PolyAttentionError(
                f"batch size {batch} does not match the cache's {self.batch_size}; a cache holds one "
                "batch of sequences (reset() it to start another)"
            )

    @property
    def batch_size(self) -> int:
        return 0 if self._valid.data is None else self._valid.view().shape[0]

    @property
    def valid(self) -> torch.Tensor | None:
        """``[B, n]`` bool: which cached positions are real tokens (None when empty)."""
        return None if self._valid.data is None else self._valid.view()

    def begin(self, token_mask: torch.Tensor) -> int:
        """Open ``k`` new positions (``token_mask`` ``[B, k]``, True = real token); returns the old length."""
        old = self.length
        self._valid.append(token_mask)
        self.padded = self.padded or not bool(token_mask.all())
        self.length += token_mask.shape[-1]
        return old

    def rollback(self, length: int) -> None:
        """Drop positions ``>= length`` (used when a step fails half-way)."""
        for r in self._rows.values():
            r.truncate(length)
        self._valid.truncate(length)
        self.length = min(self.length, length)
        if self.length == 0:
            self.reset()

    # -- MessageStore protocol (polyattn.ops.decode) ----------------------------------------
    def append(self, var: int, key: torch.Tensor | None, message: torch.Tensor | None,
               logz: torch.Tensor | None) -> None:
        for kind, x in zip(_KINDS, (key, message, logz)):
            if x is None:
                continue
            slot = self._rows.get((var, kind))
            if slot is None:
                slot = self._rows[(var, kind)] = _Rows(-1 if kind == "logz" else -2)
            slot.append(x)

    def rows(self, var: int) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        out = []
        for kind in _KINDS:
            slot = self._rows.get((var, kind))
            out.append(None if slot is None else slot.view())
        return out[0], out[1], out[2]

    # -- introspection and persistence --------------------------------------------------------
    @property
    def nbytes(self) -> int:
        """Bytes held by the cached rows (not counting spare capacity)."""
        tot = 0
        for r in [*self._rows.values(), self._valid]:
            if r.data is not None:
                v = r.view()
                tot += v.numel() * v.element_size()
        return tot

    def state_dict(self) -> dict[str, Any]:
        """Tensors (contiguous copies of the cached rows), ints and strings only."""
        sd: dict[str, Any] = {"format": _FORMAT, "length": self.length, "signature": self.signature or ""}
        if self._valid.data is not None:
            sd["valid"] = self._valid.view().detach().clone()
        for (var, kind), r in sorted(self._rows.items()):
            sd[f"x{var}.{kind}"] = r.view().detach().clone()
        return sd

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output (e.g. from ``torch.load(path, weights_only=True)``)."""
        if not isinstance(state, dict) or state.get("format") != _FORMAT:
            raise PolyAttentionError(
                f"not a DecodeCache state_dict (format {state.get('format') if isinstance(state, dict) else None!r}, "
                f"expected {_FORMAT})"
            )
        self.reset()
        length = int(state["length"])
        self.signature = str(state["signature"]) or None
        for name, x in state.items():
            if name in ("format", "length", "signature", "valid"):
                continue
            var, _, kind = name.partition(".")
            if not (var.startswith("x") and var[1:].isdigit() and kind in _KINDS and isinstance(x, torch.Tensor)):
                raise PolyAttentionError(f"unexpected entry {name!r} in a DecodeCache state_dict")
            slot = self._rows[(int(var[1:]), kind)] = _Rows(-1 if kind == "logz" else -2)
            with torch.no_grad():
                slot.append(x)
            if slot.n != length:
                raise PolyAttentionError(f"{name} has {slot.n} positions, the state_dict says {length}")
        if length:
            valid = state.get("valid")
            if not isinstance(valid, torch.Tensor) or valid.dtype != torch.bool or valid.shape[-1] != length:
                raise PolyAttentionError("a non-empty DecodeCache state_dict needs 'valid': bool [B, length]")
            with torch.no_grad():
                self._valid.append(valid)
            self.padded = not bool(valid.all())
        self.length = length

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> DecodeCache:
        c = cls()
        c.load_state_dict(state)
        return c
