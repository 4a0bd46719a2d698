"""Match3 mod M (Sanford et al.; DESIGN §6), per-token labels.

A sequence ``x_1..x_n`` has tokens in ``[1, M-1]``; the label of position ``i`` is ``1`` iff there
are positions ``j, k`` with ``i, j, k`` pairwise distinct and ``x_i + x_j + x_k ≡ 0 (mod M)``.
(Distinct positions make it a genuine three-token interaction; document any other choice.)

Data are finite: a pool of base sequences is drawn once (``pool`` seed stream), deduplicated by
*multiset* (permutations of one multiset count as the same base), shuffled and split into
``test_size`` test bases and the rest as training bases **before** any augmentation. A training
batch picks training bases and applies a random permutation of positions to each (labels move
with their tokens), so no test sequence — nor any permutation of one — is ever trained on.

Token features: ``(value,)``. ``N = n``. Labels cost ``O(B · n · M)`` via pair-sum counts.
"""

from __future__ import annotations

import numpy as np

from ..errors import PolyAttentionError
from .base import Batch, Task, rng_for

__all__ = ["Match3", "match3_labels"]

POOL_STREAM = 2


def match3_labels(x: np.ndarray, modulus: int) -> np.ndarray:
    """Per-token Match3 labels of ``x`` ``[B, n]`` (pairwise distinct positions), vectorised."""
    b, n = x.shape
    # pair_sums[b, i, j] = (x_i + x_j) mod M for i != j
    s = (x[:, :, None] + x[:, None, :]) % modulus
    need = (-x) % modulus  # x_j + x_k must equal this for position i
    ok = np.zeros((b, n), dtype=bool)
    eye = np.eye(n, dtype=bool)
    for i in range(n):
        hit = s == need[:, i][:, None, None]
        hit &= ~eye[None]
        hit[:, i, :] = False
        hit[:, :, i] = False
        ok[:, i] = hit.any(axis=(1, 2))
    return ok.astype(np.int64)


class Match3(Task):
    name = "match3"
    readout = "all"

    def __init__(self, n: int = 16, modulus: int = 128, train_size: int = 20000, test_size: int = 2000) -> None:
        if n < 3 or modulus < 3:
            raise PolyAttentionError(f"match3 needs n >= 3 and modulus >= 3, got n={n}, modulus={modulus}")
        if train_size < 1 or test_size < 1:
            raise PolyAttentionError("match3 needs train_size >= 1 and test_size >= 1")
        self.n, self.modulus = int(n), int(modulus)
        self.train_size, self.test_size = int(train_size), int(test_size)
        self.seq_len = self.n
        self.num_classes = 2
        self.vocab_sizes = (self.modulus,)
        self._split: tuple[np.ndarray, np.ndarray] | None = None

    def sample(self, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Fresh i.i.d. sequences (no train/test split; used for the pool)."""
        x = rng.integers(1, self.modulus, size=(size, self.n))
        return x[:, :, None].astype(np.int64), match3_labels(x, self.modulus)

    def split(self) -> tuple[np.ndarray, np.ndarray]:
        """``(train_bases, test_bases)``: disjoint as multisets (split before augmentation)."""
        if self._split is None:
            rng = rng_for(POOL_STREAM, self.n, self.modulus, self.train_size, self.test_size)
            want = self.train_size + self.test_size
            chunk = int(want * 1.1) + 16
            x = np.empty((0, self.n), dtype=np.int64)
            for _ in range(20):  # draw until enough distinct multisets (small spaces need more)
                x = np.concatenate([x, rng.integers(1, self.modulus, size=(chunk, self.n))])
                _, first = np.unique(np.sort(x, axis=1), axis=0, return_index=True)
                if first.size >= want:
                    break
            first = np.sort(first)
            if first.size < want:
                raise PolyAttentionError(
                    f"only {first.size} distinct Match3 base multisets for n={self.n}, "
                    f"modulus={self.modulus}; lower train_size/test_size"
                )
            uniq = x[first[:want]]
            perm = rng.permutation(want)
            uniq = uniq[perm]
            self._split = (uniq[self.test_size :], uniq[: self.test_size])
        return self._split

    def train_batch(self, seed: int, step: int, size: int) -> Batch:
        import torch

        train, _ = self.split()
        rng = rng_for(0, seed, step)
        x = train[rng.integers(0, train.shape[0], size=size)]
        x = np.take_along_axis(x, rng.permuted(np.tile(np.arange(self.n), (size, 1)), axis=1), axis=1)
        return Batch(torch.from_numpy(x[:, :, None].astype(np.int64)),
                     torch.from_numpy(match3_labels(x, self.modulus)))

    def test_set(self, size: int | None = None) -> Batch:
        import torch

        _, test = self.split()
        if size is not None:
            test = test[:size]
        return Batch(torch.from_numpy(test[:, :, None].astype(np.int64)),
                     torch.from_numpy(match3_labels(test, self.modulus)))

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "n": self.n, "modulus": self.modulus,
                "train_size": self.train_size, "test_size": self.test_size}

