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

from collections.abc import Callable
from functools import partial
from typing import TypeVar

import torch

from . import threads, trace
from .cubic_rowwise import DOUBLE_BACKWARD, LOG2E, fold_vmap
from .nodiff import mark_no_double_backward

__all__ = ["separable_triangle"]

T = TypeVar("T")


def _ones(v: torch.Tensor | None, like: torch.Tensor, n: int, dv: int) -> torch.Tensor:
    """``[B, n, dv + 1]``: the values with the all-ones column appended (None: all ones)."""
    B = like.shape[0]
    if v is None:
        return like.new_ones(()).expand(B, n, dv + 1)
    return torch.cat([v, like.new_ones(()).expand(B, n, 1)], dim=-1)


def _rows(n: int) -> list[tuple[int, int]]:
    """Row ranges, one per worker thread (rows of at least 32)."""
    P = max(1, min(threads.workers(), n // 32))
    cuts = [n * i // P for i in range(P + 1)]
    return [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]


def _par(fn: Callable[[int, int], T], n: int) -> list[T]:
    """``fn(r0, r1)`` over row ranges of ``n`` rows on the worker threads (single-threaded ops, no
    graph); the parts write disjoint rows of shared tensors or return partial results."""

    def part(r0: int, r1: int) -> T:
        with torch.no_grad():
            return fn(r0, r1)

    return threads.run_parts(part, _rows(n))


def _add(parts: list[torch.Tensor]) -> torch.Tensor:
    out = parts[0]
    for x in parts[1:]:
        out = out + x
    return out


def _factors(q1, q2, q3, scale, shifts=None):  # noqa: ANN001, ANN202
    """``(E12, E13, E23, (s1, s2, s3))``, row blocks on the workers; with ``shifts`` given they are
    reused (the backward recomputes the forward's factors exactly)."""
    c = scale * LOG2E
    B, n1, n2, n3 = q1.shape[0], q1.shape[1], q2.shape[1], q3.shape[1]
    e12, e13, e23 = q1.new_empty(B, n1, n2), q1.new_empty(B, n1, n3), q1.new_empty(B, n2, n3)
    s1, s2, s3 = (q1.new_empty(B, n1, 1), q1.new_empty(B, n1, 1), q1.new_empty(B, n2, 1)) if shifts is None else shifts
    q2t, q3t = q2.transpose(-1, -2), q3.transpose(-1, -2)

    def f23(b0: int, b1: int) -> None:
        f = torch.bmm(q2[:, b0:b1], q3t).mul_(c)
        if shifts is None:
            s3[:, b0:b1] = f.amax(-1, keepdim=True)
        e23[:, b0:b1] = f.sub_(s3[:, b0:b1]).exp2_()

    def f1x(a0: int, a1: int) -> None:
        f = torch.bmm(q1[:, a0:a1], q3t).mul_(c)
        if shifts is None:
            s2[:, a0:a1] = f.amax(-1, keepdim=True)
        e13[:, a0:a1] = f.sub_(s2[:, a0:a1]).exp2_()
        h = torch.bmm(q1[:, a0:a1], q2t).mul_(c).add_(s3.transpose(-1, -2))
        if shifts is None:
            s1[:, a0:a1] = h.amax(-1, keepdim=True)
        e12[:, a0:a1] = h.sub_(s1[:, a0:a1]).exp2_()

    _par(f23, n2)
    _par(f1x, n1)  # needs all of s3
    return e12, e13, e23, (s1, s2, s3)


def _forward(q1, q2, q3, v2, v3, scale, zc, dv):  # noqa: ANN001, ANN202
    e12, e13, e23, shifts = _factors(q1, q2, q3, scale)
    B, n1, n2 = e12.shape
    n3 = e23.shape[-1]
    C = dv + 1
    v2c, v3c = _ones(v2, q1, n2, dv), _ones(v3, q1, n3, dv)
    acc = q1.new_empty(B, n1, C)
    hbuf = q1.new_empty(B * n2 * min(zc, C) * n3)
    for z0 in range(0, C, zc):
        z1 = min(C, z0 + zc)
        trace.emit("fused", kind="fused-triangle", rows=(0, n1), keys=(0, n2), cols=(z0, z1))
        h = hbuf[: B * n2 * (z1 - z0) * n3].view(B, n2, z1 - z0, n3)
        # H[b, z, c] = V2[b, z] E23[b, c] V3[c, z]: both values folded into the right GEMM operand
        _par(partial(_operand, h, v2c[..., z0:z1], e23, v3c[..., z0:z1]), n2)
        _par(partial(_forward_rows, acc[..., z0:z1], e12, e13, h), n1)
    return acc, *shifts


def _operand(h, w, e, v, r0: int, r1: int) -> None:  # noqa: ANN001
    """Rows ``r0:r1`` of ``h[r, z, c] = w[r, z] e[r, c] (v[c, z])`` (``v`` None: omitted)."""
    out = torch.mul(w[:, r0:r1].unsqueeze(-1), e[:, r0:r1].unsqueeze(-2), out=h[:, r0:r1])
    if v is not None:
        out.mul_(v.transpose(-1, -2).unsqueeze(1))


def _forward_rows(acc, e12, e13, h, a0: int, a1: int) -> None:  # noqa: ANN001
    B, n2, Z, n3 = h.shape
    R = a1 - a0
    m = torch.bmm(e12[:, a0:a1], h.view(B, n2, Z * n3))  # [B, R, Z*n3]: the n^3 work
    # acc[a, z] = sum_c M[a, z, c] E13[a, c]: a batched mat-vec over the rows a
    acc[:, a0:a1] = torch.bmm(m.view(B * R, Z, n3), e13[:, a0:a1].reshape(B * R, n3, 1)).view(B, R, Z)


def _family_rows(de, left, h, scale_u, red, dv_factor, first: bool, r0: int, r1: int):  # noqa: ANN001, ANN202
    """One row block of a gradient family: ``U = scale_u[r, z] * (left[r] @ h)`` (``[B, R, Z, n]``),
    ``de[r] += sum_z U[:, :, z] red[z]`` and, with ``dv_factor``, the partial ``sum_r U * dv_factor[r]``."""
    B, _, Z, n = h.shape
    u = torch.bmm(left(r0, r1), h.view(B, h.shape[1], Z * n)).view(B, r1 - r0, Z, n)
    u.mul_(scale_u[:, r0:r1, :, None])
    d = de[:, r0:r1]
    if first:
        d.zero_()
    for j in range(Z):
        d.addcmul_(u[:, :, j], red[:, None, j])
    return u.mul_(dv_factor[:, r0:r1, None]).sum(1) if dv_factor is not None else None


def _family(chunks, hbuf, de, left, rows_n, operand_args, keys_n, scale_u, red, dv_factor, dvout, emit):  # noqa: ANN001
    """A gradient family over the value-column chunks: build the operand by row blocks of
    ``keys_n``, then per row block of ``rows_n`` the GEMM and reductions (:func:`_family_rows`)."""
    w, e = operand_args
    B = de.shape[0]
    n = e.shape[-1]
    for i, (z0, z1) in enumerate(chunks):
        if emit:
            trace.emit("fused", kind="fused-triangle-backward", rows=(0, rows_n), keys=(0, keys_n), cols=(z0, z1))
        h = hbuf[: B * keys_n * (z1 - z0) * n].view(B, keys_n, z1 - z0, n)
        _par(partial(_operand, h, w[..., z0:z1], e, None), keys_n)
        parts = _par(partial(_family_rows, de, left, h, scale_u[..., z0:z1], red[:, z0:z1],
                             dv_factor, i == 0), rows_n)
        if dvout is not None:
            dvout[:, z0:z1] = _add(parts)


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
    hbuf = q1.new_empty(B * max(n1, n2, n3) ** 2 * min(zc, C))
    dq1, dq2, dq3 = q1.new_empty(q1.shape), q1.new_empty(q2.shape), q1.new_empty(q3.shape)
    q2c, q3c = q2.contiguous(), q3.contiguous()

    # family 13: K = E12 @ (V2[b,z] E23[b,c]); U = G K: dE13 = sum_z U V3, dV3 = sum_a U E13
    de = q1.new_empty(B, n1, n3)
    _family(chunks, hbuf, de, lambda a0, a1: e12[:, a0:a1], n1, (v2c, e23), n2, g, v3t, e13, dv3, True)
    _par(partial(_to_q, de, e13, q3c, dq1, False), n1)  # dF13 = dE13 * E13 (natural logits); dq1 = dF13 @ q3
    _par(partial(_to_q_t, de, q1, dq3, False), n3)  # dq3 = dF13^T @ q1
    # family 12: J = E13 @ (V3[c,z] E23[b,c])^T; U = G J: dE12 = sum_z U V2, dV2 = sum_a U E12
    de = q1.new_empty(B, n1, n2)
    _family(chunks, hbuf, de, lambda a0, a1: e13[:, a0:a1], n1, (v3c, e23.transpose(-1, -2)), n3,
            g, v2t, e12, dv2, False)
    _par(partial(_to_q, de, e12, q2c, dq1, True), n1)
    _par(partial(_to_q_t, de, q1, dq2, False), n2)
    # family 23: N = E12^T @ (G[a,z] E13[a,c]); U = V2[b,z] N: dE23 = sum_z U V3
    de = q1.new_empty(B, n2, n3)
    _family(chunks, hbuf, de, lambda b0, b1: e12[:, :, b0:b1].transpose(-1, -2), n2, (g, e13), n1,
            v2c, v3t, None, None, False)
    _par(partial(_to_q, de, e23, q3c, dq2, True), n2)
    _par(partial(_to_q_t, de, q2, dq3, True), n3)
    gv2 = dv2[:, :dv].transpose(-1, -2) if dv2 is not None else None
    gv3 = dv3[:, :dv].transpose(-1, -2) if dv3 is not None else None
    return dq1.mul_(scale), dq2.mul_(scale), dq3.mul_(scale), gv2, gv3


def _to_q(de, e, q, dq, add: bool, r0: int, r1: int) -> None:  # noqa: ANN001
    """Rows ``r0:r1``: ``dF = dE * E`` in place, then ``dq[r] (+)= dF[r] @ q``."""
    f = de[:, r0:r1].mul_(e[:, r0:r1])
    if add:
        dq[:, r0:r1].baddbmm_(f, q)
    else:
        dq[:, r0:r1] = torch.bmm(f, q)


def _to_q_t(df, q, dq, add: bool, c0: int, c1: int) -> None:  # noqa: ANN001
    """Rows ``c0:c1`` of ``dq (+)= dF^T @ q`` (``dF`` complete)."""
    f = df[:, :, c0:c1].transpose(-1, -2)
    if add:
        dq[:, c0:c1].baddbmm_(f, q)
    else:
        dq[:, c0:c1] = torch.bmm(f, q)


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
        return (*mark_no_double_backward(grads, anchor, DOUBLE_BACKWARD), None, None, None)

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
