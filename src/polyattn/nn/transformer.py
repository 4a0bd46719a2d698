r"""``PolyTransformer``: a small pre-norm transformer whose attention is any polynomial.

Architecture (``L`` blocks, width ``dim``)::

    h_0 = sum_c E_c[tokens[..., c]]  (+ P[position] when max_len is set)
    h_l = h_{l-1} + PolyAttention_l(LN(h_{l-1}))
    h_l = h_l + MLP_l(LN(h_l))                     (MLP: dim -> mlp_ratio*dim -> dim, GELU)
    logits = W LN(h_L)[:, -1]      (readout="last":  [B, classes]; the last block computes only
                                    that row when not causal)
             W LN(h_L)             (readout="all":   [B, N, classes])

Tokens may carry several integer feature channels (``[B, N, C]``, channel ``c`` with its own
vocabulary size), e.g. (value, index, table id) in function composition; their embeddings are
summed. Cost per layer: the attention's planned cost plus ``O(N · dim²)`` for projections/MLP.

``embedding="numeric"`` replaces the lookup tables by one linear map of hand-made numeric features
(the Strassen-attention paper's Match3 embedding ``[position, value, value², 1]``, generalised)::

    h_0 = W [x, x², (p, p²), 1] + b       x = the integer channels, p = position (if max_len is set)

in raw integer units, as in the paper: a quadratic form in the integers (e.g.
``-(x_i + x_j + x_k - M)²``, whose gap between a match and a near miss is 1) is then a bilinear
form in the features with O(1) coefficients. (Normalising the features to [0, 1] shrinks that gap
to ``1/M²``; in our Match3 runs learning then stalled.) ``W``'s columns are initialised divided
by the feature's largest value, so ``h_0`` is O(1) at initialisation. ``embedding="both"`` adds
the lookup tables to the numeric map, so special tokens (e.g. a BOS token) get free vectors while
values keep their integer structure. ``norm=False`` removes every LayerNorm (blocks and the final
one).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import PolyAttentionError
from ..polynomial import AttentionPolynomial
from .attention import PolyAttention
from .generate import generate
from .token_mask import check_token_mask

__all__ = ["PolyTransformer", "PolyBlock", "EMBEDDINGS"]

EMBEDDINGS = ("lookup", "numeric", "both")


class PolyBlock(nn.Module):
    """One pre-norm block: ``x + attn(LN x)`` then ``x + MLP(LN x)`` (``norm=False``: no LN)."""

    def __init__(
        self,
        dim: int,
        polynomial: str | AttentionPolynomial,
        *,
        heads: int,
        dim_head: int | None,
        mlp_ratio: float,
        causal: bool | str,
        dropout: float,
        method: str,
        valueless: Sequence[int] = (),
        value_placement: str | Mapping[int, str] = "own",
        norm: bool = True,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim) if norm else nn.Identity()
        self.attn = PolyAttention(
            dim, polynomial, heads=heads, dim_head=dim_head, causal=causal, dropout=dropout, method=method,
            valueless=valueless, value_placement=value_placement,
        )
        self.norm2 = nn.LayerNorm(dim) if norm else nn.Identity()
        hidden = max(1, int(round(dim * mlp_ratio)))
        self.mlp = (
            nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim), nn.Dropout(dropout))
            if mlp_ratio > 0
            else None
        )

    def forward(
        self,
        x: torch.Tensor,
        last_only: bool = False,
        token_mask: torch.Tensor | None = None,
        last_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``[B, N, dim]`` → ``[B, N, dim]``, or ``[B, 1, dim]`` (one position) if ``last_only``.

        ``last_only`` evaluates the attention for one query row only (x1 = that position, the
        other variables range over the whole sequence): the same numbers for that row, at ``1/N`` of
        the attention cost (``n^2`` instead of ``n^3`` for a cubic polynomial). The row is the last
        one, or ``last_index[b]`` per batch entry. ``token_mask`` ``[B, N]`` (True = real
        token) keeps padded positions out of every tuple.
        """
        h = self.norm1(x)
        if last_only:
            ctx = {j: h for j in range(2, self.attn.t + 1)}
            if last_index is None:
                rows_x, rows_h = x[:, -1:], h[:, -1:]
            else:
                sel = last_index.view(-1, 1, 1).expand(-1, 1, x.shape[-1])
                rows_x, rows_h = x.gather(1, sel), h.gather(1, sel)
            x = rows_x + self.attn(rows_h, contexts=ctx, token_mask=token_mask)
        else:
            x = x + self.attn(h, token_mask=token_mask)
        if self.mlp is not None:
            x = x + self.mlp(self.norm2(x))
        return x


