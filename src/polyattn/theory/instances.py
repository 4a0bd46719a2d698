"""Instance formats and encoders for the explicit constructions (:mod:`.constructions`).

These formats are this module's own (the task suite in :mod:`polyattn.tasks` may lay tokens out
differently); each is documented here and in ``docs/theory.md``.

**r-fold function composition** over ``[m] = {0, ..., m-1}``: tables ``f_1..f_r`` (``[B, r, m]``
integers) and a query ``x`` (``[B]``); label ``f_r(...f_1(x))``. The sequence has ``r*m + 1``
tokens, each with three integer fields ``(table, index, value)``:

* entry ``f_i(a) = b`` is the token ``(i, a, b)`` with ``i`` in ``1..r``;
* the query is the token ``(0, x, 0)`` and is always **last** (the answer is read there);
* table entries are shuffled uniformly (no positional information is used or needed).

**Match3 mod M**: values ``v_1..v_n`` in ``[1, M-1]``; label of position ``i`` is 1 iff there are
positions ``j, k`` (any, repetitions allowed, ``i`` included) with ``v_i + v_j + v_k = 0 (mod M)``.
The sequence is ``[BOS, v_1, ..., v_n]`` with one field (``0`` = BOS); labels are ``[B, n]``.
"""

from __future__ import annotations

import torch

from ..errors import PolyAttentionError

__all__ = ["sample_composition", "encode_composition", "compose", "sample_match3", "encode_match3",
           "match3_labels"]


def compose(tables: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``f_r(...f_1(x))`` for tables ``[B, r, m]`` and queries ``[B]``."""
    y = x.clone()
    for i in range(tables.shape[1]):
        y = tables[:, i].gather(1, y.unsqueeze(1)).squeeze(1)
    return y


def sample_composition(
    batch: int, r: int, m: int, *, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random tables ``[B, r, m]`` (uniform functions), queries ``[B]`` and labels ``[B]``."""
    tables = torch.randint(0, m, (batch, r, m), generator=generator)
    x = torch.randint(0, m, (batch,), generator=generator)
    return tables, x, compose(tables, x)


def encode_composition(
    tables: torch.Tensor, x: torch.Tensor, *, shuffle: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Tokens ``[B, r*m + 1, 3]`` of fields ``(table, index, value)``; the query token is last."""
    if tables.dim() != 3 or x.shape != tables.shape[:1]:
        raise PolyAttentionError(
            f"tables must be [B, r, m] and x [B]; got {tuple(tables.shape)} and {tuple(x.shape)}"
        )
    B, r, m = tables.shape
    if bool((x < 0).any() or (x >= m).any() or (tables < 0).any() or (tables >= m).any()):
        raise PolyAttentionError(f"table values and queries must lie in 0..{m - 1}")
    tab = torch.arange(1, r + 1).view(1, r, 1).expand(B, r, m)
    idx = torch.arange(m).view(1, 1, m).expand(B, r, m)
    entries = torch.stack([tab, idx, tables], -1).reshape(B, r * m, 3)
    if shuffle:
        perm = torch.argsort(torch.rand(B, r * m, generator=generator), dim=1)
        entries = entries.gather(1, perm.unsqueeze(-1).expand(B, r * m, 3))
    q = torch.stack([torch.zeros_like(x), x, torch.zeros_like(x)], -1).unsqueeze(1)
    return torch.cat([entries, q], 1)


def match3_labels(values: torch.Tensor, modulus: int) -> torch.Tensor:
    """Labels ``[B, n]``: 1 iff ``v_i + v_j + v_k = 0 mod M`` for some positions ``j, k``."""
    M = modulus
    present = torch.zeros(values.shape[0], M, dtype=torch.bool)
    present.scatter_(1, values % M, True)
    # pair sums reachable: s in S iff exists a, b present with a + b = s (mod M)
    pres = present.to(torch.float64)
    idx = torch.arange(M)
    shift = (idx.view(M, 1) - idx.view(1, M)) % M  # shift[s, a] = s - a
    pair = (pres.unsqueeze(1) * pres[:, shift]).sum(-1) > 0  # [B, s]
    need = (-values) % M
    return pair.gather(1, need).long()


def sample_match3(
    batch: int, seq_len: int, modulus: int, *, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform values ``[B, n]`` in ``[1, M-1]`` and their labels ``[B, n]``."""
    if modulus < 3:
        raise PolyAttentionError(f"modulus must be >= 3, got {modulus}")
    values = torch.randint(1, modulus, (batch, seq_len), generator=generator)
    return values, match3_labels(values, modulus)


def encode_match3(values: torch.Tensor, modulus: int) -> torch.Tensor:
    """Tokens ``[B, n + 1, 1]``: BOS (0) then the values (1..M-1)."""
    if bool((values < 1).any() or (values >= modulus).any()):
        raise PolyAttentionError(f"Match3 values must lie in 1..{modulus - 1}")
    bos = torch.zeros(values.shape[0], 1, dtype=values.dtype)
    return torch.cat([bos, values], 1).unsqueeze(-1)
