"""Row-wise fused kernels: ``x1*x2*x3`` and the small triangle, forward and backward.

Both compute, per query row ``r``, the unnormalised accumulator

    acc[r, z]  = sum_{b,c} exp(L[r,b,c] - M[r]) V2[b,z] V3[c,z]      (z < dv)
    acc[r, dv] = sum_{b,c} exp(L[r,b,c] - M[r])                       (the normaliser)

with ``L = s * sum_k q1[r,k] q2[b,k] q3[c,k]`` (``x1*x2*x3``) or ``L = F12[r,b] + F13[r,c] + F23[b,c]``
(the triangle, ``Fij = s * qi qj^T``) and ``M[r]`` the exact row max; the caller divides. Shapes:
``q* [B, n*, d]``, ``V* [B, n*, dv]`` or ``None`` (value-less: all ones).

**Blocks.** The plan's ``row_chunk`` query rows x ``key_chunk`` rows of x2 x all n3 rows of x3 form
a logits block ``[B, R*Bb, n3]``, sized by the planner to stay in cache. Per block: one GEMM writes
the logits in base-2 units (``s * log2(e)`` is folded into ``q3``, and ``exp2`` is ~3x faster than
``exp`` on this CPU, with no slow path when results underflow), a max per ``(r, b)`` row, in-place
``exp2``, the row sums and one GEMM with ``V3`` (``[R*Bb, n3] @ [n3, dv]``: the normaliser is a row
sum, not an extra ones column, which would make the GEMM's N = dv + 1 and cost ~30% at dv = 32).
Rows of x2 are combined with ``exp2(m[r,b] - M[r])`` and the ``V2`` product: O(n^2 dv) work.

**Backward** (custom autograd function, no ``n^3`` tensor kept): per block, recompute the logits,
``P = exp2(L - M[r])``, and with the output gradient ``G = d loss / d acc``

    A[r,b,c]  = sum_{z<dv} G[r,z] V2[b,z] V3[c,z] + G[r,dv]     (GEMM [R*Bb, dv] @ [dv, n3])
    dL        = P * A                                           (gradient of the natural logits)
    dV3      += P^T @ (G[r] * V2[b]);   dV2[b] += sum_r G[r] * (P @ V3)[r,b]
    x1*x2*x3: dq1, dq2 from dL @ q3 (GEMM), dq3 += dL^T @ (q1[r] * q2[b]) (GEMM), times s
    triangle: the block's dF12 = sum_c dL, dF13 = sum_b dL, dF23 = sum_r dL, then dq += s * dF @ q

Memory: two blocks plus O(n (d + dv)) (the triangle adds its n x n factors): the plan's
``fused_cost`` states the forward + backward peak. Double backward is refused
(:class:`~polyattn.errors.PolyAttentionError`); ``torch.func.vmap`` folds the vmapped dim into ``B``.
"""

from __future__ import annotations

import math

import torch

from ..errors import PolyAttentionError
from . import threads, trace

__all__ = ["rowwise_cubic", "LOG2E", "fold_vmap", "DOUBLE_BACKWARD"]

LOG2E = 1.0 / math.log(2.0)


def _kind(triangle: bool) -> str:
    return "fused-triangle-rowwise" if triangle else "fused-tensor3"


