"""Implementations the ``kernels`` suite times on the same tensors (one :class:`Impl` each).

* ``polyattn``: :func:`polyattn.poly_attention` with the sweep's options (``method="auto"``; the
  plan's method, FLOPs and stated peak memory are recorded);
* ``sdpa``: one ``scaled_dot_product_attention`` on ``x1, x2`` at the same sizes (a tree with ``e``
  edges should cost about ``e`` SDPA calls);
* ``reference``: ``method="reference"`` (float64 brute force), small problems only;
* ``einsum``: the same brute force in the inputs' dtype (float32), i.e. naive attention with all
  ``n^t`` logits at once: it *is* the reference kernel (:func:`naive_einsum`), not a second copy;
* ``matmul``: one ``torch.matmul`` with the FLOP count of polyattn's plan (non-tree polynomials):
  the BLAS speed limit that the achieved GFLOP/s is compared with;
* ``autograd``: the fused cubic kernels as they were before their custom backward (issue 12):
  plain torch ops with autograd through the forward, ``exp``, one ones column in the GEMM, chunks of
  the old planner. Kept here, benchmark-only, to measure what the custom backward saves;
* ``peers``: installed peer packages that compute the same polynomial (:mod:`.peers`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F

from polyattn.errors import MethodError, PolyAttentionError
from polyattn.functional import plan_for, poly_attention
from polyattn.ops import Problem, prepare
from polyattn.ops.reference import reference_attention
from polyattn.planning import DEFAULT_MEMORY_BUDGET, Method, Plan, ReferenceDetail, StepKind
from polyattn.planning.plan_cubic import fused_kind
from polyattn.polynomial import parse

from .config import IMPLS, KernelsConfig, Sweep
from .peers import peer_for, peer_status

__all__ = ["Impl", "make_inputs", "naive_einsum", "implementations"]


@dataclass
class Impl:
    name: str
    fn: Callable[[], torch.Tensor] | None
    skip: str | None = None
    flops: float | None = None
    method: str | None = None
    note: str | None = None
    same: tuple | None = None  # (queries, values, kwargs) for which polyattn computes the same function
    leaves: tuple = ()  # extra tensors whose .grad the runner clears
    plan_peak: float | None = None  # polyattn: the plan's stated peak bytes (forward + backward for fused kernels)


def make_inputs(poly: str, n: int, d: int, bh: int, seed: int, grad: bool,
                input_scale: float = 1.0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Queries ``input_scale * N(0, 1)`` and values ``N(0, 1)``, shape ``[1, bh, n, d]``."""
    t = parse(poly).num_variables
    g = torch.Generator().manual_seed(seed)
    qs = [(input_scale * torch.randn(1, bh, n, d, generator=g)).requires_grad_(grad) for _ in range(t)]
    vs = [torch.randn(1, bh, n, d, generator=g).requires_grad_(grad) for _ in range(t - 1)]
    return qs, vs


def naive_einsum(poly: str, qs: Sequence[torch.Tensor], vs: Sequence[torch.Tensor | None],
                 scale: float | None = None) -> torch.Tensor:
    """Naive attention over all tuples in the inputs' compute dtype: the reference kernel
    (:func:`polyattn.ops.reference.reference_attention`) run in that dtype instead of float64.
    Its size limit is the benchmark's (``einsum_max_elems``), not the float64 reference's."""
    prob = prepare(poly, list(qs), list(vs), scale=scale)
    dtype = str(prob.dtype).removeprefix("torch.")
    plan = Plan(prob.spec, Method.REFERENCE, f"naive all-tuple baseline in {dtype}", (), 0.0, 0.0,
                prob.t, detail=ReferenceDetail(dtype=dtype))
    return reference_attention(prob, plan, dtype=prob.dtype)


# ------------------------------------------------------------------- the old fused kernels (autograd)
_OLD_CHUNK = 64 * 2**20  # the old planner's chunk bound and default budget
_OLD_BUDGET = 256 * 2**20


def _old_flat(prob: Problem) -> tuple[list[torch.Tensor], list[torch.Tensor], int]:
    shape, dv = prob.batch_shape, prob.dv
    qs = []
    for j in (1, 2, 3):
        q = prob.q[j]
        assert q is not None
        qs.append(q.expand(*shape, *q.shape[-2:]).reshape(-1, *q.shape[-2:]))
    B = qs[0].shape[0]
    ones = torch.ones((), dtype=prob.dtype, device=prob.device)
    vs = []
    for j in (2, 3):
        v = prob.v[j]
        if v is None:
            vs.append(ones.expand(B, prob.n(j), dv + 1))
        else:
            v = v.expand(*shape, *v.shape[-2:]).reshape(B, prob.n(j), dv)
            vs.append(torch.cat([v, ones.expand(B, prob.n(j), 1)], dim=-1))
    return qs, vs, dv


