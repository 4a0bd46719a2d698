"""Binary function composition (Strassen-attention paper): is ``f(f(0)) == 0``?

An example is a uniform-looking ``f : [n] -> [n]`` laid out as ``(⊥, f(0), f(1), …, f(n-1))``;
token features are ``(value, position)`` with ``value = n`` for ``⊥``. The label (read at the last
position) is ``1`` iff ``f(f(0)) == 0``. Labels are balanced: each example first draws its label
``y`` by a fair coin, then

* ``y = 1``: draw ``f`` uniformly, ``a = f(0)``; if ``a != 0`` set ``f(a) = 0``;
* ``y = 0``: draw ``f`` uniformly until ``f(f(0)) != 0`` (vectorised rejection).

Sequence length ``N = n + 1``; generation ``O(B · n)`` expected.
"""

from __future__ import annotations

import numpy as np

from ..errors import PolyAttentionError
from .base import Task

__all__ = ["BinaryComposition"]


class BinaryComposition(Task):
    name = "composition_binary"
    readout = "last"

    def __init__(self, n: int = 25) -> None:
        if n < 2:
            raise PolyAttentionError(f"composition_binary needs n >= 2, got n={n}")
        self.n = int(n)
        self.seq_len = self.n + 1
        self.num_classes = 2
        self.vocab_sizes = (self.n + 1, self.n + 1)

    def sample(self, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
        n = self.n
        y = rng.integers(0, 2, size=size)
        f = rng.integers(0, n, size=(size, n))
        rows = np.arange(size)
        # y = 1: force f(f(0)) = 0
        pos = np.nonzero(y == 1)[0]
        a = f[pos, 0]
        f[pos[a != 0], a[a != 0]] = 0
        # y = 0: resample the rows that happen to satisfy f(f(0)) = 0
        while True:
            bad = np.nonzero((y == 0) & (f[rows, f[:, 0]] == 0))[0]
            if bad.size == 0:
                break
            f[bad] = rng.integers(0, n, size=(bad.size, n))
        tok = np.empty((size, n + 1, 2), dtype=np.int64)
        tok[:, 0, 0] = n
        tok[:, 1:, 0] = f
        tok[:, :, 1] = np.arange(n + 1)
        return tok, y.astype(np.int64)

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "n": self.n}