class _Logits:
    """Builds the base-2 logits of a block into a buffer; scatters logit gradients back."""

    def __init__(self, q1: torch.Tensor, q2: torch.Tensor, q3: torch.Tensor, scale: float, triangle: bool):
        self.triangle = triangle
        c = scale * LOG2E
        if triangle:
            self.f12 = torch.matmul(q1, q2.transpose(-1, -2)).mul_(c)
            self.f13 = torch.matmul(q1, q3.transpose(-1, -2)).mul_(c)
            self.f23 = torch.matmul(q2, q3.transpose(-1, -2)).mul_(c)
        else:
            # contiguous copies (O(n d)): the product of their slices is then laid out contiguously
            self.q1, self.q2 = q1.contiguous(), q2.contiguous()
            self.q3t = (q3 * c).transpose(-1, -2).contiguous()  # [B, d, n3]

    def operand(self, r0: int, r1: int, b0: int, b1: int) -> torch.Tensor:
        """``x1*x2*x3``: the GEMM operand ``q1[r] * q2[b]`` as ``[B, R*Bb, d]``."""
        B, d = self.q1.shape[0], self.q1.shape[-1]
        return (self.q1[:, r0:r1, None, :] * self.q2[:, None, b0:b1, :]).view(B, -1, d)

    def block(self, out: torch.Tensor, r0: int, r1: int, b0: int, b1: int) -> torch.Tensor:
        """Logits of rows ``r0:r1`` x keys ``b0:b1`` written into ``out`` ``[B, R*Bb, n3]``."""
        if self.triangle:
            B, n3 = out.shape[0], out.shape[-1]
            o4 = out.view(B, r1 - r0, b1 - b0, n3)
            torch.add(self.f12[:, r0:r1, b0:b1, None], self.f13[:, r0:r1, None, :], out=o4)
            o4.add_(self.f23[:, None, b0:b1, :])
            return out
        return torch.bmm(self.operand(r0, r1, b0, b1), self.q3t, out=out)


def _blocks(n1: int, n2: int, rc: int, kc: int, rows: tuple[int, int] | None = None) -> list[tuple[int, int, int, int]]:
    """The planned blocks ``(r0, r1, b0, b1)`` in execution order (within query rows ``rows``)."""
    lo, hi = rows if rows is not None else (0, n1)
    return [(r0, min(hi, r0 + rc), b0, min(n2, b0 + kc)) for r0 in range(lo, hi, rc) for b0 in range(0, n2, kc)]


def _forward_part(q1, q2, q3, v2, v3, acc, shift, rows, scale, rc, kc, triangle):  # noqa: ANN001, ANN202
    """Fill ``acc`` / ``shift`` (views of these heads) for the query rows ``rows``."""
    B, n1, _ = q1.shape
    n2, n3 = q2.shape[1], q3.shape[1]
    dv = acc.shape[-1] - 1
    lg = _Logits(q1, q2, q3, scale, triangle)
    v3c = v3.contiguous() if v3 is not None else None
    buf = q1.new_empty(B * min(n1, rc) * min(n2, kc) * n3)
    for r0 in range(rows[0], rows[1], rc):
        r1 = min(rows[1], r0 + rc)
        R = r1 - r0
        ms, zs, ys = [], [], []
        for b0 in range(0, n2, kc):
            b1 = min(n2, b0 + kc)
            L = lg.block(buf[: B * R * (b1 - b0) * n3].view(B, -1, n3), r0, r1, b0, b1)
            m = L.amax(-1, keepdim=True)  # exact max per (r, b): that row's largest term is 1
            L.sub_(m).exp2_()
            zs.append(L.sum(-1).view(B, R, -1))
            ms.append(m.view(B, R, -1))
            if v3c is not None:
                ys.append(torch.bmm(L, v3c).view(B, R, -1, dv))
        m = torch.cat(ms, -1) if len(ms) > 1 else ms[0]  # [B, R, n2]
        z = torch.cat(zs, -1) if len(zs) > 1 else zs[0]
        M = m.amax(-1, keepdim=True)
        w = torch.exp2(m - M)  # weight of each x2 row relative to the query row's max
        acc[:, r0:r1, dv] = (w * z).sum(-1)
        if v3c is None and v2 is None:
            acc[:, r0:r1, :dv] = acc[:, r0:r1, dv:]
        else:
            if v3c is None:
                y = z.unsqueeze(-1) * v2[:, None]  # V3 = 1: the V3 contraction is the row sum
            else:
                y = torch.cat(ys, 2) if len(ys) > 1 else ys[0]  # [B, R, n2, dv]
                if v2 is not None:
                    y.mul_(v2[:, None])
            acc[:, r0:r1, :dv] = torch.matmul(w.unsqueeze(-2), y).squeeze(-2)
        shift[:, r0:r1] = M.squeeze(-1)