class PolyTransformer(nn.Module):
    """Embeddings, ``depth`` pre-norm poly-attention blocks, a classification head.

    Args:
        vocab_sizes: vocabulary size, or one per token feature channel.
        num_classes: output classes.
        dim: model width.
        depth: number of blocks.
        polynomial: attention polynomial of every block, or a sequence with one per block.
        heads, dim_head: attention heads and per-head width (default ``dim // heads``).
        mlp_ratio: MLP hidden width as a multiple of ``dim`` (0 disables the MLP).
        max_len: if given, adds a learned position embedding for sequences up to this length.
        readout: ``"last"`` (logits of the last position, ``[B, classes]``) or ``"all"``
            (per-position logits, ``[B, N, classes]``).
        causal, dropout, method, valueless, value_placement: passed to every :class:`PolyAttention`.
        norm: LayerNorm before attention, before the MLP and before the head (``False``: none).
        embedding: ``"lookup"`` (one learned table per channel, summed), ``"numeric"`` (a
            linear map of the raw integers ``[x, x²]`` per channel, ``[p, p²]`` if ``max_len`` is
            set, and 1) or ``"both"`` (their sum).
    """

    def __init__(
        self,
        vocab_sizes: int | Sequence[int],
        num_classes: int,
        *,
        dim: int = 64,
        depth: int = 1,
        polynomial: str | AttentionPolynomial | Sequence[str | AttentionPolynomial] = "x1*x2",
        heads: int = 1,
        dim_head: int | None = None,
        mlp_ratio: float = 4.0,
        max_len: int | None = None,
        readout: str = "last",
        causal: bool | str = False,
        dropout: float = 0.0,
        method: str = "auto",
        valueless: Sequence[int] = (),
        value_placement: str | Mapping[int, str] = "own",
        norm: bool = True,
        embedding: str = "lookup",
    ) -> None:
        super().__init__()
        if embedding not in EMBEDDINGS:
            raise PolyAttentionError(
                f"embedding must be one of {', '.join(repr(e) for e in EMBEDDINGS)}, got {embedding!r}")
        if readout not in ("last", "all"):
            raise PolyAttentionError(f"readout must be 'last' or 'all', got {readout!r}")
        if depth < 1:
            raise PolyAttentionError(f"depth must be >= 1, got {depth}")
        vocab = [vocab_sizes] if isinstance(vocab_sizes, int) else list(vocab_sizes)
        if not vocab or any(int(v) < 1 for v in vocab):
            raise PolyAttentionError(f"vocab_sizes must be positive integers, got {vocab_sizes!r}")
        if isinstance(polynomial, (str, AttentionPolynomial)):
            polys = [polynomial] * depth
        else:
            polys = list(polynomial)
            if len(polys) != depth:
                raise PolyAttentionError(
                    f"got {len(polys)} polynomials for depth={depth}; pass one, or one per block"
                )
        self.vocab_sizes = tuple(int(v) for v in vocab)
        self.readout = readout
        self.causal = causal
        self.embedding = embedding
        self.max_len = max_len
        lookup = embedding in ("lookup", "both")
        self.embeds = nn.ModuleList(nn.Embedding(v, dim) for v in self.vocab_sizes) if lookup else nn.ModuleList()
        self.pos = nn.Embedding(max_len, dim) if max_len and embedding == "lookup" else None
        self.numeric = None
        if embedding != "lookup":
            top = [float(v - 1) for v in self.vocab_sizes]
            top = [max(t, 1.0) for t in top + [t * t for t in top]]
            if max_len:
                top += [float(max(max_len - 1, 1)), float(max(max_len - 1, 1)) ** 2]
            self.numeric = nn.Linear(len(top) + 1, dim)
            with torch.no_grad():  # each raw feature contributes O(1) at initialisation
                self.numeric.weight[:, :-1] /= torch.tensor(top)
        self.blocks = nn.ModuleList(
            PolyBlock(
                dim,
                p,
                heads=heads,
                dim_head=dim_head,
                mlp_ratio=mlp_ratio,
                causal=causal,
                dropout=dropout,
                method=method,
                valueless=valueless,
                value_placement=value_placement,
                norm=norm,
            )
            for p in polys
        )
        self.norm = nn.LayerNorm(dim) if norm else nn.Identity()
        self.head = nn.Linear(dim, num_classes)

    def _numeric_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[B, N, C]`` integers -> ``[B, N, 2C (+2) + 1]`` features ``[x, x², (p, p²), 1]``."""
        assert self.numeric is not None
        dtype = self.numeric.weight.dtype
        x = tokens.to(dtype)
        feats = [x, x * x]
        b, n, _ = tokens.shape
        if self.max_len:
            if n > self.max_len:
                raise PolyAttentionError(f"sequence length {n} exceeds max_len={self.max_len}")
            p = torch.arange(n, dtype=dtype, device=tokens.device).view(1, n, 1).expand(b, n, 1)
            feats += [p, p * p]
        feats.append(torch.ones(b, n, 1, dtype=dtype, device=tokens.device))
        return torch.cat(feats, -1)

    def forward(self, tokens: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``tokens``: ``[B, N]`` or ``[B, N, C]`` integer features → logits (see ``readout``).

        ``token_mask``: ``[B, N]`` bool, True = real token (right padding): padded positions
        enter no attention tuple, and ``readout="last"`` reads each sequence's last real token.
        """
        if tokens.dim() == 2:
            tokens = tokens.unsqueeze(-1)
        if tokens.dim() != 3 or tokens.shape[-1] != len(self.vocab_sizes):
            raise PolyAttentionError(
                f"tokens must be [batch, seq] or [batch, seq, {len(self.vocab_sizes)}] integers, "
                f"got shape {tuple(tokens.shape)}"
            )
        parts = [emb(tokens[..., c]) for c, emb in enumerate(self.embeds)]
        if self.numeric is not None:
            parts.append(self.numeric(self._numeric_features(tokens)))
        h = sum(parts[1:], parts[0])
        if self.pos is not None:
            n = tokens.shape[1]
            if n > self.pos.num_embeddings:
                raise PolyAttentionError(f"sequence length {n} exceeds max_len={self.pos.num_embeddings}")
            h = h + self.pos.weight[:n]
        # With a last-position readout the final block only needs its last row (not under
        # causality, whose masks are defined on aligned positions).
        last_only = self.readout == "last" and not self.causal
        last_index = None
        if token_mask is not None:
            check_token_mask(token_mask, *tokens.shape[:2])
            # right padding: the last real token of each sequence (position 0 if all padded)
            last_index = (token_mask.long().sum(1) - 1).clamp_(min=0)
        for i, blk in enumerate(self.blocks):
            final = last_only and i == len(self.blocks) - 1
            h = blk(h, last_only=final, token_mask=token_mask,
                    last_index=last_index if final else None)
        h = self.norm(h)
        if self.readout == "last":
            if last_only:
                h = h[:, -1]
            elif last_index is not None:
                h = h.gather(1, last_index.view(-1, 1, 1).expand(-1, 1, h.shape[-1])).squeeze(1)
            else:
                h = h[:, -1]
        return self.head(h)

    def generate(self, tokens: torch.Tensor, max_new_tokens: int, **kwargs: Any) -> Any:
        """Autoregressive generation, with a :class:`~polyattn.DecodeCache` per block by default.

        See :func:`polyattn.nn.generate.generate` (``token_mask=``, ``use_cache=``, ``temperature=``,
        ``generator=``, ``return_logits=``).
        """
        return generate(self, tokens, max_new_tokens, **kwargs)
