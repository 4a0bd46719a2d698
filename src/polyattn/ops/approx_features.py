r"""Symmetric-power feature maps of ``method="approx"``, built feature-major for fast products.

``F(q)[alpha] = q^alpha`` for every multi-index ``alpha in N^d`` with ``|alpha| <= p`` (rank
``r = C(d+p, p)``), in the order of :func:`polyattn.planning.approx.feature_table`: degree by
degree, colexicographic inside a degree, so that degree ``i`` is the concatenation over coordinates
``c`` of a *prefix* of degree ``i-1`` times ``q[c]`` (contiguous slices, ``d`` multiplies per degree).

**Layout (why feature-major).** The kernels need ``F @ A`` and ``F^T M`` with ``A``, ``M`` only
``dv+1`` columns wide. As ``[rows, r] @ [r, dv+1]`` those run at ~7 GFLOP/s in MKL on one core
(``N = dv+1 = 9`` is a pathological GEMM shape), but the same products written transposed,
``A^T [dv+1, r] @ F^T [r, rows]`` and ``M^T [dv+1, rows] @ F [rows, r]``, reach 50-65 GFLOP/s when
``F^T`` is a cache-sized chunk. So features are produced as ``F^T``: ``[..., r, rows]``.

**Construction cost.** ``rows * r`` entries written, one slice multiply per (degree, coordinate):
``1 + d (p - 1)`` torch ops per chunk. Outside autograd the chunk buffer and all slice views are
allocated once per chunk shape and reused (the per-op dispatch cost, not the arithmetic, dominates
small chunks). Under autograd a differentiable construction (``torch.cat``) is used instead.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

from ..planning.approx import feature_table

__all__ = ["Features", "padded_stride", "aligned_empty", "construction_steps", "STRIDE_ALIGN"]


@lru_cache(maxsize=32)
def _degree_tables(d: int, degree: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(|alpha|, 1/alpha!)`` of every feature as tensors (int64, float64)."""
    _, inv_fact, degs = feature_table(d, degree)
    return torch.tensor(degs, dtype=torch.int64), torch.tensor(inv_fact, dtype=torch.float64)


#: Row strides of GEMM operands are padded to a multiple of this many elements, plus this many when
#: the stride is a power of two (MKL ran the split's segment GEMMs 1.1-1.3x slower at odd strides
#: such as r_1 = 561, and power-of-two strides alias in the cache).
STRIDE_ALIGN = 16


