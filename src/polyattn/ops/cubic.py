"""Fused BLAS kernels for the two cubic mechanisms: Strassen (triangle) and ``x1*x2*x3``.

Both are exact. The planner (:mod:`polyattn.planning.plan_cubic`) decides when they run and with
which chunks (:class:`~polyattn.planning.FusedCubic`); the elimination kernel calls
:func:`fast_cubic` with that decision, and an input where the separable triangle cannot certify
its accuracy takes the plan's generic elimination steps. Values get an extra all-ones column, whose output is the softmax normaliser.

**Triangle** ``x1*x2 + x1*x3 + x2*x3`` (``a, b, c`` index ``x1, x2, x3``)::

    out[a, z] = sum_{b,c} exp(F12[a,b] + F13[a,c] + F23[b,c]) V2[b,z] V3[c,z] / (same with V = 1)

Separable log-shifts keep every factor in (0, 1]: ``E23 = exp(F23 - s3[b])`` (row max),
``E13 = exp(F13 - s2[a])``, ``E12 = exp(F12 + s3[b] - s1[a])`` (row max of ``F12 + s3``). Then per
value column ``z``: ``H_z[b, c] = V2[b, z] E23[b, c] V3[c, z]``, ``M_z = E12 @ H_z`` and
``out[a, z] = sum_c M_z[a, c] E13[a, c]``, i.e. ``n^3`` multiply-adds per column, done as one
``[n, n] @ [n, Z*n]`` GEMM per chunk of ``Z`` columns (the plan's ``col_chunk``; memory
``O(n^2)`` per head, never ``n^2 * d``). The shifts
are an upper bound of the joint max, so a row's normaliser may underflow; if any normaliser is
below ``sqrt(tiny)`` the result is not trusted and ``None`` is returned (generic path, exact).

**Small triangles** (``batch * n1 * n2 * n3 <= planning.plan_cubic.DENSE_TRIANGLE_TUPLES`` and
every ``n <= DENSE_TRIANGLE_MAX_LEN``, decided by the planner) instead run row-wise like
``x1*x2*x3`` below, with ``L[r,b,c] = F12[r,b] + F13[r,c] + F23[b,c]``: at training sizes the
separable kernel's many tiny batched GEMMs cost far more than the ``n^3`` exps, and the exact
per-row max needs no underflow check.

**x1*x2*x3**: per chunk of query rows ``R``, ``L[r,b,c] = s * sum_k q1[r,k] q2[b,k] q3[c,k]`` as one
GEMM ``[R*n2, d] @ [d, n3]``; exact per-row max shift (the dominant term is exactly 1, so nothing
relevant underflows); ``Y = exp(L - max) @ V3`` (GEMM) and ``out[r] = sum_b Y[r,b] * V2[b]`` (elementwise, summed).
Memory ``O(R * n^2)`` per head with ``R`` the plan's ``row_chunk``.

Both run as plain torch ops, so autograd gives exact gradients (detached shifts are constants);
in-place updates are used only where autograd does not need the overwritten values.
"""

from __future__ import annotations

import torch

from ..planning import FusedCubic, StepKind
from . import trace
from .inputs import Problem

__all__ = ["fast_cubic"]


def fast_cubic(prob: Problem, fused: FusedCubic) -> torch.Tensor | None:
    """Run the planned fused kernel; ``None`` when the separable triangle declines (underflow)."""
    if fused.kind == StepKind.FUSED_TRIANGLE:
        return _triangle(prob, fused.col_chunk)
    if fused.kind == StepKind.FUSED_TRIANGLE_ROWWISE:
        return _triangle_rowwise(prob, fused.row_chunk)
    return _tensor3(prob, fused.row_chunk)


def _flat(prob: Problem) -> tuple[list[torch.Tensor], list[torch.Tensor], int]:
    """q1..q3 as [B, n, d] and V2', V3' as [B, n, dv+1] (ones column appended; None -> ones)."""
    shape = prob.batch_shape
    qs = []
    for j in (1, 2, 3):
        q = prob.q[j]
        assert q is not None
        qs.append(q.expand(*shape, *q.shape[-2:]).reshape(-1, *q.shape[-2:]))
    B = qs[0].shape[0]
    dv = prob.dv
    vs = []
    for j in (2, 3):
        v = prob.v[j]
        n = prob.n(j)
        ones = torch.ones((), dtype=prob.dtype, device=prob.device)
        if v is None:
            vs.append(ones.expand(B, n, dv + 1))
        else:
            v = v.expand(*shape, *v.shape[-2:]).reshape(B, n, dv)
            vs.append(torch.cat([v, ones.expand(B, n, 1)], dim=-1))
    return qs, vs, dv


def _finish(prob: Problem, acc: torch.Tensor, dv: int) -> torch.Tensor:
    den = acc[..., dv:]
    out = acc[..., :dv] / den
    return out.reshape(*prob.batch_shape, prob.n(1), dv)


