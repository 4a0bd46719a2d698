"""Separable fused triangle ``x1*x2 + x1*x3 + x2*x3`` (Strassen): forward and backward in O(n^2).

With ``a, b, c`` indexing ``x1, x2, x3`` and ``Fij = s * qi qj^T``::

    acc[a, z] = sum_{b,c} E12[a,b] E13[a,c] E23[b,c] V2[b,z] V3[c,z]        (z <= dv; V[:, dv] = 1)

Separable log-shifts keep every factor in (0, 1]: ``E23 = exp(F23 - s3[b])`` (row max),
``E13 = exp(F13 - s2[a])``, ``E12 = exp(F12 + s3[b] - s1[a])`` (row max of ``F12 + s3``); all in base
2 (``exp2`` is ~3x faster than ``exp`` here and has no slow path for underflowing results). The
shifts are an upper bound of the joint max, so a row's normaliser may underflow; the caller checks
it and then recomputes exactly by the generic elimination.

**Forward**, per chunk of ``Z`` value columns (the plan's ``col_chunk``): ``H[b,(z,c)] = V2[b,z]
E23[b,c] V3[c,z]``, one GEMM ``M = E12 @ H`` (``[n1, n2] @ [n2, Z*n3]``, the ``n^3`` work) and
``acc[a,z] = sum_c M[a,z,c] E13[a,c]``.

**Backward** (custom autograd function; nothing ``n^2 * dv``-sized is stored between the passes: the
three factors are recomputed from the saved shifts). With ``G = d loss / d acc``, per chunk:

* ``K = E12 @ (V2[b,z] E23[b,c])``; ``U = G[a,z] K``: ``dE13 = sum_z U V3[c,z]``, ``dV3[c,z] = sum_a U E13``
* ``J = E13 @ (V3[c,z] E23[b,c])^T``; ``U = G[a,z] J``: ``dE12 = sum_z U V2[b,z]``, ``dV2[b,z] = sum_a U E12``
* ``N = E12^T @ (G[a,z] E13[a,c])``: ``dE23 = sum_z N V2[b,z] V3[c,z]``

each family one ``[n, n] @ [n, Z*n]`` GEMM per chunk (3x the forward), then ``dF = dE * E`` (natural
log units) and ``dq = s * dF @ q`` before the next family, so one factor gradient lives at a time.
Memory: three factors, one gradient, one ``n x n`` temporary and one chunk's operand and result.
"""

from __future__ import annotations

import torch

from . import trace
from .cubic_rowwise import LOG2E, fold_vmap, no_double_backward, prod

__all__ = ["separable_triangle"]


def _ones(v: torch.Tensor | None, like: torch.Tensor, n: int, dv: int) -> torch.Tensor:
    """``[B, n, dv + 1]``: the values with the all-ones column appended (None: all ones)."""
    B = like.shape[0]
    if v is None:
        return like.new_ones(()).expand(B, n, dv + 1)
    return torch.cat([v, like.new_ones(()).expand(B, n, 1)], dim=-1)


def _factors(q1, q2, q3, scale, shifts=None):  # noqa: ANN001, ANN202
    """``(E12, E13, E23, (s1, s2, s3))``; with ``shifts`` given, they are reused (the backward)."""
    c = scale * LOG2E
    f23 = torch.bmm(q2, q3.transpose(-1, -2)).mul_(c)
    s3 = f23.amax(-1, keepdim=True) if shifts is None else shifts[2]
    e23 = f23.sub_(s3).exp2_()  # [B, n2, n3]
    f13 = torch.bmm(q1, q3.transpose(-1, -2)).mul_(c)
    s2 = f13.amax(-1, keepdim=True) if shifts is None else shifts[1]
    e13 = f13.sub_(s2).exp2_()  # [B, n1, n3]
    h12 = torch.bmm(q1, q2.transpose(-1, -2)).mul_(c).add_(s3.transpose(-1, -2))
    s1 = h12.amax(-1, keepdim=True) if shifts is None else shifts[0]
    e12 = h12.sub_(s1).exp2_()  # [B, n1, n2]
    return e12, e13, e23, (s1, s2, s3)


