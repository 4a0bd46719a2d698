"""r-fold function composition (DESIGN §6; the paper's setting is r = 2, m = 25, N = 51).

An example draws ``r`` independent uniform tables ``f_1..f_r : [m] -> [m]`` and a query
``x ∈ [m]``. The sequence lists every table entry as a token, table by table, then the query::

    token (table i, entry a) = (value f_i(a), index a, table i)       i = 0..r-1, a = 0..m-1
    query token (last)       = (value x,      index m, table r)       (m, r: "no index"/"query")

The label, read at the last position, is ``f_r(…f_1(x))`` (m classes). Sequence length
``N = r·m + 1``. A path polynomial ``h_r`` (tree-attention) can solve it in one layer and one
head: x1 = query, x2 = the entry of f_1 at x, x3 = the entry of f_2 at f_1(x), …
(:func:`polyattn.constructions.composition_model` sets such weights by hand on this layout).
Generation costs ``O(B · r · m)``.
"""

from __future__ import annotations

import numpy as np

from ..errors import PolyAttentionError
from .base import Task

__all__ = ["FunctionComposition", "compose"]


def compose(tables: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``f_r(…f_1(x))`` for tables ``[B, r, m]`` (``tables[b, i, a] = f_{i+1}(a)``) and queries ``[B]``."""
    y = np.asarray(x, dtype=np.int64)
    rows = np.arange(len(y))
    for i in range(tables.shape[1]):
        y = tables[rows, i, y]
    return y.astype(np.int64)


class FunctionComposition(Task):
    name = "composition"
    readout = "last"

    def __init__(self, r: int = 2, m: int = 25) -> None:
        if r < 1 or m < 2:
            raise PolyAttentionError(f"composition needs r >= 1 and m >= 2, got r={r}, m={m}")
        self.r, self.m = int(r), int(m)
        self.seq_len = self.r * self.m + 1
        self.num_classes = self.m
        self.vocab_sizes = (self.m, self.m + 1, self.r + 1)

    def encode(self, tables: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Tables ``[B, r, m]`` and queries ``[B]`` -> ``(tokens int64 [B, N, 3], labels int64 [B])``."""
        r, m = self.r, self.m
        tables, x = np.asarray(tables, dtype=np.int64), np.asarray(x, dtype=np.int64)
        size = len(x)
        if tables.shape != (size, r, m):
            raise PolyAttentionError(f"tables must be [B, r={r}, m={m}] and x [B]; got "
                                     f"{tables.shape} and {x.shape}")
        if size and (min(tables.min(), x.min()) < 0 or max(tables.max(), x.max()) >= m):
            raise PolyAttentionError(f"table values and queries must lie in 0..{m - 1}")
        tok = np.empty((size, self.seq_len, 3), dtype=np.int64)
        tok[:, : r * m, 0] = tables.reshape(size, r * m)
        tok[:, : r * m, 1] = np.tile(np.arange(m), r)
        tok[:, : r * m, 2] = np.repeat(np.arange(r), m)
        tok[:, -1] = np.stack([x, np.full(size, m), np.full(size, r)], axis=-1)
        return tok, compose(tables, x)

    def sample(self, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
        tables = rng.integers(0, self.m, size=(size, self.r, self.m))
        x = rng.integers(0, self.m, size=size)
        return self.encode(tables, x)

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "r": self.r, "m": self.m}