def _backward_part(q1, q2, q3, v2, v3, shift, g, rows, scale, rc, kc, triangle, need):  # noqa: ANN001, ANN202
    """Gradients ``(dq1, dq2, dq3, dv2, dv3)`` of these heads from the blocks of query rows ``rows``
    (``None`` where not needed); ``g = d loss / d acc``. Parts over disjoint rows add up."""
    B, n1, d = q1.shape
    n2, n3 = q2.shape[1], q3.shape[1]
    dv = g.shape[-1] - 1
    lg = _Logits(q1, q2, q3, scale, triangle)
    gnum, gden = g[..., :dv], g[..., dv]
    if v2 is None and v3 is None:  # the value channels are copies of the normaliser
        gden, gnum = gden + gnum.sum(-1), None
    v3c = v3.contiguous() if v3 is not None else None
    v3t = v3c.transpose(-1, -2) if v3c is not None else None  # [B, dv, n3]
    dv2 = torch.zeros_like(v2) if (v2 is not None and need[3]) else None
    dv3 = torch.zeros(B, n3, dv, dtype=q1.dtype, device=q1.device) if (v3 is not None and need[4]) else None
    dq1, dq2, dq3 = torch.zeros_like(q1), torch.zeros_like(q2), torch.zeros_like(q3)
    q3c = q3.contiguous()
    buf = q1.new_empty(B * min(n1, rc) * min(n2, kc) * n3)
    abuf = q1.new_empty(B * min(n1, rc) * min(n2, kc) * n3) if v3c is not None else None
    for r0, r1, b0, b1 in _blocks(n1, n2, rc, kc, rows):
        R, K = r1 - r0, b1 - b0
        P = lg.block(buf[: B * R * K * n3].view(B, -1, n3), r0, r1, b0, b1)
        P.sub_(shift[:, r0:r1, None, None].expand(B, R, K, 1).reshape(B, R * K, 1)).exp2_()
        gd = gden[:, r0:r1, None].expand(B, R, K).reshape(B, R * K, 1)
        gv = None
        if gnum is not None:  # G[r, z] * V2[b, z] for the (r, b) rows of the block
            gv = gnum[:, r0:r1, None, :] * (v2[:, None, b0:b1, :] if v2 is not None else 1.0)
            gv = gv.expand(B, R, K, dv).reshape(B, R * K, dv)
        if dv2 is not None:
            yp = torch.bmm(P, v3c).view(B, R, K, dv) if v3c is not None else P.sum(-1).view(B, R, K, 1)
            dv2[:, b0:b1] += (yp * gnum[:, r0:r1, None, :]).sum(1)
        if v3c is not None:
            if dv3 is not None:
                dv3.baddbmm_(P.transpose(-1, -2), gv)
            A = torch.bmm(gv, v3t, out=abuf[: B * R * K * n3].view(B, -1, n3))
            dL = A.add_(gd).mul_(P)
        else:
            a = gd if gv is None else gv.sum(-1, keepdim=True).add_(gd)  # V3 = 1: A is constant in c
            dL = P.mul_(a)
        if triangle:  # dF12 = sum_c dL, dF13 = sum_b dL, dF23 = sum_r dL, taken to q at once (no n x n accumulators)
            d4 = dL.view(B, R, K, n3)
            f12, f13, f23 = d4.sum(-1), d4.sum(2), d4.sum(1)  # [B, R, K], [B, R, n3], [B, K, n3]
            dq1[:, r0:r1] += torch.bmm(f12, q2[:, b0:b1]).add_(torch.bmm(f13, q3c))
            dq2[:, b0:b1] += torch.bmm(f12.transpose(-1, -2), q1[:, r0:r1]).add_(torch.bmm(f23, q3c))
            dq3.baddbmm_(f13.transpose(-1, -2), q1[:, r0:r1]).baddbmm_(f23.transpose(-1, -2), q2[:, b0:b1])
        else:
            t = torch.bmm(dL, q3c).view(B, R, K, d)  # d/d(q1[r] * q2[b]), without s
            dq3.baddbmm_(dL.transpose(-1, -2), lg.operand(r0, r1, b0, b1))
            dq1[:, r0:r1] += (t * q2[:, None, b0:b1, :]).sum(2)
            dq2[:, b0:b1] += (t * q1[:, r0:r1, None, :]).sum(1)
    return dq1.mul_(scale), dq2.mul_(scale), dq3.mul_(scale), dv2, dv3