def _forward(q1, q2, q3, v2, v3, scale, zc, dv):  # noqa: ANN001, ANN202
    e12, e13, e23, shifts = _factors(q1, q2, q3, scale)
    B, n1, n2 = e12.shape
    n3 = e23.shape[-1]
    C = dv + 1
    v2c, v3c = _ones(v2, q1, n2, dv), _ones(v3, q1, n3, dv)
    acc = q1.new_empty(B, n1, C)
    for z0 in range(0, C, zc):
        z1 = min(C, z0 + zc)
        Z = z1 - z0
        trace.emit("fused", kind="fused-triangle", rows=(0, n1), keys=(0, n2), cols=(z0, z1))
        # H[b, z, c] = V2[b, z] E23[b, c] V3[c, z]: both values folded into the right GEMM operand
        h = prod(v2c[..., z0:z1].unsqueeze(-1), e23.unsqueeze(-2))  # [B, n2, Z, n3]
        h.mul_(v3c[..., z0:z1].transpose(-1, -2).unsqueeze(1))
        m = torch.bmm(e12, h.view(B, n2, Z * n3))  # [B, n1, Z*n3]: the n^3 work, one GEMM
        del h
        # acc[a, z] = sum_c M[a, z, c] E13[a, c]: a batched mat-vec over the rows a
        acc[:, :, z0:z1] = torch.bmm(m.view(B * n1, Z, n3), e13.reshape(B * n1, n3, 1)).view(B, n1, Z)
        del m
    return acc, *shifts


def _backward(q1, q2, q3, v2, v3, shifts, g, scale, zc, need):  # noqa: ANN001, ANN202
    e12, e13, e23, _ = _factors(q1, q2, q3, scale, shifts)
    B, n1, n2 = e12.shape
    n3 = e23.shape[-1]
    C = g.shape[-1]
    dv = C - 1
    v2c, v3c = _ones(v2, q1, n2, dv), _ones(v3, q1, n3, dv)
    v2t, v3t = v2c.transpose(-1, -2), v3c.transpose(-1, -2)  # [B, C, n]
    dv2 = q1.new_zeros(B, C, n2) if (v2 is not None and need[3]) else None
    dv3 = q1.new_zeros(B, C, n3) if (v3 is not None and need[4]) else None
    chunks = [(z0, min(C, z0 + zc)) for z0 in range(0, C, zc)]

    # family 13: K = E12 @ (V2 E23) -> dE13, dV3
    de = torch.zeros_like(e13)
    for z0, z1 in chunks:
        Z = z1 - z0
        trace.emit("fused", kind="fused-triangle-backward", rows=(0, n1), keys=(0, n2), cols=(z0, z1))
        h = prod(v2c[..., z0:z1].unsqueeze(-1), e23.unsqueeze(-2))  # [B, n2, Z, n3]
        u = torch.bmm(e12, h.view(B, n2, Z * n3)).view(B, n1, Z, n3)
        del h
        u.mul_(g[:, :, z0:z1, None])
        for j in range(Z):
            de.addcmul_(u[:, :, j], v3t[:, None, z0 + j])
        if dv3 is not None:
            dv3[:, z0:z1] = u.mul_(e13[:, :, None]).sum(1)
        del u
    de.mul_(e13)  # dF13 (natural logits): E13 = exp(F13 - s2)
    dq1 = torch.bmm(de, q3)
    dq3 = torch.bmm(de.transpose(-1, -2), q1)

    # family 12: J = E13 @ (V3 E23^T) -> dE12, dV2
    de = torch.zeros_like(e12)
    for z0, z1 in chunks:
        Z = z1 - z0
        h = prod(v3c[..., z0:z1].unsqueeze(-1), e23.transpose(-1, -2).unsqueeze(-2))  # [B, n3, Z, n2]
        u = torch.bmm(e13, h.view(B, n3, Z * n2)).view(B, n1, Z, n2)
        del h
        u.mul_(g[:, :, z0:z1, None])
        for j in range(Z):
            de.addcmul_(u[:, :, j], v2t[:, None, z0 + j])
        if dv2 is not None:
            dv2[:, z0:z1] = u.mul_(e12[:, :, None]).sum(1)
        del u
    de.mul_(e12)
    dq1.baddbmm_(de, q2)
    dq2 = torch.bmm(de.transpose(-1, -2), q1)

    # family 23: N = E12^T @ (G E13) -> dE23
    de = torch.zeros_like(e23)
    e12t = e12.transpose(-1, -2)
    for z0, z1 in chunks:
        Z = z1 - z0
        h = prod(g[:, :, z0:z1, None], e13.unsqueeze(-2))  # [B, n1, Z, n3]
        u = torch.bmm(e12t, h.view(B, n1, Z * n3)).view(B, n2, Z, n3)
        del h
        u.mul_(v2c[:, :, z0:z1, None])
        for j in range(Z):
            de.addcmul_(u[:, :, j], v3t[:, None, z0 + j])
        del u
    de.mul_(e23)
    dq2.baddbmm_(de, q3)
    dq3.baddbmm_(de.transpose(-1, -2), q2)
    gv2 = dv2[:, :dv].transpose(-1, -2) if dv2 is not None else None
    gv3 = dv3[:, :dv].transpose(-1, -2) if dv3 is not None else None
    return dq1.mul_(scale), dq2.mul_(scale), dq3.mul_(scale), gv2, gv3


