"""Fused cubic kernels: when they apply, with which blocks, and what they cost (pure Python).

The plain triangle ``x1*x2 + x1*x3 + x2*x3`` (Strassen) and ``x1*x2*x3`` without masks or
causality run on fused BLAS kernels (:mod:`polyattn.ops.cubic`), forward and backward (custom
autograd functions that recompute per block instead of storing ``n^3`` intermediates). This module
is the one place that decides which kernel runs and how it is blocked; the kernels only read
:class:`~polyattn.planning.details.FusedCubic`.

**Row-wise kernels** (``x1*x2*x3``; the triangle at small ``n``) work on blocks of
``row_chunk`` query rows x ``key_chunk`` rows of ``x2`` x all ``n3`` rows of ``x3``: the logits block
``[batch, row_chunk * key_chunk, n3]`` is written by one GEMM and then read by the max, the ``exp2``,
the row sums and the ``V3`` GEMM. It is sized to stay in cache (:data:`BLOCK_BYTES`), not by the
memory budget: the working set of the whole call is ``O(block + n * (d + dv))``, forward and backward.

**Separable triangle**: three ``n x n`` exp-factors per head and chunks of ``col_chunk`` value columns,
each one ``[n, n] @ [n, Z*n]`` GEMM (forward) or three (backward); ``O(n^2)`` memory per head.

:func:`fused_cost` returns the forward FLOPs and the **peak of forward + backward** (every buffer the
kernels allocate, the output, and the gradients of the inputs), the figure the benchmark compares with
the measured growth of the resident set (``polyattn bench kernels``, ``fwdbwd`` rows).
"""

from __future__ import annotations

from .details import FusedCubic, StepKind
from .spec import ProblemSpec

__all__ = [
    "FUSED_CHUNK_BYTES",
    "BLOCK_BYTES",
    "MIN_BLOCK_ROWS",
    "PARALLEL_MIN_TUPLES",
    "ROW_SPLIT_PARTS",
    "DENSE_TRIANGLE_TUPLES",
    "DENSE_TRIANGLE_MAX_LEN",
    "fused_kind",
    "worker_parts",
    "fused_cubic",
    "fused_cost",
    "fused_forward_bytes",
]

#: Working-set bound of one value-column chunk of the separable triangle (one GEMM operand), bytes.
FUSED_CHUNK_BYTES = 64 * 2**20
#: Logits block of the row-wise kernels (all heads of the block together), bytes. Measured on this
#: 2-core EPYC (2 MB L2 per core, 32 MB L3), ``x1*x2*x3`` forward, d = dv = 32, float32:
#: GFLOP/s of the whole kernel vs the block size at n = 512 (1 thread): 0.25 MB 27.9, 0.5 MB 36.4,
#: 1 MB 36.1, 2 MB 37.1, 4 MB 34.6, 8 MB 26.5 (the old 26 MB chunks: 15.9); beyond L2 the five passes
#: over the block (GEMM write, max, exp2, sum, GEMM read) go to L3/DRAM.
BLOCK_BYTES = 2 * 2**20
#: Fewer logit rows than this per head and block make the GEMMs skinny and the per-block Python
#: overhead visible (0.25 MB blocks at n = 512 above: 128 rows per head, -25%); with several heads
#: the block may then exceed BLOCK_BYTES, but the worker threads split it by heads.
MIN_BLOCK_ROWS = 256
#: From this many (batch x n1 x n2 x n3) tuples on, the row-wise kernels split their blocks over the
#: intra-op threads as independent parts (:mod:`polyattn.ops.threads`); below, handing work to a
#: thread (~0.1 ms) costs more than it saves (2^18 tuples take ~0.5 ms on one core).
PARALLEL_MIN_TUPLES = 2**18
#: With fewer heads than threads the parts are ranges of query rows, at most this many: each holds
#: its own blocks and gradient accumulators, and the memory figure counts them (batch 1 only).
ROW_SPLIT_PARTS = 2
#: At most this many (batch x n1 x n2 x n3) tuples, the triangle runs row-wise with an exact
#: per-row max (no n^3-sized exp is cheaper than separable shifts at large n, but at training sizes
#: the separable kernel's tiny batched GEMMs dominate).
DENSE_TRIANGLE_TUPLES = 2**24
#: ... and only while every sequence is at most this long: from n ~ 64 on, the row-wise kernel's n^3
#: exps cost more than the separable kernel's GEMM overhead (forward at b=1, n=128, d=32: 17 ms vs
#: 6 ms; training step at b=64, n=32, d=64: row-wise 85 ms vs separable 138 ms; 1 thread).
DENSE_TRIANGLE_MAX_LEN = 64