def _needs_grad(*xs: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(x.requires_grad for x in xs)


def _triangle(prob: Problem, zc: int) -> torch.Tensor | None:
    (q1, q2, q3), (v2, v3), dv = _flat(prob)
    s = prob.scale
    grad = _needs_grad(q1, q2, q3, v2, v3)
    f23 = torch.matmul(q2, q3.transpose(-1, -2)) * s
    s3 = f23.detach().amax(-1, keepdim=True)
    e23 = torch.exp(f23 - s3)  # [B, n2, n3]
    del f23
    f13 = torch.matmul(q1, q3.transpose(-1, -2)) * s
    e13 = torch.exp(f13 - f13.detach().amax(-1, keepdim=True))  # [B, n1, n3]
    del f13
    h12 = torch.matmul(q1, q2.transpose(-1, -2)) * s + s3.transpose(-1, -2)
    e12 = torch.exp(h12 - h12.detach().amax(-1, keepdim=True))  # [B, n1, n2]
    del h12
    B, n1, n2 = e12.shape
    n3 = e23.shape[-1]
    C = dv + 1
    outs = []
    for z0 in range(0, C, zc):
        z1 = min(C, z0 + zc)
        trace.emit("fused", kind="fused-triangle", rows=(0, n1), cols=(z0, z1))
        Z = z1 - z0
        # H[b, z, c] = V2[b, z] E23[b, c] V3[c, z]: both values folded into the right GEMM operand
        h = v2[..., z0:z1].unsqueeze(-1) * e23.unsqueeze(-2)  # [B, n2, Z, n3]
        v3z = v3[..., z0:z1].transpose(-1, -2).unsqueeze(1)  # [B, 1, Z, n3]
        h = h * v3z if grad else h.mul_(v3z)
        m = torch.matmul(e12, h.reshape(B, n2, Z * n3))  # [B, n1, Z*n3]: the n^3 work, one GEMM
        del h
        # out[a, z] = sum_c M[a, z, c] E13[a, c]: a batched mat-vec over the rows a
        o = torch.matmul(m.reshape(B * n1, Z, n3), e13.reshape(B * n1, n3, 1))
        del m
        outs.append(o.reshape(B, n1, Z))
    acc = torch.cat(outs, dim=-1) if len(outs) > 1 else outs[0]  # [B, n1, C]
    if bool((acc[..., dv].detach() < float(torch.finfo(acc.dtype).tiny) ** 0.5).any()):
        return None  # a row's dominant term may have underflowed: the generic path recomputes exactly
    return _finish(prob, acc, dv)


def _tensor3(prob: Problem, rc: int) -> torch.Tensor:
    (q1, q2, q3), vs, dv = _flat(prob)
    s = prob.scale
    q3t = (q3 * s).transpose(-1, -2)  # [B, d, n3]

    def logits(r0: int, r1: int) -> torch.Tensor:
        B, _, d = q1.shape
        k = (q1[:, r0:r1].unsqueeze(2) * q2.unsqueeze(1)).reshape(B, (r1 - r0) * q2.shape[1], d)
        return torch.matmul(k, q3t)  # [B, R*n2, n3]: the n^3 * d work, one GEMM

    return _rowwise(prob, logits, vs, dv, rc, "fused-tensor3")


def _triangle_rowwise(prob: Problem, rc: int) -> torch.Tensor:
    """Small problems: all ``R x n2 x n3`` logits of a row chunk at once, exact per-row max."""
    (q1, q2, q3), vs, dv = _flat(prob)
    s = prob.scale
    f23 = (torch.matmul(q2, q3.transpose(-1, -2)) * s).unsqueeze(1)  # [B, 1, n2, n3]
    f12 = torch.matmul(q1, q2.transpose(-1, -2)) * s  # [B, n1, n2]
    f13 = torch.matmul(q1, q3.transpose(-1, -2)) * s  # [B, n1, n3]

    def logits(r0: int, r1: int) -> torch.Tensor:
        B, n2, n3 = f23.shape[0], f23.shape[2], f23.shape[3]
        lg = f12[:, r0:r1].unsqueeze(-1) + f13[:, r0:r1].unsqueeze(-2) + f23  # [B, R, n2, n3]
        return lg.reshape(B, (r1 - r0) * n2, n3)

    return _rowwise(prob, logits, vs, dv, rc, "fused-triangle-rowwise")


def _rowwise(prob: Problem, logits_fn, vs: list[torch.Tensor], dv: int, rc: int, kind: str) -> torch.Tensor:
    """``out[r] = sum_{b,c} softmax_{b,c}(L[r,b,c]) V2[b] * V3[c]`` per chunk of query rows.

    ``logits_fn(r0, r1)`` returns ``L`` for rows ``r0:r1`` as ``[B, R*n2, n3]``. Exact per-row max
    shift (the dominant term is exactly 1, so nothing relevant underflows); ``Y = exp(L - max) @ V3``
    is one GEMM and the ``V2`` contraction an elementwise product summed over ``n2`` (a batched
    mat-vec here is many tiny BLAS calls, far slower in forward and backward at training sizes).
    """
    v2, v3 = vs
    B, n2, C = v2.shape
    n1 = prob.n(1)
    n3 = v3.shape[1]
    grad = torch.is_grad_enabled()
    outs = []
    for r0 in range(0, n1, rc):
        r1 = min(n1, r0 + rc)
        trace.emit("fused", kind=kind, rows=(r0, r1), cols=(0, C))
        R = r1 - r0
        lg = logits_fn(r0, r1).reshape(B, R, n2 * n3)
        lam = lg.detach().amax(-1, keepdim=True)
        # exp's backward needs its result, not its input, so the shift may happen in place
        p = torch.exp(lg - lam) if grad else lg.sub_(lam).exp_()
        del lg
        y = torch.matmul(p.reshape(B, R * n2, n3), v3).reshape(B, R, n2, C)
        del p
        outs.append((y * v2.unsqueeze(1)).sum(2))  # [B, R, C]
        del y
    acc = torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]  # [B, n1, C]
    return _finish(prob, acc, dv)