def _parts(B: int, n1: int, rc: int, planned: int) -> list[tuple[slice, tuple[int, int]]]:
    """Independent parts ``(heads, query rows)`` for the worker threads, as the plan says
    (``planned`` = :attr:`FusedCubic.parts`; 1: one part): ranges of heads (one part per thread, at
    most one per head) when there are ``planned`` heads or more, else ``planned`` ranges of whole
    query-row chunks (each part then holds its own blocks and gradient accumulators, which the plan's
    memory figure counts). Fewer worker threads than parts: fewer parts."""
    T = threads.workers()
    if T <= 1 or planned <= 1:
        return [(slice(0, B), (0, n1))]
    if B >= planned:
        P = min(T, B)
        cuts = [B * i // P for i in range(P + 1)]
        return [(slice(a, b), (0, n1)) for a, b in zip(cuts, cuts[1:]) if b > a]
    P = min(T, planned)
    nb = -(-n1 // rc)
    cuts = [rc * (nb * i // P) for i in range(P + 1)]
    cuts[-1] = n1
    return [(slice(0, B), (a, b)) for a, b in zip(cuts, cuts[1:]) if b > a]


def _forward(q1, q2, q3, v2, v3, scale, rc, kc, parts, triangle, dv):  # noqa: ANN001, ANN202
    """``(acc [B, n1, dv+1], M [B, n1])``: the accumulator and the row shifts (base 2)."""
    B, n1, _ = q1.shape
    n2 = q2.shape[1]
    acc = q1.new_empty(B, n1, dv + 1)
    shift = q1.new_empty(B, n1)
    split = _parts(B, n1, rc, parts)

    def part(hs: slice, rows: tuple[int, int]) -> None:
        with torch.no_grad():
            _forward_part(q1[hs], q2[hs], q3[hs], _sl(v2, hs), _sl(v3, hs), acc[hs], shift[hs], rows,
                          scale, rc, kc, triangle)

    threads.run_parts(part, split)
    kind = _kind(triangle)
    for r0, r1, b0, b1 in _blocks(n1, n2, rc, kc):
        trace.emit("fused", kind=kind, rows=(r0, r1), keys=(b0, b1), cols=(0, dv + 1))
    return acc, shift


def _backward(q1, q2, q3, v2, v3, shift, g, scale, rc, kc, parts, triangle, need):  # noqa: ANN001, ANN202
    B, n1, _ = q1.shape
    n2 = q2.shape[1]
    split = _parts(B, n1, rc, parts)

    def part(hs: slice, rows: tuple[int, int]):  # noqa: ANN202
        with torch.no_grad():
            return _backward_part(q1[hs], q2[hs], q3[hs], _sl(v2, hs), _sl(v3, hs), shift[hs], g[hs], rows,
                                  scale, rc, kc, triangle, need)

    res = threads.run_parts(part, split)
    if len(res) == 1:
        grads = res[0]
    elif split[0][1] == (0, n1):  # split by heads: concatenate
        grads = tuple(None if xs[0] is None else torch.cat(xs, 0) for xs in zip(*res))
    else:  # split by query rows: the parts' gradients add up
        grads = tuple(None if xs[0] is None else torch.stack(xs).sum(0) for xs in zip(*res))
    kind = _kind(triangle) + "-backward"
    dv = g.shape[-1] - 1
    for r0, r1, b0, b1 in _blocks(n1, n2, rc, kc):
        trace.emit("fused", kind=kind, rows=(r0, r1), keys=(b0, b1), cols=(0, dv + 1))
    return grads


def _sl(x: torch.Tensor | None, hs: slice) -> torch.Tensor | None:
    return None if x is None else x[hs]


DOUBLE_BACKWARD = (
    "double backward through a fused cubic kernel (the triangle x1*x2 + x1*x3 + x2*x3 or "
    "x1*x2*x3 without masks) is not supported: its backward recomputes per block without a "
    "graph. Methods that support double backward here: 'reference'"
)


def fold_vmap(size: int, in_dims, xs):  # noqa: ANN001, ANN201
    """torch.func.vmap: fold the vmapped dim into the batch dim of ``[B, n, k]`` tensors."""
    out: list[torch.Tensor | None] = []
    for x, dim in zip(xs, in_dims):
        if x is None:
            out.append(None)
            continue
        x = x.unsqueeze(0).expand(size, *x.shape) if dim is None else x.movedim(dim, 0)
        out.append(x.reshape(-1, *x.shape[2:]))
    return out


class _RowwiseGrad(torch.autograd.Function):
    """The row-wise backward as a function of its own, so that ``torch.func.vmap`` over a
    gradient (``vmap(grad(f))``: the saved tensors are then batched) folds the vmapped dim into
    ``B`` like the forward does, instead of tracing the blocks' ``out=`` ops, which have no batching
    rule. Differentiating it again raises."""

    @staticmethod
    def forward(q1, q2, q3, v2, v3, shift, g, scale, rc, kc, parts, triangle, need):  # noqa: ANN001, ANN205
        with torch.no_grad():
            return _backward(q1, q2, q3, v2, v3, shift, g, scale, rc, kc, parts, triangle, need)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # noqa: ANN001
        pass

    @staticmethod
    def backward(ctx, *gs: torch.Tensor):  # noqa: ANN001, ANN205
        raise PolyAttentionError(DOUBLE_BACKWARD)

    @staticmethod
    def vmap(info, in_dims, q1, q2, q3, v2, v3, shift, g, scale, rc, kc, parts, triangle, need):  # noqa: ANN001, ANN205
        xs = fold_vmap(info.batch_size, in_dims[:7], (q1, q2, q3, v2, v3, shift, g))
        grads = _RowwiseGrad.apply(*xs, scale, rc, kc, parts, triangle, need)
        size = info.batch_size
        out = tuple(None if x is None else x.reshape(size, -1, *x.shape[1:]) for x in grads)
        return out, tuple(None if x is None else 0 for x in grads)


class _Rowwise(torch.autograd.Function):
    @staticmethod
    def forward(q1, q2, q3, v2, v3, scale, rc, kc, parts, triangle, dv):  # noqa: ANN001, ANN205
        return _forward(q1, q2, q3, v2, v3, scale, rc, kc, parts, triangle, dv)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # noqa: ANN001
        q1, q2, q3, v2, v3, scale, rc, kc, parts, triangle, dv = inputs
        ctx.save_for_backward(q1, q2, q3, v2, v3, output[1])
        ctx.meta = (scale, rc, kc, parts, triangle)
        ctx.mark_non_differentiable(output[1])

    @staticmethod
    def backward(ctx, g, _gshift):  # noqa: ANN001, ANN205
        q1, q2, q3, v2, v3, shift = ctx.saved_tensors
        scale, rc, kc, parts, triangle = ctx.meta
        grads = _RowwiseGrad.apply(q1, q2, q3, v2, v3, shift, g, scale, rc, kc, parts, triangle,
                                   tuple(ctx.needs_input_grad[:5]))
        return (*grads, None, None, None, None, None, None)

    @staticmethod
    def vmap(info, in_dims, q1, q2, q3, v2, v3, scale, rc, kc, parts, triangle, dv):  # noqa: ANN001, ANN205
        xs = fold_vmap(info.batch_size, in_dims[:5], (q1, q2, q3, v2, v3))
        acc, shift = _Rowwise.apply(*xs, scale, rc, kc, parts, triangle, dv)
        size = info.batch_size
        return (acc.reshape(size, -1, *acc.shape[1:]), shift.reshape(size, -1, *shift.shape[1:])), (0, 0)


def rowwise_cubic(
    q1: torch.Tensor,
    q2: torch.Tensor,
    q3: torch.Tensor,
    v2: torch.Tensor | None,
    v3: torch.Tensor | None,
    *,
    scale: float,
    row_chunk: int,
    key_chunk: int,
    parts: int,
    triangle: bool,
    dv: int,
) -> torch.Tensor:
    """``acc [B, n1, dv + 1]`` (values, then the normaliser) of ``x1*x2*x3`` (``triangle=False``)
    or the triangle, in blocks of ``row_chunk`` query rows x ``key_chunk`` x2 rows, over ``parts``
    worker parts (:func:`_parts`; the plan's :class:`~polyattn.planning.details.FusedCubic`)."""
    return _Rowwise.apply(q1, q2, q3, v2, v3, float(scale), int(row_chunk), int(key_chunk), int(parts), bool(triangle),
                          int(dv))[0]
