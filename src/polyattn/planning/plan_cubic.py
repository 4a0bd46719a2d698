"""Fused cubic kernels: when they apply and with which chunks (pure Python).

The plain triangle ``x1*x2 + x1*x3 + x2*x3`` (Strassen) and ``x1*x2*x3`` without masks or
causality run on fused BLAS kernels (:mod:`polyattn.ops.cubic`). This module is the one place
that decides which kernel runs and how it is chunked; the kernels only read
:class:`~polyattn.planning.details.FusedCubic`.
"""

from __future__ import annotations

from .details import FusedCubic, StepKind
from .spec import ProblemSpec

__all__ = [
    "FUSED_CHUNK_BYTES",
    "DENSE_TRIANGLE_TUPLES",
    "DENSE_TRIANGLE_MAX_LEN",
    "fused_kind",
    "fused_cubic",
    "fused_cost",
]

#: Working-set bound of one chunk of the fused cubic kernels, bytes.
FUSED_CHUNK_BYTES = 64 * 2**20
#: At most this many (batch x n1 x n2 x n3) tuples, the fused triangle materialises the logits of a
#: query-row chunk with an exact per-row max (no n^3-sized exp is cheaper than separable shifts at
#: large n, but at training sizes the separable kernel's tiny batched GEMMs dominate).
DENSE_TRIANGLE_TUPLES = 2**24
#: ... and only while every sequence is at most this long: from n ~ 64 on, the row-wise kernel's n^3
#: exps cost more than the separable kernel's GEMM overhead (forward at b=1, n=128, d=32: 17 ms vs
#: 6 ms; training step at b=64, n=32, d=64: row-wise 85 ms vs separable 138 ms; 1 thread).
DENSE_TRIANGLE_MAX_LEN = 64

_TRIANGLE = ((1, 2), (1, 3), (2, 3))
_TENSOR3 = ((1, 2, 3),)


def fused_kind(spec: ProblemSpec) -> StepKind | None:
    """The fused kernel that computes ``spec`` exactly, or ``None`` (masks, causality, other h)."""
    if spec.num_variables != 3 or spec.mask_pairs or spec.causal:
        return None
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


def _row_bytes(spec: ProblemSpec, kind: StepKind) -> int:
    """Bytes of one query row's working set in the row-wise kernels."""
    n1, n2, n3 = spec.seq_lens
    extra = spec.head_dim if kind == StepKind.FUSED_TENSOR3 else 0  # the q1*q2 GEMM operand
    return spec.batch * n2 * (n3 + 2 * _channels(spec) + extra) * spec.itemsize


def fused_cubic(spec: ProblemSpec, kind: StepKind, budget: int) -> FusedCubic:
    """Chunks of the fused kernel ``kind`` for ``spec``: a chunk's working set stays below
    :data:`FUSED_CHUNK_BYTES` and the whole call below ``budget`` where one row / column allows."""
    n1, n2, n3 = spec.seq_lens
    C = _channels(spec)
    b, isz = spec.batch, spec.itemsize
    if kind == StepKind.FUSED_TRIANGLE:
        factors = (n1 * n2 + n1 * n3 + n2 * n3) * b * isz
        per_col = (n1 + n2) * n3 * b * isz
        room = min(FUSED_CHUNK_BYTES, (budget - factors) // 2)
        zc = max(1, min(C, room // max(1, per_col)))
        return FusedCubic(kind, row_chunk=n1, col_chunk=zc, fallback=True)
    if kind == StepKind.FUSED_TENSOR3:
        room = min(FUSED_CHUNK_BYTES, budget // 2)
    else:
        room = min(FUSED_CHUNK_BYTES, budget - (n1 * n2 + n1 * n3 + n2 * n3) * b * isz)
    rows = max(1, min(n1, room // max(1, _row_bytes(spec, kind))))
    return FusedCubic(kind, row_chunk=rows, col_chunk=C, fallback=False)


def fused_cost(spec: ProblemSpec, fc: FusedCubic) -> tuple[float, float]:
    """``(flops, peak working bytes)`` of the fused kernel."""
    n1, n2, n3 = spec.seq_lens
    C = _channels(spec)
    b, isz, d = spec.batch, spec.itemsize, spec.head_dim
    if fc.kind == StepKind.FUSED_TENSOR3:
        flops = 2.0 * n1 * n2 * n3 * (d + C) * b
        return flops, float(fc.row_chunk * _row_bytes(spec, fc.kind) * 2)
    flops = 2.0 * n1 * n2 * n3 * C * b
    factors = (n1 * n2 + n1 * n3 + n2 * n3) * b * isz
    if fc.kind == StepKind.FUSED_TRIANGLE_ROWWISE:
        return flops, float(factors + fc.row_chunk * _row_bytes(spec, fc.kind))
    return flops, float(factors + 2 * fc.col_chunk * (n1 + n2) * n3 * b * isz)
