"""Binary relation composition (DESIGN §6), per-token labels.

A Boolean ``m × m`` relation ``R`` (entries i.i.d. Bernoulli(p)) is flattened row-major into
``N = m²`` tokens with features ``(i, j, R_ij)``. The label of token ``(i, j)`` is
``(R∘R)_ij = ∃k: R_ik ∧ R_kj``. The default ``p = sqrt(1 - 2^(-1/m))`` makes
``P[(R∘R)_ij = 1] ≈ 1/2`` for ``i ≠ j``. Labels cost ``O(B · m³)`` (a Boolean matrix product).
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import PolyAttentionError
from .base import Task

__all__ = ["RelationComposition"]


class RelationComposition(Task):
    name = "relation"
    readout = "all"

    def __init__(self, m: int = 6, p: float | None = None) -> None:
        if m < 2:
            raise PolyAttentionError(f"relation composition needs m >= 2, got m={m}")
        self.m = int(m)
        self.p = float(p) if p else math.sqrt(1.0 - 0.5 ** (1.0 / self.m))
        if not 0.0 < self.p < 1.0:
            raise PolyAttentionError(f"p must be in (0, 1), got {self.p}")
        self.seq_len = self.m * self.m
        self.num_classes = 2
        self.vocab_sizes = (self.m, self.m, 2)

    def sample(self, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
        m = self.m
        r = (rng.random((size, m, m)) < self.p).astype(np.int64)
        comp = (np.einsum("bik,bkj->bij", r, r) > 0).astype(np.int64)
        ii, jj = np.meshgrid(np.arange(m), np.arange(m), indexing="ij")
        tok = np.stack(
            [np.broadcast_to(ii.ravel(), (size, m * m)), np.broadcast_to(jj.ravel(), (size, m * m)),
             r.reshape(size, m * m)], axis=-1,
        ).astype(np.int64)
        return np.ascontiguousarray(tok), comp.reshape(size, m * m)

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "m": self.m, "p": self.p}