#: Every fused-kernel memory figure is the summed tensor sizes times (1 + SLACK_FRACTION) plus
#: SLACK_BYTES: allocator rounding, BLAS packing buffers, worker-thread state. Measured peak-RSS
#: growth over the summed sizes (forward + backward, d = 32): up to +4% (x1*x2*x3, n = 256, b*h = 1).
SLACK_FRACTION = 0.15
SLACK_BYTES = 64 * 2**10


def _slack(nbytes: float) -> int:
    return int(nbytes * (1.0 + SLACK_FRACTION)) + SLACK_BYTES

_TRIANGLE = ((1, 2), (1, 3), (2, 3))
_TENSOR3 = ((1, 2, 3),)


def fused_kind(spec: ProblemSpec) -> StepKind | None:
    """The fused kernel that computes ``spec`` exactly, or ``None`` (masks, causality, other h)."""
    if spec.num_variables != 3 or spec.mask_pairs or spec.causal or spec.empty:
        return None  # (an empty problem runs no kernel: strategy.make_plan)
    monos = spec.polynomial.monomials
    if monos == _TENSOR3:
        return StepKind.FUSED_TENSOR3
    if monos != _TRIANGLE:
        return None
    n1, n2, n3 = spec.seq_lens
    small = spec.batch * n1 * n2 * n3 <= DENSE_TRIANGLE_TUPLES and max(n1, n2, n3) <= DENSE_TRIANGLE_MAX_LEN
    # the separable kernel's underflow fallback is a data-dependent branch: not under torch.func
    small = small or spec.functorch
    return StepKind.FUSED_TRIANGLE_ROWWISE if small else StepKind.FUSED_TRIANGLE


def _channels(spec: ProblemSpec) -> int:
    return spec.value_dim + 1  # values plus the all-ones channel that carries the normaliser