class _Triangle(torch.autograd.Function):
    @staticmethod
    def forward(q1, q2, q3, v2, v3, scale, zc, dv):  # noqa: ANN001, ANN205
        return _forward(q1, q2, q3, v2, v3, scale, zc, dv)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # noqa: ANN001
        q1, q2, q3, v2, v3, scale, zc, dv = inputs
        ctx.save_for_backward(q1, q2, q3, v2, v3, *output[1:])
        ctx.meta = (scale, zc)
        ctx.mark_non_differentiable(*output[1:])

    @staticmethod
    def backward(ctx, g, *_):  # noqa: ANN001, ANN205
        q1, q2, q3, v2, v3, s1, s2, s3 = ctx.saved_tensors
        scale, zc = ctx.meta
        with torch.no_grad():
            grads = _backward(q1, q2, q3, v2, v3, (s1, s2, s3), g, scale, zc, ctx.needs_input_grad)
        anchor = next(x for x in (q1, q2, q3, v2, v3) if x is not None and x.requires_grad)
        return (*no_double_backward(grads, anchor), None, None, None)

    @staticmethod
    def vmap(info, in_dims, q1, q2, q3, v2, v3, scale, zc, dv):  # noqa: ANN001, ANN205
        xs = fold_vmap(info.batch_size, in_dims[:5], (q1, q2, q3, v2, v3))
        outs = _Triangle.apply(*xs, scale, zc, dv)
        size = info.batch_size
        return tuple(o.reshape(size, -1, *o.shape[1:]) for o in outs), (0,) * len(outs)


def separable_triangle(
    q1: torch.Tensor,
    q2: torch.Tensor,
    q3: torch.Tensor,
    v2: torch.Tensor | None,
    v3: torch.Tensor | None,
    *,
    scale: float,
    col_chunk: int,
    dv: int,
) -> torch.Tensor:
    """``acc [B, n1, dv + 1]`` (values, then the normaliser) in chunks of ``col_chunk`` columns;
    shapes ``q* [B, n*, d]``, ``V* [B, n*, dv]`` or None."""
    return _Triangle.apply(q1, q2, q3, v2, v3, float(scale), int(col_chunk), int(dv))[0]