def _old_triangle(prob: Problem) -> torch.Tensor:
    (q1, q2, q3), (v2, v3), dv = _old_flat(prob)
    s, C = prob.scale, dv + 1
    B, n1, n2, n3 = q1.shape[0], q1.shape[1], q2.shape[1], q3.shape[1]
    isz = q1.element_size()
    room = min(_OLD_CHUNK, (_OLD_BUDGET - (n1 * n2 + n1 * n3 + n2 * n3) * B * isz) // 2)
    zc = max(1, min(C, room // max(1, (n1 + n2) * n3 * B * isz)))
    f23 = torch.matmul(q2, q3.transpose(-1, -2)) * s
    s3 = f23.detach().amax(-1, keepdim=True)
    e23 = torch.exp(f23 - s3)
    f13 = torch.matmul(q1, q3.transpose(-1, -2)) * s
    e13 = torch.exp(f13 - f13.detach().amax(-1, keepdim=True))
    h12 = torch.matmul(q1, q2.transpose(-1, -2)) * s + s3.transpose(-1, -2)
    e12 = torch.exp(h12 - h12.detach().amax(-1, keepdim=True))
    outs = []
    for z0 in range(0, C, zc):
        z1 = min(C, z0 + zc)
        h = v2[..., z0:z1].unsqueeze(-1) * e23.unsqueeze(-2) * v3[..., z0:z1].transpose(-1, -2).unsqueeze(1)
        m = torch.matmul(e12, h.reshape(B, n2, (z1 - z0) * n3))
        outs.append(torch.matmul(m.reshape(B * n1, z1 - z0, n3), e13.reshape(B * n1, n3, 1)).reshape(B, n1, z1 - z0))
    acc = torch.cat(outs, dim=-1)
    return (acc[..., :dv] / acc[..., dv:]).reshape(*prob.batch_shape, n1, dv)


def _old_rowwise(prob: Problem, triangle: bool) -> torch.Tensor:
    (q1, q2, q3), (v2, v3), dv = _old_flat(prob)
    s, C = prob.scale, dv + 1
    B, n1, d = q1.shape
    n2, n3 = q2.shape[1], q3.shape[1]
    isz = q1.element_size()
    factors = (n1 * n2 + n1 * n3 + n2 * n3) * B * isz if triangle else 0
    room = min(_OLD_CHUNK, (_OLD_BUDGET - factors) if triangle else _OLD_BUDGET // 2)
    rc = max(1, min(n1, room // max(1, B * n2 * (n3 + 2 * C + (0 if triangle else d)) * isz)))
    if triangle:
        f23 = (torch.matmul(q2, q3.transpose(-1, -2)) * s).unsqueeze(1)
        f12 = torch.matmul(q1, q2.transpose(-1, -2)) * s
        f13 = torch.matmul(q1, q3.transpose(-1, -2)) * s
    else:
        q3t = (q3 * s).transpose(-1, -2)
    outs = []
    for r0 in range(0, n1, rc):
        r1 = min(n1, r0 + rc)
        if triangle:
            lg = f12[:, r0:r1].unsqueeze(-1) + f13[:, r0:r1].unsqueeze(-2) + f23
        else:
            k = (q1[:, r0:r1].unsqueeze(2) * q2.unsqueeze(1)).reshape(B, (r1 - r0) * n2, d)
            lg = torch.matmul(k, q3t)
        lg = lg.reshape(B, r1 - r0, n2 * n3)
        p = torch.exp(lg - lg.detach().amax(-1, keepdim=True))
        y = torch.matmul(p.reshape(B, (r1 - r0) * n2, n3), v3).reshape(B, r1 - r0, n2, C)
        outs.append((y * v2.unsqueeze(1)).sum(2))
    acc = torch.cat(outs, dim=1)
    return (acc[..., :dv] / acc[..., dv:]).reshape(*prob.batch_shape, n1, dv)


def autograd_fused(poly: str, qs: Sequence[torch.Tensor], vs: Sequence[torch.Tensor | None]) -> torch.Tensor:
    """The fused triangle / ``x1*x2*x3`` kernels before issue 12 (autograd through the forward)."""
    prob = prepare(poly, list(qs), list(vs))
    kind = fused_kind(prob.spec)
    if kind == StepKind.FUSED_TRIANGLE:
        return _old_triangle(prob)
    if kind is None:
        raise MethodError(f"no fused kernel for {poly}")
    return _old_rowwise(prob, triangle=kind == StepKind.FUSED_TRIANGLE_ROWWISE)


# ------------------------------------------------------------------------------- the table
def implementations(poly: str, qs: list[torch.Tensor], vs: list[torch.Tensor], sweep: Sweep,
                    cfg: KernelsConfig) -> list[Impl]:
    """The implementations of ``sweep.impls`` on these tensors (with skip reasons)."""
    p = parse(poly)
    t = p.num_variables
    n, d = qs[0].shape[-2], qs[0].shape[-1]
    bh = qs[0].shape[1]
    cap = cfg.max_memory_gb * 2**30
    tuples = bh * n**t
    budget = DEFAULT_MEMORY_BUDGET if sweep.memory_budget is None else int(sweep.memory_budget)
    pl = plan_for(poly, qs, vs, memory_budget=budget)
    out: list[Impl] = []
    for name in sweep.impls:
        if name == "polyattn":
            out.append(Impl(name, lambda: poly_attention(pl, qs, vs), flops=pl.flops, method=str(pl.method),
                            plan_peak=pl.peak_bytes))
        elif name == "sdpa":
            out.append(Impl(name, lambda: F.scaled_dot_product_attention(qs[0], qs[1], vs[0])))
        elif name == "reference":
            if tuples > cfg.reference_max_tuples:
                out.append(Impl(name, None, skip=f"{tuples:.2e} tuples > reference_max_tuples={cfg.reference_max_tuples:.2e}"))
            else:
                out.append(Impl(name, lambda: poly_attention(poly, qs, vs, method="reference")))
        elif name == "einsum":
            if tuples > cfg.einsum_max_elems or 3 * 4 * tuples > cap:
                out.append(Impl(name, None, skip=f"{tuples:.2e} logits > einsum_max_elems={cfg.einsum_max_elems:.2e} or memory cap"))
            else:
                out.append(Impl(name, lambda: naive_einsum(poly, qs, vs)))
        elif name == "matmul":
            if p.is_tree:
                continue  # trees are compared with SDPA, not with a flop-matched GEMM
            k = max(1, round(pl.flops / (2.0 * bh * n * n * n)))
            mm_bytes = 4.0 * bh * n * n * (2 * k + 1)  # a, b and the result
            if mm_bytes > cap:
                out.append(Impl(name, None, skip=f"[{bh},{n},{n}] @ [{bh},{n},{n * k}] needs {mm_bytes / 2**30:.1f} GB "
                                                 f"> max_memory_gb={cfg.max_memory_gb}"))
                continue
            grad = qs[0].requires_grad
            a = torch.randn(bh, n, n, requires_grad=grad)
            b = torch.randn(bh, n, n * k, requires_grad=grad)
            out.append(Impl(name, partial(torch.matmul, a, b), flops=2.0 * bh * n**3 * k,
                            note=f"[{bh},{n},{n}] @ [{bh},{n},{n * k}] (forward FLOPs)", leaves=(a, b)))
        elif name == "autograd":
            # autograd through the old forward keeps the n^3 probabilities (tensor) or the n^2 (dv + 1)
            # GEMM operands and results (triangle)
            est = bh * n**3 * 4.0 if pl.fused == "tensor3" else bh * n * n * (d + 1) * 8.0
            if pl.fused not in ("triangle", "tensor3"):
                out.append(Impl(name, None, skip=f"no fused cubic kernel runs {poly} here"))
            elif qs[0].requires_grad and est > cap:
                out.append(Impl(name, None, skip=f"autograd through the forward stores ~{est / 2**30:.1f} GB "
                                                 f"> max_memory_gb={cfg.max_memory_gb}"))
            else:
                out.append(Impl(name, lambda: autograd_fused(poly, qs, vs),
                                note="fused kernels before the custom backward (autograd through the forward)"))
        elif name == "peers":
            for peer in peer_for(poly):
                reason = peer_status(peer)
                if reason is None:
                    est = {"strassen-attention": 4 * bh * n * n * d * 4, "simplicial-attention": 3 * bh * n**3 * 4,
                           "poly-attention": 6 * bh * n * n * 4}[peer.name]
                    if est > cap:
                        reason = f"{peer.name}: estimated {est / 2**30:.1f} GB > max_memory_gb={cfg.max_memory_gb}"
                if reason is not None:
                    out.append(Impl(peer.name, None, skip=reason))
                    continue
                run = peer.load()
                pq, pv, pkw = peer.polyattn_args(qs, vs)
                out.append(Impl(peer.name, partial(run, qs, vs), note=peer.note, same=(pq, pv, pkw)))
        else:
            raise PolyAttentionError(f"unknown implementation {name!r}; choose from {', '.join(IMPLS)}")
    return out