# ------------------------------------------------------------------------------ row-wise kernels
def _rowwise_blocks(spec: ProblemSpec, block_bytes: int) -> tuple[int, int]:
    """``(row_chunk, key_chunk)`` whose logits block ``batch * R * Bb * n3`` fits ``block_bytes``:
    whole x2 ranges while a query row fits (grouping query rows), else one query row and a slice of
    x2 rows (at least ``MIN_BLOCK_ROWS`` per head, rounded to a multiple of 16 for the GEMMs)."""
    n1, n2, n3 = spec.seq_lens
    b, isz = spec.batch, spec.itemsize
    row = b * n2 * n3 * isz  # one query row against all of x2 and x3
    if row <= block_bytes:
        return max(1, min(n1, block_bytes // row)), n2
    per_key = b * n3 * isz
    keys = max(block_bytes // per_key, MIN_BLOCK_ROWS, 1)
    if keys >= 32:
        keys -= keys % 16
    return 1, min(n2, keys)


def worker_parts(spec: ProblemSpec) -> int:
    """Worker-thread parts of a row-wise kernel: :data:`ROW_SPLIT_PARTS` from
    :data:`PARALLEL_MIN_TUPLES` tuples on, else 1 (:attr:`FusedCubic.parts`)."""
    n1, n2, n3 = spec.seq_lens
    return ROW_SPLIT_PARTS if spec.batch * n1 * n2 * n3 >= PARALLEL_MIN_TUPLES else 1


def _rowwise_bytes(spec: ProblemSpec, kind: StepKind, rows: int, keys: int) -> tuple[int, int]:
    """``(forward peak, forward + backward peak)`` of a row-wise kernel, bytes.

    Every buffer the kernel allocates (:mod:`polyattn.ops.cubic_rowwise`), per head: per part
    (worker thread) in the forward the logits block ``R*Bb*n3``, the ``x1*x2`` operand ``R*Bb*d``,
    the partial results of one query-row chunk ``y [R, n2, dv]`` (+ their concatenation) and
    shifts; in the backward two blocks (probabilities, logit gradients), ``R*Bb*(2d + 3dv)`` GEMM
    operands/results and the gradient accumulators of q1..q3, V2, V3. Shared: scaled / contiguous
    copies of the inputs, the result ``[n1, dv+1]`` and the output, the incoming gradient, and the
    gradients handed to autograd. The triangle adds its three ``n x n`` logit factors (forward and
    backward; their gradients go to q block by block). With batch 1 a large call runs as
    ``ROW_SPLIT_PARTS`` parts.
    """
    n1, n2, n3 = spec.seq_lens
    b, isz, d, dv = spec.batch, spec.itemsize, spec.head_dim, spec.value_dim
    C = dv + 1
    n = n1 + n2 + n3
    tensor3 = kind == StepKind.FUSED_TENSOR3
    block = rows * keys * n3
    grads = n * d + (n2 + n3) * dv
    shared = grads + 2 * n1 * C + 2 * n1  # input copies, acc + output, shifts and normalisers
    # tensor3: the x1*x2 operand (forward), and in the backward the operand, dL @ q3 and two products
    part_fwd = block + rows * keys * (dv + 2 + (d if tensor3 else 0)) + 2 * rows * n2 * (dv + 2)
    part_bwd = 2 * block + rows * keys * (3 * dv + 2 + (4 * d if tensor3 else 0)) + grads
    if not tensor3:  # the logit factors; per block their gradients R*Bb + (R + Bb)*n3
        factors = n1 * n2 + n1 * n3 + n2 * n3
        part_fwd += factors
        part_bwd += factors + rows * keys + (rows + keys) * (n3 + d)
    parts = worker_parts(spec)
    parts = parts if b < parts else 1  # split by heads: the per-head buffers are not duplicated
    fwd = shared + parts * part_fwd
    bwd = shared + n1 * C + grads + parts * part_bwd
    return _slack(fwd * b * isz), _slack(max(fwd, bwd) * b * isz)


# ------------------------------------------------------------------------------ separable triangle
def _triangle_bytes(spec: ProblemSpec, zc: int) -> tuple[int, int]:
    """``(forward peak, forward + backward peak)`` of the separable triangle, bytes.

    Forward: three exp-factors ``E12, E13, E23`` and one chunk's GEMM operand ``[n2, Z*n3]`` and
    result ``[n1, Z*n3]``. Backward: the three factors again (recomputed, not stored between the
    passes), one factor gradient at a time plus one ``n x n`` temporary, and per chunk an operand
    and a result ``[n, Z*n]``; plus the O(n * (d + dv)) inputs, result and gradients.
    """
    n1, n2, n3 = spec.seq_lens
    b, isz, d, dv = spec.batch, spec.itemsize, spec.head_dim, spec.value_dim
    C = dv + 1
    nn = max(n1, n2, n3)
    factors = n1 * n2 + n1 * n3 + n2 * n3
    chunk = 2 * zc * nn * nn
    small = (n1 + n2 + n3) * (d + C) * 3 + 3 * n1 * C
    fwd = factors + chunk + small
    bwd = factors + 2 * nn * nn + chunk + small + 2 * (n1 + n2 + n3) * (d + C)
    return _slack(fwd * b * isz), _slack(max(fwd, bwd) * b * isz)


def fused_cubic(spec: ProblemSpec, kind: StepKind, budget: int) -> FusedCubic:
    """Blocks of the fused kernel ``kind`` for ``spec``.

    Row-wise kernels: the cache-sized block of :func:`_rowwise_blocks`, shrunk (halving the block)
    while the forward + backward peak exceeds ``budget``. Separable triangle: as many value columns
    per GEMM as fit :data:`FUSED_CHUNK_BYTES` and the budget (at least one).
    """
    C = _channels(spec)
    if kind == StepKind.FUSED_TRIANGLE:
        n1, n2, n3 = spec.seq_lens
        nn = max(n1, n2, n3)
        per_col = spec.batch * nn * nn * spec.itemsize
        zc = max(1, min(C, FUSED_CHUNK_BYTES // per_col))
        while zc > 1 and _triangle_bytes(spec, zc)[1] > budget:
            zc -= 1
        return FusedCubic(kind, row_chunk=n1, col_chunk=zc, fallback=True, key_chunk=n2)
    block = BLOCK_BYTES
    rows, keys = _rowwise_blocks(spec, block)
    while (rows > 1 or keys > 1) and _rowwise_bytes(spec, kind, rows, keys)[1] > budget:
        block //= 2
        rows, keys = _rowwise_blocks(spec, block)
        if block < spec.itemsize:
            rows, keys = 1, 1
    return FusedCubic(kind, row_chunk=rows, col_chunk=C, fallback=False, key_chunk=keys, parts=worker_parts(spec))


def fused_cost(spec: ProblemSpec, fc: FusedCubic) -> tuple[float, float]:
    """``(forward flops, peak bytes of forward + backward)`` of the fused kernel.

    FLOPs (2 per multiply-add, 1 per add; exps not counted), everything the kernel computes:
    ``x1*x2*x3``: per tuple ``2 d`` (logits GEMM) ``+ 2 dv`` (V3 GEMM) ``+ 1`` (normaliser row sum);
    separable triangle: ``2 d (n1 n2 + n1 n3 + n2 n3)`` (the three logit factors) plus per tuple
    ``2 (dv + 1)`` (the GEMM with the ones column); row-wise triangle: the factors plus per tuple
    ``2`` (adding them) ``+ 2 dv + 1``. The backward costs about three times the forward.
    """
    n1, n2, n3 = spec.seq_lens
    C = _channels(spec)
    b, d, dv = spec.batch, spec.head_dim, spec.value_dim
    tuples = float(n1 * n2 * n3 * b)
    v3 = 2.0 * dv if (len(spec.has_values) < 2 or spec.has_values[1]) else 0.0
    factors = 2.0 * d * (n1 * n2 + n1 * n3 + n2 * n3) * b
    if fc.kind == StepKind.FUSED_TENSOR3:
        flops = tuples * (2.0 * d + v3 + 1.0)
    elif fc.kind == StepKind.FUSED_TRIANGLE:
        flops = factors + tuples * 2.0 * C
    else:
        flops = factors + tuples * (3.0 + v3)
    return flops, float(_fused_bytes(spec, fc)[1])


def fused_forward_bytes(spec: ProblemSpec, fc: FusedCubic) -> float:
    """Peak bytes of the forward pass alone (inference, ``torch.no_grad``)."""
    return float(_fused_bytes(spec, fc)[0])


def _fused_bytes(spec: ProblemSpec, fc: FusedCubic) -> tuple[int, int]:
    """``(forward peak, forward + backward peak)`` of the planned fused kernel."""
    if fc.kind == StepKind.FUSED_TRIANGLE:
        return _triangle_bytes(spec, fc.col_chunk)
    return _rowwise_bytes(spec, fc.kind, fc.row_chunk, fc.key_chunk)
