"""Fused BLAS kernels for the two cubic mechanisms: Strassen (triangle) and ``x1*x2*x3``.

Both are exact, forward and backward. The planner (:mod:`polyattn.planning.plan_cubic`) decides when
they run and with which blocks (:class:`~polyattn.planning.FusedCubic`); the elimination kernel calls
:func:`fast_cubic` with that decision, and an input where the separable triangle cannot certify its
accuracy takes the plan's generic elimination steps.

* ``fused-tensor3`` and ``fused-triangle-rowwise`` (small triangles): :mod:`.cubic_rowwise`, blocks of
  query rows x x2 rows with an exact per-row max; memory O(block + n (d + dv)) in forward and backward.
* ``fused-triangle``: :mod:`.cubic_triangle`, separable log-shifts, ``[n,n] @ [n, Z*n]`` GEMMs per
  chunk of value columns; O(n^2) memory per head in forward and backward.

Each kernel returns the unnormalised accumulator ``acc [B, n1, dv+1]`` whose last channel is the
softmax normaliser; the division (and its gradient) happens here. Their backward passes are custom
autograd functions that recompute per block: no ``n^3`` (tensor) or ``n^2 * dv`` (triangle) tensor
is kept for the backward, so the plan's memory figure holds in training too.
"""

from __future__ import annotations

import torch

from ..planning import FusedCubic, StepKind
from .cubic_rowwise import rowwise_cubic
from .cubic_triangle import separable_triangle
from .inputs import Problem

__all__ = ["fast_cubic"]


def fast_cubic(prob: Problem, fused: FusedCubic) -> torch.Tensor | None:
    """Run the planned fused kernel; ``None`` when the separable triangle declines (underflow)."""
    q1, q2, q3, v2, v3 = _flat(prob)
    dv, s = prob.dv, prob.scale
    if fused.kind == StepKind.FUSED_TRIANGLE:
        acc = separable_triangle(q1, q2, q3, v2, v3, scale=s, col_chunk=fused.col_chunk, dv=dv)
        den = acc[..., dv].detach()
        if bool((den < float(torch.finfo(acc.dtype).tiny) ** 0.5).any()):
            return None  # a row's dominant term may have underflowed: the generic path recomputes exactly
    else:
        triangle = fused.kind == StepKind.FUSED_TRIANGLE_ROWWISE
        acc = rowwise_cubic(q1, q2, q3, v2, v3, scale=s, row_chunk=fused.row_chunk,
                            key_chunk=fused.key_chunk, parts=fused.parts, triangle=triangle, dv=dv)
    out = acc[..., :dv] / acc[..., dv:]
    return out.reshape(*prob.batch_shape, prob.n(1), dv)


def _flat(prob: Problem) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """q1..q3 as ``[B, n, d]`` and V2, V3 as ``[B, n, dv]`` or None (value-less), B the flattened
    batch shape (broadcast dims are expanded; a reshape copies only where a view cannot be made)."""
    shape = prob.batch_shape

    def flat(x: torch.Tensor) -> torch.Tensor:
        return x.expand(*shape, *x.shape[-2:]).reshape(-1, *x.shape[-2:])

    q1, q2, q3 = (prob.q[j] for j in (1, 2, 3))
    assert q1 is not None and q2 is not None and q3 is not None
    v2, v3 = prob.v[2], prob.v[3]
    return (flat(q1), flat(q2), flat(q3), None if v2 is None else flat(v2), None if v3 is None else flat(v3))
