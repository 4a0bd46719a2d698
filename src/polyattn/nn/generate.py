r"""Autoregressive generation with :class:`~polyattn.PolyTransformer` (``model.generate``).

With ``use_cache=True`` every block keeps a :class:`~polyattn.DecodeCache`: the prompt is run
once (prefill, the planned tree kernels, ``O(N^2 d)`` per edge) and each new token then costs
``O(n * d)`` per edge and block for the attention plus ``O(dim^2)`` for projections and MLP.
With ``use_cache=False`` each new token reruns the whole causal forward over the sequence so far
(``O(n^2 d)`` per edge) -- the baseline the cache is measured against (``polyattn bench decode``).

Padding: ``token_mask`` ``[B, N]`` (True = real token) marks pad slots, left or right. Pads are
excluded from every tuple and each sample's positions count its real tokens only (position
embedding index = number of real tokens before it), so a padded sample generates exactly what it
generates alone. New tokens are appended after the last slot; the first one is read from each
sample's last real token. Left padding (real tokens flush right) is the usual layout.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import torch

from ..errors import PolyAttentionError
from .cache import DecodeCache
from .decode import layer_decode_plan
from .token_mask import token_mask_or_all

if TYPE_CHECKING:
    from .transformer import PolyBlock, PolyTransformer

__all__ = ["generate", "forward_tokens"]


def _embed(model: PolyTransformer, tokens: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
    h = model.embeds[0](tokens)
    if model.pos is not None:
        assert positions is not None
        if int(positions.max()) >= model.pos.num_embeddings:
            raise PolyAttentionError(
                f"generation reaches position {int(positions.max())}, beyond max_len={model.pos.num_embeddings}"
            )
        h = h + model.pos(positions)
    return h


def forward_tokens(
    model: PolyTransformer,
    tokens: torch.Tensor,
    *,
    caches: list[DecodeCache] | None = None,
    positions: torch.Tensor | None = None,
    token_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Logits ``[B, k, classes]`` of ``tokens`` ``[B, k]``: the blocks of :class:`PolyBlock`
    (pre-norm attention + MLP), optionally appending to one :class:`DecodeCache` per block.

    ``positions`` ``[B, k]``: position-embedding indices (default ``len(cache) + arange(k)``, or
    ``arange(k)`` without caches). ``token_mask`` ``[B, k]``: True = real token (key padding).
    """
    b, k = tokens.shape
    if positions is None and model.pos is not None:
        start = len(caches[0]) if caches else 0
        positions = torch.arange(start, start + k, device=tokens.device).expand(b, k)
    h = _embed(model, tokens, positions)
    for i, blk in enumerate(cast("list[PolyBlock]", model.blocks)):
        a = blk.norm1(h)
        h = h + blk.attn(a, cache=None if caches is None else caches[i], token_mask=token_mask)
        if blk.mlp is not None:
            h = h + blk.mlp(blk.norm2(h))
    return model.head(model.norm(h))


def _sample(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(
    model: PolyTransformer,
    tokens: torch.Tensor,
    max_new_tokens: int,
    *,
    token_mask: torch.Tensor | None = None,
    use_cache: bool = True,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    return_logits: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Append ``max_new_tokens`` tokens to ``tokens`` ``[B, N]``; returns ``[B, N + max_new_tokens]``.

    Args:
        tokens: prompt token ids (one feature channel; the model's classes are its vocabulary).
        max_new_tokens: number of tokens to generate (>= 0).
        token_mask: ``[B, N]`` bool, True = real token (default: all real); see the module doc.
        use_cache: decode with a :class:`DecodeCache` per block (needs causal tree-attention, see
            :func:`polyattn.planning.decode.decode_support`) or rerun the full forward per token.
        temperature: 0 (default) picks the most likely token; > 0 samples from
            ``softmax(logits / temperature)`` with ``generator``.
        return_logits: also return the logits of every generated position, ``[B, new, classes]``.

    Runs under ``torch.no_grad()``; call ``model.eval()`` first (dropout stays as the module is).
    """
    if model.embedding != "lookup":
        raise PolyAttentionError(
            f"generate needs embedding='lookup' (a table per token id); this model uses embedding={model.embedding!r}"
        )
    if len(model.vocab_sizes) != 1:
        raise PolyAttentionError(
            f"generate needs single-channel tokens [batch, seq]; this model embeds {len(model.vocab_sizes)} "
            "feature channels per token"
        )
    classes = model.head.out_features
    if classes != model.vocab_sizes[0]:
        raise PolyAttentionError(
            f"generate feeds each predicted class back as the next token, so num_classes ({classes}) must "
            f"equal the vocabulary size ({model.vocab_sizes[0]})"
        )
    if tokens.dim() != 2 or tokens.dtype not in (torch.int64, torch.int32):
        raise PolyAttentionError(f"tokens must be integer [batch, seq], got {tokens.dtype} {list(tokens.shape)}")
    if max_new_tokens < 0:
        raise PolyAttentionError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    b, n = tokens.shape
    dev = tokens.device
    tm = token_mask_or_all(token_mask, b, n, dev)
    if n == 0 or not bool(tm.any(-1).all()):
        raise PolyAttentionError("every prompt needs at least one real token (token_mask True somewhere in each row)")
    if use_cache:
        for blk in cast("list[PolyBlock]", model.blocks):
            layer_decode_plan(blk.attn)  # raises, saying why, for a layer that cannot be cached
    padded = not bool(tm.all())
    positions = (tm.long().cumsum(-1) - 1).clamp_(min=0)
    count = tm.long().sum(-1)  # real tokens so far = the next position index
    last = n - 1 - tm.flip(-1).long().argmax(-1)  # each sample's last real slot
    rows = torch.arange(b, device=dev)
    caches = [DecodeCache() for _ in model.blocks] if use_cache else None
    seq, mask = tokens, tm
    logits_all = []
    logits = None
    for step in range(max_new_tokens):
        if caches is not None:
            if step == 0:
                out = forward_tokens(model, tokens, caches=caches, positions=positions, token_mask=tm)
                logits = out[rows, last]
            else:
                new_pos = (count - 1).unsqueeze(-1)
                ones = torch.ones(b, 1, dtype=torch.bool, device=dev)
                out = forward_tokens(model, seq[:, -1:], caches=caches, positions=new_pos, token_mask=ones)
                logits = out[:, -1]
        else:
            pos = (mask.long().cumsum(-1) - 1).clamp_(min=0)
            out = forward_tokens(model, seq, positions=pos, token_mask=mask if padded else None)
            logits = out[rows, last] if step == 0 else out[:, -1]
        nxt = _sample(logits, temperature, generator)
        logits_all.append(logits)
        seq = torch.cat([seq, nxt.unsqueeze(-1).to(seq.dtype)], dim=-1)
        mask = torch.cat([mask, torch.ones(b, 1, dtype=torch.bool, device=dev)], dim=-1)
        count = count + 1
    if return_logits:
        lg = torch.stack(logits_all, 1) if logits_all else torch.empty(b, 0, classes, device=dev)
        return seq, lg
    return seq
