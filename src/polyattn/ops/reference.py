"""The float64 brute-force reference: the specification of poly-attention (DESIGN §1.2).

For each query row ``l1`` it materialises the logits of *all* tuples ``(l2..lt)``, applies the
masks, takes one softmax per row and contracts with the Hadamard product of the values. Cost and
memory are ``batch * n1 * ... * nt``; :data:`polyattn.planning.REFERENCE_MAX_TUPLES` bounds it.
Differentiable (plain torch ops), so its gradients are the reference for gradient tests too.

The NaN rule (docs/numerics.md), stated here exactly: a row with no admissible tuple (masks,
causality) is 0; any other row is the softmax average, so a NaN or infinity that enters one of
its *admissible* tuples makes it NaN. Non-finite values confined to inadmissible tuples do not
propagate here (other kernels may propagate them, as SDPA's math backend does).
"""

from __future__ import annotations

import torch

from ..planning import Plan
from . import trace
from .common import NEG_INF, expand_to, letters
from .inputs import Problem

__all__ = ["reference_attention"]


def reference_attention(prob: Problem, plan: Plan, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Brute force in ``dtype`` (float64 is the specification; benchmarks may ask for float32)."""
    trace.emit("reference")
    t = prob.t
    allv = tuple(range(1, t + 1))
    q: list[torch.Tensor | None] = [None] + [x.to(dtype) for x in prob.q[1:] if x is not None]
    logits = torch.zeros((), dtype=dtype, device=prob.device)
    for mono in prob.spec.polynomial.monomials:
        spec = ",".join(f"...{letters((v,))}z" for v in mono) + f"->...{letters(mono)}"
        g = torch.einsum(spec, *[q[v] for v in mono]) * prob.scale
        logits = logits + expand_to(g, mono, allv)
    full_shape = tuple(prob.batch_shape) + tuple(prob.n(v) for v in allv)
    logits = logits.expand(full_shape)
    adm = None  # admissible tuples (None: all)
    for a in range(1, t + 1):
        for b in range(a + 1, t + 1):
            m = prob.pair_mask(a, b)
            if m is not None:
                m = expand_to(m, (a, b), allv)
                adm = m if adm is None else adm & m
    if adm is not None:
        logits = logits.masked_fill(~adm, NEG_INF)
    flat = logits.reshape(*prob.batch_shape, prob.n(1), -1)
    mx = flat.detach().amax(-1, keepdim=True)
    mx = torch.where(torch.isfinite(mx), mx, torch.zeros_like(mx))
    w = torch.exp(flat - mx).reshape(full_shape)
    z = w.reshape(*prob.batch_shape, prob.n(1), -1).sum(-1)
    vals = [(v, prob.v[v].to(dtype)) for v in range(2, t + 1) if prob.v[v] is not None]  # type: ignore[union-attr]
    if not vals:
        num = z.unsqueeze(-1)
    elif adm is not None and not prob.spec.functorch and not all(bool(torch.isfinite(x).all()) for _, x in vals):
        num = _precise_numerator(w, adm, vals, allv)
    else:
        ops = [w] + [x for _, x in vals]
        specs = ["..." + letters(allv)] + [f"...{letters((v,))}z" for v, _ in vals]
        num = torch.einsum(",".join(specs) + "->...az", *ops)
    zero = (z == 0).unsqueeze(-1)
    out = num / torch.where(zero, torch.ones_like(z.unsqueeze(-1)), z.unsqueeze(-1))
    nan = torch.full((), float("nan"), dtype=dtype, device=prob.device)
    out = torch.where(zero, nan, out)  # infinite inputs, not masks, emptied the row: NaN
    if adm is not None:
        nonempty = adm.reshape(*adm.shape[: adm.dim() - t], adm.shape[adm.dim() - t], -1).any(-1)
        out = torch.where(nonempty.unsqueeze(-1), out, torch.zeros((), dtype=dtype, device=prob.device))
    return out.expand(*prob.batch_shape, prob.n(1), out.shape[-1])


def _precise_numerator(
    w: torch.Tensor, adm: torch.Tensor, vals: list[tuple[int, torch.Tensor]], allv: tuple[int, ...]
) -> torch.Tensor:
    """``sum over admissible tuples of w * prod V`` one value column at a time, so that a non-finite
    value in an inadmissible tuple contributes nothing (``0 * inf`` would be NaN in an einsum)."""
    t = len(allv)
    cols = []
    for c in range(vals[0][1].shape[-1]):
        prod = w
        for v, x in vals:
            prod = prod * expand_to(x[..., c], (v,), allv)
        prod = torch.where(adm, prod, torch.zeros((), dtype=w.dtype, device=w.device))
        cols.append(prod.sum(dim=tuple(range(prod.dim() - t + 1, prod.dim()))))
    return torch.stack(cols, dim=-1)
