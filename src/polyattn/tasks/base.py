"""Common interface of the polyadic tasks: seeded, deterministic batch generators.

A task produces integer token features ``[B, N, C]`` (``C`` feature channels with vocabulary sizes
``vocab_sizes``) and labels: ``[B]`` for ``readout == "last"`` (the answer at the last position)
or ``[B, N]`` for ``readout == "all"`` (one label per token; ``-100`` marks positions that are not
scored, the ``ignore_index`` of :func:`torch.nn.functional.cross_entropy`).

Determinism: a training batch is a pure function of ``(seed, step)`` and the test set a pure
function of the task's parameters (its own fixed seed stream, disjoint from every training
stream), so resumed and data-parallel runs see exactly the same data.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Task", "Batch", "rng_for", "TRAIN_STREAM", "TEST_STREAM", "IGNORE"]

TRAIN_STREAM = 0
TEST_STREAM = 1
#: label of positions that are not scored
IGNORE = -100


def rng_for(*key: int) -> np.random.Generator:
    """A numpy Generator that depends only on the integer ``key`` (PCG64 via SeedSequence)."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(k) for k in key])))


@dataclass(frozen=True)
class Batch:
    tokens: torch.Tensor  # int64 [B, N, C]
    labels: torch.Tensor  # int64 [B] or [B, N]

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def slice(self, sl: slice) -> Batch:
        return Batch(self.tokens[sl], self.labels[sl])


class Task(ABC):
    """A polyadic task. Subclasses set ``name``, ``vocab_sizes``, ``num_classes``, ``seq_len``,
    ``readout`` and implement :meth:`sample` (``size`` examples from a generator)."""

    name: str = "task"
    readout: str = "last"
    vocab_sizes: tuple[int, ...] = ()
    num_classes: int = 2
    seq_len: int = 0

    @abstractmethod
    def sample(self, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
        """``size`` fresh examples: ``(tokens int64 [size, N, C], labels int64)``."""

    def train_batch(self, seed: int, step: int, size: int) -> Batch:
        """The training batch for ``(seed, step)``: the same on every call, process and resume."""
        tok, lab = self.sample(rng_for(TRAIN_STREAM, seed, step), size)
        return Batch(torch.from_numpy(tok), torch.from_numpy(lab))

    def test_set(self, size: int) -> Batch:
        """The held-out evaluation set (independent of the training seed)."""
        tok, lab = self.sample(rng_for(TEST_STREAM, size), size)
        return Batch(torch.from_numpy(tok), torch.from_numpy(lab))

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "seq_len": self.seq_len,
            "num_classes": self.num_classes,
            "vocab_sizes": list(self.vocab_sizes),
            "readout": self.readout,
        }
