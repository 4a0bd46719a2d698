"""Quotient binary relation composition (Strassen-attention paper; DESIGN §6), per-token labels.

A Boolean ``m × m`` relation ``R`` (i.i.d. Bernoulli(p)) and a colouring ``col: [m] -> [colors]``
(uniform) are drawn per example. Tokens are ``(i, j, R_ij, col(j))`` for the ``N = m²`` pairs,
row-major. The label of token ``(i, j)`` is

    ∃ k1 ≠ k2 :  R[i, k1] ∧ R[j, k2] ∧ col(k1) = col(k2).

``p`` defaults to the value that makes the labels about balanced, found once by bisection on a
fixed-seed Monte-Carlo estimate (deterministic). Labels cost ``O(B · m² · colors)``.
"""

from __future__ import annotations

import numpy as np

from ..errors import PolyAttentionError
from .base import Task, rng_for

__all__ = ["QuotientRelationComposition", "quotient_labels"]


def quotient_labels(r: np.ndarray, col: np.ndarray, colors: int) -> np.ndarray:
    """Labels ``[B, m, m]`` for relations ``r`` ``[B, m, m]`` and colourings ``col`` ``[B, m]``."""
    onehot = np.eye(colors, dtype=np.int64)[col]  # [B, m, colors]
    cnt = np.einsum("bik,bkc->bic", r, onehot)  # per row, #related columns of each colour
    # pairs (k1, k2) with equal colour: sum_c cnt_i,c * cnt_j,c, minus k1 == k2 pairs
    same = np.einsum("bic,bjc->bij", cnt, cnt)
    diag = np.einsum("bik,bjk->bij", r, r)  # k1 = k2 = k with R_ik and R_jk
    return (same - diag > 0).astype(np.int64)


class QuotientRelationComposition(Task):
    name = "quotient_relation"
    readout = "all"

    def __init__(self, m: int = 6, colors: int = 3, p: float | None = None) -> None:
        if m < 2 or colors < 1:
            raise PolyAttentionError(f"quotient relation needs m >= 2 and colors >= 1, got m={m}, colors={colors}")
        self.m, self.colors = int(m), int(colors)
        self.p = float(p) if p else self._balanced_p()
        self.seq_len = self.m * self.m
        self.num_classes = 2
        self.vocab_sizes = (self.m, self.m, 2, self.colors)

    def _draw(self, rng: np.random.Generator, size: int, p: float) -> tuple[np.ndarray, np.ndarray]:
        r = (rng.random((size, self.m, self.m)) < p).astype(np.int64)
        col = rng.integers(0, self.colors, size=(size, self.m))
        return r, col

    def _balanced_p(self) -> float:
        lo, hi = 1e-3, 1.0 - 1e-3
        for _ in range(30):
            mid = 0.5 * (lo + hi)
            r, col = self._draw(rng_for(3, self.m, self.colors), 2000, mid)
            if quotient_labels(r, col, self.colors).mean() < 0.5:
                lo = mid
            else:
                hi = mid
        return round(0.5 * (lo + hi), 6)

    def sample(self, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
        m = self.m
        r, col = self._draw(rng, size, self.p)
        lab = quotient_labels(r, col, self.colors)
        ii, jj = np.meshgrid(np.arange(m), np.arange(m), indexing="ij")
        tok = np.stack(
            [np.broadcast_to(ii.ravel(), (size, m * m)), np.broadcast_to(jj.ravel(), (size, m * m)),
             r.reshape(size, m * m), col[:, jj.ravel()]], axis=-1,
        ).astype(np.int64)
        return np.ascontiguousarray(tok), lab.reshape(size, m * m)

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "m": self.m, "colors": self.colors, "p": self.p}
