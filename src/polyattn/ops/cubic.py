"""Fused BLAS kernels for the two cubic mechanisms: Strassen (triangle) and ``x1*x2*x3``.

Both are exact and are used by :func:`polyattn.ops.elimination.elimination_attention` when the
problem is exactly one of these polynomials without masks or causality (``fast_cubic``); every
other case, and any input where the fast path cannot certify its accuracy, takes the generic
elimination. Values get an extra all-ones column, whose output is the softmax normaliser.

**Triangle** ``x1*x2 + x1*x3 + x2*x3`` (``a, b, c`` index ``x1, x2, x3``)::

    out[a, z] = sum_{b,c} exp(F12[a,b] + F13[a,c] + F23[b,c]) V2[b,z] V3[c,z] / (same with V = 1)

Separable log-shifts keep every factor in (0, 1]: ``E23 = exp(F23 - s3[b])`` (row max),
``E13 = exp(F13 - s2[a])``, ``E12 = exp(F12 + s3[b] - s1[a])`` (row max of ``F12 + s3``). Then per
value column ``z``: ``H_z[b, c] = V2[b, z] E23[b, c] V3[c, z]``, ``M_z = E12 @ H_z`` and
``out[a, z] = sum_c M_z[a, c] E13[a, c]``, i.e. ``n^3`` multiply-adds per column, done as one
``[n, n] @ [n, Z*n]`` GEMM per chunk of ``Z`` columns sized by :data:`CHUNK_BYTES` (memory
``O(n^2)`` per head, never ``n^2 * d``). The shifts
are an upper bound of the joint max, so a row's normaliser may underflow; if any normaliser is
below ``sqrt(tiny)`` the result is not trusted and ``None`` is returned (generic path, exact).

**x1*x2*x3**: per chunk of query rows ``R``, ``L[r,b,c] = s * sum_k q1[r,k] q2[b,k] q3[c,k]`` as one
GEMM ``[R*n2, d] @ [d, n3]``; exact per-row max shift (the dominant term is exactly 1, so nothing
relevant underflows); ``Y = exp(L - max) @ V3`` (GEMM) and ``out[r] = sum_b Y[r,b] * V2[b]``.
Memory ``O(R * n^2)`` per head with ``R`` sized by :data:`CHUNK_BYTES`.

Both run as plain torch ops, so autograd gives exact gradients (detached shifts are constants);
in-place updates are used only where autograd does not need the overwritten values.
"""

from __future__ import annotations

import torch

from ..planning import Plan
from ..planning.strategy import FUSED_CHUNK_BYTES
from .inputs import Problem

__all__ = ["fast_cubic", "CHUNK_BYTES"]

#: working-set bound of one chunk (bytes); the n x n exp-factors come on top
CHUNK_BYTES = FUSED_CHUNK_BYTES

TRIANGLE = ((1, 2), (1, 3), (2, 3))
TENSOR3 = ((1, 2, 3),)


def fast_cubic(prob: Problem, plan: Plan) -> torch.Tensor | None:
    """The fused result when ``prob`` is a plain triangle or ``x1*x2*x3``, else None."""
    if prob.t != 3 or prob.masks or prob.causal:
        return None
    monos = prob.spec.polynomial.monomials
    if monos == TRIANGLE:
        return _triangle(prob)
    if monos == TENSOR3:
        return _tensor3(prob)
    return None


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


def _triangle(prob: Problem) -> torch.Tensor | None:
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
    zc = max(1, min(C, CHUNK_BYTES // max(1, (n1 + n2) * n3 * B * e12.element_size())))
    outs = []
    for z0 in range(0, C, zc):
        z1 = min(C, z0 + zc)
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


def _tensor3(prob: Problem) -> torch.Tensor:
    (q1, q2, q3), (v2, v3), dv = _flat(prob)
    s = prob.scale
    grad = _needs_grad(q1, q2, q3)
    B, n1, d = q1.shape
    n2, n3 = q2.shape[1], q3.shape[1]
    C = dv + 1
    per_row = B * n2 * (n3 + C + d) * q1.element_size()
    rc = max(1, min(n1, CHUNK_BYTES // max(1, per_row)))
    q3t = (q3 * s).transpose(-1, -2)  # [B, d, n3]
    v3t = v3.transpose(-1, -2)  # [B, C, n3]
    v2t = v2.transpose(-1, -2).unsqueeze(-1).contiguous()  # [B, C, n2, 1]
    outs = []
    for r0 in range(0, n1, rc):
        r1 = min(n1, r0 + rc)
        R = r1 - r0
        k = (q1[:, r0:r1].unsqueeze(2) * q2.unsqueeze(1)).reshape(B, R * n2, d)
        logits = torch.matmul(k, q3t).reshape(B, R, n2 * n3)
        del k
        lam = logits.detach().amax(-1, keepdim=True)
        # exp's backward needs its result, not its input, so the shift may happen in place
        p = torch.exp(logits - lam) if grad else logits.sub_(lam).exp_()
        del logits
        # Y^T = V3^T P^T straight from the GEMM ([B, C, R*n2]), so the V2 contraction is a
        # batched mat-vec without any transpose copy
        yt = torch.matmul(v3t, p.reshape(B, R * n2, n3).transpose(-1, -2)).reshape(B, C, R, n2)
        del p
        outs.append(torch.matmul(yt, v2t).squeeze(-1))  # [B, C, R]
        del yt
    acc = (torch.cat(outs, dim=-1) if len(outs) > 1 else outs[0]).transpose(-1, -2)  # [B, n1, C]
    return _finish(prob, acc, dv)
