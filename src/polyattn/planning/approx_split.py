r"""Top-degree split of the feature-space products (tree strategy, plain edges; pure Python).

The tree kernel's products are ``E = A F^T`` (a summary applied to a chunk of rows) and
``A += M F`` (rows summed into a summary), with ``F = F(q)`` the symmetric-power features of rank
``r = C(d+p, p)`` and ``A``, ``M`` only ``dv+1`` rows wide. Two facts make them slow when ``F`` is
materialised: the top degree ``p`` is most of the rank (76 % at ``d = 16, p = 5``) and costs a
memory-bound construction, and a GEMM with ``dv + 1 = 9`` rows runs at ~60 % of a square one.

**The split.** In the feature order of :func:`~polyattn.planning.approx_bound.feature_table` the
degree-``p`` block is ``[G_{p-1}[:k_c] * q_c for c < d]`` (``k_c = C(c+p-1, p-1)``, a *prefix* of
the degree ``p-1`` block). So with ``G`` the features of degree ``<= p-1`` (rank
``r_1 = C(d+p-1, p-1)``)

.. math::
    E = A_{low} G^T + \sum_c q_c \odot (A_c\, G_{p-1}[:k_c]^T), \qquad
    A_{low} \mathrel{+}= M G, \quad A_c \mathrel{+}= (M \odot q_c)\, G_{p-1}[:k_c].

The top degree is never built (the multiply by ``q_c`` happens on ``dv+1``-row results), and
the ``d + 1`` *slots* (the low part and one per coordinate ``c``) all read the same ``G``: laid out
slot-major (``[S (dv+1), r_1]``, slot ``c`` zero outside its range of ``G``'s rows), the rows of
``G`` are cut into *segments* where the same slots are active, and each segment is ONE GEMM with
``(dv+1) x (active slots)`` rows (up to ``(d+1)(dv+1) = 153``) — a shape BLAS runs near its peak.
Same FLOPs as the materialised products (plus the zero padding of merged short segments,
:data:`SEGMENT_MIN_ROWS`), ``r_1 / r`` of the construction.

Slot order: slot 0 is the low part (``G`` rows ``[0, r_1)``), slot ``1 + j`` is coordinate
``c = d - 1 - j`` (rows ``[t_0, t_0 + k_c)`` with ``t_0`` the start of degree ``p - 1``): the
slots active in a segment are then a prefix of the slot list. Everything here is decided by the
planner and stored in the plan (:class:`SplitTop`); the kernel (:mod:`polyattn.ops.approx_split`)
only executes it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from .approx_bound import feature_table
from .spec import ProblemSpec

__all__ = ["SplitTop", "SPLIT_MIN_RANK", "SEGMENT_MIN_ROWS", "SPLIT_CHUNK_BYTES", "NATIVE_CHUNK_ROWS", "native_chunk_rows", "split_top", "slot_table", "split_bytes",
           "cache_rows"]

#: Below this feature rank the materialised products are used: the split's extra GEMM calls per
#: chunk cost more than they save (path, n = 65536, dv = 8, 1 thread: materialised 1.1-1.25x faster
#: at r = 153-969, even at r = 1771, split 1.25-1.3x faster at r = 1820-2925).
SPLIT_MIN_RANK = 1500
#: Adjacent top-degree segments shorter than this are merged (their inactive slots are zero-padded):
#: a GEMM over fewer rows of ``G`` costs more in call overhead than the padding's FLOPs.
SEGMENT_MIN_ROWS = 150
#: Row chunks aim at this many bytes of low features plus the two slot-stacked work buffers
#: (measured at n = 65536, dv = 8, 1 thread: 256 rows at r_1 = 4845, ~1000 at r_1 = 969). Half of it
#: (~L2, 512 rows at r_1 = 969) ran the forward 1.05-1.15x faster in some runs, within noise in
#: others, but doubled the number of chunks, and with it the resident set of a training call
#: (heap fragmentation grows with the chunk count: docs/approximation.md, limitations): not taken.
SPLIT_CHUNK_BYTES = 5 * 2**20
#: Rows per chunk when the native kernel runs (no grad): its work buffers do not depend on the chunk,
#: so chunks only need to be long enough for the per-call cost and the thread split to vanish
#: (2 threads at d = 16: 240-row chunks scaled 1.0-1.2x, 4096-row chunks 1.6-1.9x); 100 tiles of 48.
NATIVE_CHUNK_ROWS = 4800
#: ... and short enough that torch's elementwise ops on a chunk's ``[batch, dv+1, rows]`` messages
#: stay below torch's parallel grain (32768 elements): a parallel torch op leaves its OpenMP workers
#: spinning, against the kernel's own threads (2 threads, d = 16, p = 4: 0.27 s at 4800 rows,
#: 0.20 s at 3600, 1 thread 0.30 s). Never below NATIVE_MIN_ROWS (per-call costs).
TORCH_GRAIN = 32768
NATIVE_MIN_ROWS = 480


@lru_cache(maxsize=64)
def slot_table(d: int, degree: int) -> tuple[int, int, tuple[tuple[int, int, int], ...]]:
    """``(r_1, t_0, slots)``: low rank, start of degree ``p-1`` in ``G``, and per slot
    ``(first G row, end G row, first feature index)`` (slot order of the module docstring)."""
    counts, _, _ = feature_table(d, degree)
    r1 = math.comb(d + degree - 1, degree - 1)
    t0 = r1 - math.comb(d + degree - 2, degree - 1)
    cnt = counts[-1]
    offs = [r1]
    for k in cnt[:-1]:
        offs.append(offs[-1] + k)
    slots = [(0, r1, 0)] + [(t0, t0 + cnt[c], offs[c]) for c in reversed(range(d))]
    return r1, t0, tuple(slots)


@dataclass(frozen=True)
class SplitTop:
    """How the tree kernel runs its plain-edge products with the top degree split off.

    ``segments``: ``(first G row, end G row, active slots)``; ``rows``: rows per chunk.
    ``native``: threads of the native kernel that runs the no-grad products (feature construction
    fused in, every slot over exactly its own rows: :mod:`polyattn.ops.approx_native`), 0 for the
    torch GEMMs over ``segments``; under autograd the torch GEMMs run either way.
    ``native_note``: why the native kernel is not used (empty when it is, or when not asked).
    ``native_rows``: rows per chunk when the native kernel runs (its memory does not grow with the
    chunk: longer chunks only cut per-call costs and balance its threads).
    """

    d: int
    degree: int
    low_rank: int
    segments: tuple[tuple[int, int, int], ...]
    rows: int
    native: int = 0
    native_note: str = ""
    native_rows: int = 0

    @property
    def slots(self) -> int:
        return self.d + 1

    def padding(self) -> float:
        """GEMM work over useful work (>= 1; the zero padding of merged segments)."""
        _, _, slots = slot_table(self.d, self.degree)
        useful = sum(e - s for s, e, _ in slots)
        return sum((b - a) * k for a, b, k in self.segments) / useful

    def describe(self) -> str:
        ms = sorted({k for _, _, k in self.segments})
        gemms = (f"{self.slots} slots in {len(self.segments)} GEMMs of {ms[0]}-{ms[-1]} slots x (dv+1) rows "
                 f"per product, row chunks of {self.rows}")
        if self.native:
            threads = f"{self.native} thread{'s' if self.native > 1 else ''}"
            return (f"top degree split: features of degree <= {self.degree - 1} (rank {self.low_rank:,}), "
                    f"{self.slots} slots; products outside autograd: native kernel, construction fused in "
                    f"({threads}, row chunks of {self.native_rows}); under autograd: torch, {gemms}")
        note = f" ({self.native_note})" if self.native_note else ""
        return f"top degree split: features built to degree {self.degree - 1} (rank {self.low_rank:,}), {gemms}{note}"

    def to_dict(self) -> dict[str, object]:
        return {"low_rank": self.low_rank, "segments": [list(s) for s in self.segments], "rows": self.rows,
                "native_threads": self.native, "native_note": self.native_note, "native_rows": self.native_rows}


def _segments(d: int, degree: int) -> tuple[tuple[int, int, int], ...]:
    r1, t0, slots = slot_table(d, degree)
    ends = [e for _, e, _ in slots]
    bounds = sorted({0, t0, *ends})
    segs: list[list[int]] = []
    for a, b in zip(bounds, bounds[1:]):
        active = sum(1 for e in ends if e >= b) if a >= t0 else 1
        if segs and a >= t0 and segs[-1][0] >= t0 and b - segs[-1][0] <= SEGMENT_MIN_ROWS:
            segs[-1][1], segs[-1][2] = b, max(segs[-1][2], active)
        else:
            segs.append([a, b, active])
    return tuple((a, b, k) for a, b, k in segs if b > a)


def split_top(spec: ProblemSpec, rank: int, degree: int, budget: int,
              native: tuple[int, str] = (0, "")) -> SplitTop | None:
    """The split layout for a tree plan of this degree, or None (materialised products).

    ``native``: ``(threads, why not)`` of the native kernel where the inputs are known (the caller
    checks dtype, device and that the library builds)."""
    d = spec.head_dim
    if degree < 2 or d < 2 or rank < SPLIT_MIN_RANK:
        return None
    r1 = math.comb(d + degree - 1, degree - 1)
    work = 2 * (d + 1) * (spec.value_dim + 1)  # the two slot-stacked buffers per row
    rows = cache_rows(spec, r1 + work, SPLIT_CHUNK_BYTES, 3 * r1 + work + 2 * (spec.value_dim + 1), budget)
    threads, note = native
    native_rows = native_chunk_rows(spec.batch, spec.value_dim + 1, max(spec.seq_lens)) if threads else 0
    return SplitTop(d, degree, r1, _segments(d, degree), rows, threads, note, native_rows)


def native_chunk_rows(batch: int, z: int, longest: int) -> int:
    """Rows per no-grad chunk of the native kernel (:data:`NATIVE_CHUNK_ROWS`, :data:`TORCH_GRAIN`):
    whole 48-row lane tiles, at most the longest sequence."""
    fit = TORCH_GRAIN // max(1, batch * z) // 48 * 48
    return int(max(1, min(NATIVE_CHUNK_ROWS, max(NATIVE_MIN_ROWS, fit), longest)))


def cache_rows(spec: ProblemSpec, cache_elems: int, target_bytes: int, mem_elems: int, budget: int) -> int:
    """Rows per chunk: about ``target_bytes`` of the ``cache_elems`` per row that should stay in cache,
    a multiple of 16 (of 8 when small), within ``budget`` at ``mem_elems`` per row, at most the
    longest sequence."""
    rows = target_bytes // max(1, spec.batch * cache_elems * spec.itemsize)
    rows = rows // 16 * 16 if rows >= 32 else max(8, rows // 8 * 8)
    rows = min(rows, max(1, budget // max(1, spec.batch * mem_elems * spec.itemsize)))
    return int(max(1, min(max(spec.seq_lens), rows)))


def split_bytes(spec: ProblemSpec, split: SplitTop) -> float:
    """Forward working memory of the split products: chunk buffers (features, two slot-stacked work
    buffers), five slot-stacked summaries (an edge's prepared one, the accumulating one, and the
    copies of stacking), three summaries in feature order, two full-length messages and the
    transposed copies of three variables' queries."""
    z = spec.value_dim + 1
    stacked = (split.d + 1) * z
    rank = math.comb(split.d + split.degree, split.degree)
    elems = (split.rows * (3 * split.low_rank + 2 * stacked) + 5 * stacked * split.low_rank + 3 * z * rank
             + max(spec.seq_lens) * (z * 2 + 3 * spec.head_dim))
    return float(spec.batch * elems * spec.itemsize)
