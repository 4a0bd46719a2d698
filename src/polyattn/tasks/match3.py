"""Match3 mod M (Sanford et al. 2023; Kozachinskiy et al. 2025, "Strassen attention"; DESIGN §6).

**The rule.** A sequence ``x_1..x_n`` has values in ``[1, M-1]``. The label of position ``i`` is

    y_i = 1  iff  there are positions j, k in [1, n] with  x_i + x_j + x_k ≡ 0 (mod M)

with ``j`` and ``k`` ranging over *all* positions: ``j = k``, ``j = i`` or ``k = i`` are allowed.
This is DESIGN §6's definition and the Strassen-attention paper's (its §3.2.2 excludes the value 0
precisely because ``0 + 0 + 0 ≡ 0`` would make the label trivially 1, i.e. repeated positions
count). It depends only on ``x_i`` and the *set* of values present, so labels cost ``O(B · M²)``:
``y_i = [(-x_i mod M) ∈ S + S]`` with ``S`` the values present.

**Encoding** (the one layout used by training, :mod:`polyattn.theory` constructions and tests):
tokens ``[B, N, 1]`` holding the value; with ``bos=True`` a BOS token (value 0) comes first
(``N = n + 1``; its label is :data:`IGNORE`). A BOS token gives attention a "no match" sink,
which the hand-set tensor-attention construction needs (:func:`polyattn.constructions.match3_model`).

**Data.** Finite, as in the paper: a pool of base sequences is drawn once (``pool`` seed stream),
deduplicated by *multiset* (permutations of one multiset are the same base), and split into
``test_size`` test bases and ``train_size`` training bases **before** any augmentation. A training
batch picks training bases and applies a random permutation of positions to each (labels move with
their tokens), so no test sequence, nor any permutation of one, is ever trained on.
Two base distributions:

* ``distribution="uniform"``: i.i.d. uniform values (almost every label is 1 unless ``M`` is of
  the order of ``n²``);
* ``distribution="binned"`` (the paper's Appendix C.1.3 balancing): candidates draw an alphabet
  of ``k ~ U{1..min(n, M-1)}`` distinct values and fill the ``n`` positions from it uniformly;
  they are kept so that each of the four bins of the per-sequence positive fraction
  (:data:`BIN_EDGES`: ``[0, .25), [.25, .5), [.5, .75), [.75, 1]``) holds a quarter of the
  training and of the test bases (the paper's generator differs in how it skews candidates; the
  bins and the quarter-per-bin balance are the same).

``pair_matches=False`` rejects every base sequence with a *pair-only* match, i.e. positions
``i, j`` (``i = j`` allowed) with ``2 x_i + x_j ≡ 0``: then every match uses three distinct values,
no test on pairs of tokens (which one-layer self-attention can express) predicts any label, and
the rule with distinct positions gives the same labels. Under the binned distribution such
matches carry 50-90% of the positives, so they set the shortcut a pairwise mechanism can reach.
"""

from __future__ import annotations

import numpy as np

from ..errors import PolyAttentionError
from .base import IGNORE, Batch, Task, rng_for

__all__ = ["Match3", "match3_labels", "match3_bins", "pair_only_matches", "BIN_EDGES", "DISTRIBUTIONS"]

POOL_STREAM = 2
#: upper edges of the per-sequence positive-fraction bins (last bin includes 1.0)
BIN_EDGES = (0.25, 0.5, 0.75)
DISTRIBUTIONS = ("uniform", "binned")


def match3_labels(x: np.ndarray, modulus: int) -> np.ndarray:
    """Per-token Match3 labels of values ``x`` ``[B, n]`` (int64 ``[B, n]``; rule in the module doc).

    The number of ordered value pairs summing to each residue is the circular self-convolution
    of the presence vector, computed by FFT: ``O(B · (n + M log M))``."""
    x = np.asarray(x, dtype=np.int64)
    if x.ndim != 2:
        raise PolyAttentionError(f"match3_labels expects values [B, n], got shape {x.shape}")
    M = int(modulus)
    xs = x % M
    present = np.zeros((x.shape[0], M))
    np.put_along_axis(present, xs, 1.0, axis=1)
    f = np.fft.rfft(present, axis=1)
    pairs = np.fft.irfft(f * f, n=M, axis=1)  # pairs[b, s] = #{(a, c) present: a + c = s mod M}
    return (np.take_along_axis(pairs, (-xs) % M, axis=1) > 0.5).astype(np.int64)