def padded_stride(n: int) -> int:
    """``n`` rounded up to a multiple of :data:`STRIDE_ALIGN`, one more step if a power of two."""
    m = -(-n // STRIDE_ALIGN) * STRIDE_ALIGN
    return m + STRIDE_ALIGN if m & (m - 1) == 0 else m


def aligned_empty(*shape: int, dtype: torch.dtype, device: torch.device, zero: bool = False) -> torch.Tensor:
    """An uninitialised (or zeroed) ``shape`` tensor whose row stride is :func:`padded_stride` of its
    last dim: a view of a slightly wider buffer, for GEMM operands."""
    make = torch.zeros if zero else torch.empty
    return make(*shape[:-1], padded_stride(shape[-1]), dtype=dtype, device=device)[..., : shape[-1]]


@lru_cache(maxsize=64)
def construction_steps(counts: tuple[tuple[int, ...], ...], d: int) -> tuple[tuple[int, int, int, int], ...]:
    """``(src, c, dst, k)`` per construction step: feature rows ``[dst, dst + k)`` are rows
    ``[src, src + k)`` times coordinate ``c`` (row ``1 + c``); row 0 is 1, rows ``1..d`` the
    coordinates. One step per (degree >= 2, coordinate), in order (each reads finished rows only)."""
    steps = []
    prev, off = 1, 1 + d
    for cnt in counts:
        start = off
        for c, k in enumerate(cnt):
            steps.append((prev, c, off, k))
            off += k
        prev = start
    return tuple(steps)


class _ChunkBuffer:
    """A reusable ``[*batch, r, rows]`` buffer plus the slice views of every construction step."""

    def __init__(self, counts: tuple[tuple[int, ...], ...], degree: int, d: int, rank: int,
                 shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> None:
        *batch, _, rows = shape  # shape of q^T: [*batch, d, rows]
        self.out = aligned_empty(*batch, rank, rows, dtype=dtype, device=device)
        self.out[..., 0, :] = 1
        self.coords = self.out[..., 1 : 1 + d, :] if degree >= 1 else None
        steps = []
        for src, c, dst, k in construction_steps(counts, d):
            steps.append((self.out[..., src : src + k, :], self.out[..., 1 + c : 2 + c, :],
                          self.out[..., dst : dst + k, :]))
        self.steps = steps

    def fill(self, qt: torch.Tensor) -> torch.Tensor:
        if self.coords is not None:
            self.coords.copy_(qt)
        mul = torch.mul
        for src, coord, dst in self.steps:
            mul(src, coord, out=dst)
        return self.out


class Features:
    """``F(q)[..., alpha] = q^alpha`` for all ``|alpha| <= p`` (order of :func:`feature_table`).

    ``cols(qt)`` takes ``qt = q^T`` (``[..., d, rows]``) and returns ``F^T`` (``[..., r, rows]``);
    outside autograd the result is a reused buffer, valid until the next call with the same shape.
    ``__call__(q)`` returns ``F`` as ``[..., rows, r]`` (a transposed view of a fresh tensor).
    """

    def __init__(self, d: int, degree: int, scale: float, device: torch.device, dtype: torch.dtype) -> None:
        counts, inv_fact, degs = feature_table(d, degree)
        self.d, self.degree = d, degree
        self.counts = counts
        self.scale, self.inv_fact, self.degs = scale, inv_fact, degs
        self.dtype, self.device = dtype, device
        self.rank = len(inv_fact)
        self._buffers: dict[tuple[int, ...], _ChunkBuffer] = {}

    def coef(self, a: tuple[float, ...]) -> torch.Tensor:
        """``coef[alpha] = a_{|alpha|} s^{|alpha|} |alpha|! / alpha!`` so that ``P(x_m) = sum coef prod_v F_v``."""
        per_degree = torch.tensor([a[k] * self.scale**k * math.factorial(k) for k in range(self.degree + 1)],
                                  dtype=torch.float64)
        degs, inv_fact = _degree_tables(self.d, self.degree)
        return (per_degree[degs] * inv_fact).to(dtype=self.dtype, device=self.device)

    def cols(self, qt: torch.Tensor) -> torch.Tensor:
        """``F^T`` (``[..., r, rows]``) from ``qt = q^T`` (``[..., d, rows]``)."""
        if torch.is_grad_enabled() and qt.requires_grad:
            return self._differentiable(qt)
        key = tuple(qt.shape)
        buf = self._buffers.get(key)
        if buf is None and qt.shape[-1] * self.rank < 4096:  # small: building the view list costs more
            return self._fresh(qt)
        if buf is None:
            if len(self._buffers) >= 4:  # a chunk loop uses two shapes (full and last chunk)
                self._buffers.clear()
            buf = self._buffers[key] = _ChunkBuffer(self.counts, self.degree, self.d, self.rank, key,
                                                    qt.dtype, qt.device)
        return buf.fill(qt)

    def __call__(self, q: torch.Tensor) -> torch.Tensor:
        qt = q.transpose(-1, -2)
        if torch.is_grad_enabled() and q.requires_grad:
            return self._differentiable(qt).transpose(-1, -2)
        return self._fresh(qt).transpose(-1, -2)

    def _fresh(self, qt: torch.Tensor) -> torch.Tensor:
        """The features written into a new tensor (no view lists: one-off calls on small inputs)."""
        d = qt.shape[-2]
        out = torch.empty(*qt.shape[:-2], self.rank, qt.shape[-1], dtype=qt.dtype, device=qt.device)
        out[..., 0, :] = 1
        if self.degree >= 1:
            out[..., 1 : 1 + d, :] = qt
        for src, c, dst, k in construction_steps(self.counts, d):
            torch.mul(out[..., src : src + k, :], out[..., 1 + c : 2 + c, :], out=out[..., dst : dst + k, :])
        return out

    def _differentiable(self, qt: torch.Tensor) -> torch.Tensor:
        blocks = [torch.ones_like(qt[..., :1, :])]
        if self.degree >= 1:
            qt = qt.contiguous()
            blocks.append(qt)
        prev = qt
        for cnt in self.counts:
            prev = torch.cat([prev[..., :k, :] * qt[..., c : c + 1, :] for c, k in enumerate(cnt)], dim=-2)
            blocks.append(prev)
        return torch.cat(blocks, dim=-2)