def pair_only_matches(x: np.ndarray, modulus: int) -> np.ndarray:
    """``[B, n]`` -> bool ``[B, n]``: position ``i`` has a match using only two distinct values,
    ``2 x_i + x_j ≡ 0`` or ``x_i + 2 x_j ≡ 0 (mod M)`` for some position ``j`` (``O(B · n²)``)."""
    x = np.asarray(x, dtype=np.int64)
    a = (2 * x[:, :, None] + x[:, None, :]) % modulus == 0  # a[i, j]: 2 x_i + x_j ≡ 0
    return (a | a.swapaxes(1, 2)).any(-1)  # a[j, i]: x_i + 2 x_j ≡ 0


def match3_bins(labels: np.ndarray) -> np.ndarray:
    """Bin (0..3) of each sequence's fraction of positive scored labels (``[B, N]`` -> ``[B]``)."""
    lab = np.asarray(labels)
    keep = lab != IGNORE
    frac = (lab == 1).sum(1) / np.maximum(keep.sum(1), 1)
    return np.digitize(frac, BIN_EDGES).astype(np.int64)


class Match3(Task):
    """Match3 mod ``modulus`` on ``n`` values, per-token labels (see the module docstring)."""

    name = "match3"
    readout = "all"

    def __init__(self, n: int = 16, modulus: int = 128, train_size: int = 20000, test_size: int = 2000,
                 bos: bool = False, distribution: str = "uniform", pair_matches: bool = True) -> None:
        if n < 3 or modulus < 3:
            raise PolyAttentionError(f"match3 needs n >= 3 and modulus >= 3, got n={n}, modulus={modulus}")
        if train_size < 1 or test_size < 1:
            raise PolyAttentionError("match3 needs train_size >= 1 and test_size >= 1")
        if distribution not in DISTRIBUTIONS:
            raise PolyAttentionError(
                f"match3 distribution must be one of {', '.join(DISTRIBUTIONS)}, got {distribution!r}")
        if distribution == "binned" and (train_size % 4 or test_size % 4):
            raise PolyAttentionError("match3 distribution='binned' needs train_size and test_size "
                                     "divisible by 4 (a quarter per bin)")
        self.n, self.modulus = int(n), int(modulus)
        self.train_size, self.test_size = int(train_size), int(test_size)
        self.bos, self.distribution, self.pair_matches = bool(bos), distribution, bool(pair_matches)
        self.seq_len = self.n + int(self.bos)
        self.num_classes = 2
        self.vocab_sizes = (self.modulus,)  # value 0 is BOS (never a sequence value)
        self._split: tuple[np.ndarray, np.ndarray] | None = None

    # ------------------------------------------------------------------ encoding
    def encode(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Values ``[B, n]`` in ``[1, M-1]`` -> ``(tokens int64 [B, N, 1], labels int64 [B, N])``."""
        x = np.asarray(values, dtype=np.int64)
        if x.ndim != 2 or x.shape[1] != self.n:
            raise PolyAttentionError(f"Match3 values must be [B, n={self.n}], got shape {x.shape}")
        if x.size and (x.min() < 1 or x.max() >= self.modulus):
            raise PolyAttentionError(f"Match3 values must lie in 1..{self.modulus - 1}")
        lab = match3_labels(x, self.modulus)
        if self.bos:
            x = np.concatenate([np.zeros((x.shape[0], 1), np.int64), x], 1)
            lab = np.concatenate([np.full((lab.shape[0], 1), IGNORE, np.int64), lab], 1)
        return x[:, :, None], lab

    def _draw(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """``size`` candidate base sequences ``[size, n]`` from the configured distribution."""
        M, n = self.modulus, self.n
        if self.distribution == "uniform":
            return rng.integers(1, M, size=(size, n))
        k = rng.integers(1, min(n, M - 1) + 1, size=size)
        alphabet = np.argsort(rng.random((size, M - 1)), axis=1) + 1  # a random order of 1..M-1
        pick = (rng.random((size, n)) * k[:, None]).astype(np.int64)  # uniform in [0, k)
        return np.take_along_axis(alphabet, pick, axis=1)

    def _candidates(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """Draws of :meth:`_draw` that pass the ``pair_matches`` filter (possibly fewer than ``size``)."""
        x = self._draw(rng, size)
        if not self.pair_matches:
            x = x[~pair_only_matches(x, self.modulus).any(1)]
        return x

    def sample(self, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Fresh sequences from the base distribution (no split, no bin balancing)."""
        x = self._candidates(rng, size)
        for _ in range(1000):
            if len(x) >= size:
                break
            x = np.concatenate([x, self._candidates(rng, size)])
        if len(x) < size:
            raise PolyAttentionError("too few Match3 sequences without pair-only matches; "
                                     "raise the modulus or lower n")
        return self.encode(x[:size])

    # ------------------------------------------------------------------ finite data
    def split(self) -> tuple[np.ndarray, np.ndarray]:
        """``(train_bases, test_bases)`` values ``[*, n]``, disjoint as multisets (split before
        augmentation); with ``distribution="binned"`` each quarter of each part is one bin."""
        if self._split is not None:
            return self._split
        key = [POOL_STREAM, self.n, self.modulus, self.train_size, self.test_size]
        key += [1] if self.distribution == "binned" else []
        key += [] if self.pair_matches else [2]
        rng = rng_for(*key)
        want = self.train_size + self.test_size
        groups = 1 if self.distribution == "uniform" else 4
        quota = want // groups
        chunk = max(int(want * 1.1) + 16, 4096)
        keys: set[bytes] = set()
        kept: list[list[np.ndarray]] = [[] for _ in range(groups)]
        count = [0] * groups
        for _ in range(400):  # draw until every group is full (small spaces need more draws)
            x = self._candidates(rng, chunk)
            g = np.zeros(len(x), np.int64) if groups == 1 else match3_bins(match3_labels(x, self.modulus))
            srt = np.sort(x, axis=1)
            for row, key_row, b in zip(x, srt, g):
                if count[b] >= quota:
                    continue
                key = key_row.tobytes()
                if key in keys:
                    continue
                keys.add(key)
                kept[b].append(row)
                count[b] += 1
            if min(count) >= quota:
                break
        if min(count) < quota:
            raise PolyAttentionError(
                f"only {sum(count)} distinct Match3 base multisets ({count} per group, {quota} wanted "
                f"each) for n={self.n}, modulus={self.modulus}, distribution={self.distribution!r}, "
                f"pair_matches={self.pair_matches}; "
                "lower train_size/test_size"
            )
        t_per = self.test_size // groups
        train, test = [], []
        for rows in kept:
            arr = np.stack(rows)[rng.permutation(quota)]
            test.append(arr[:t_per])
            train.append(arr[t_per:])
        tr, te = np.concatenate(train), np.concatenate(test)
        self._split = (tr[rng.permutation(len(tr))], te[rng.permutation(len(te))])
        return self._split

    def train_batch(self, seed: int, step: int, size: int) -> Batch:
        """Training bases (uniformly chosen) with a random permutation of positions each."""
        import torch

        train, _ = self.split()
        rng = rng_for(0, seed, step)
        x = train[rng.integers(0, train.shape[0], size=size)]
        x = np.take_along_axis(x, rng.permuted(np.tile(np.arange(self.n), (size, 1)), axis=1), axis=1)
        tok, lab = self.encode(x)
        return Batch(torch.from_numpy(tok), torch.from_numpy(lab))

    def test_set(self, size: int | None = None) -> Batch:
        """The held-out bases (the first ``size`` of them), unpermuted."""
        import torch

        _, test = self.split()
        if size is not None:
            test = test[:size]
        tok, lab = self.encode(test)
        return Batch(torch.from_numpy(tok), torch.from_numpy(lab))

    def describe(self) -> dict[str, object]:
        d: dict[str, object] = {**super().describe(), "n": self.n, "modulus": self.modulus,
                                "train_size": self.train_size, "test_size": self.test_size}
        if self.bos:  # only non-default options, so older summaries compare equal
            d["bos"] = True
        if self.distribution != "uniform":
            d["distribution"] = self.distribution
        if not self.pair_matches:
            d["pair_matches"] = False
        return d
