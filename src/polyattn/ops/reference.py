"""The float64 brute-force reference: the specification of poly-attention (DESIGN §1.2).

For each query row ``l1`` it materialises the logits of *all* tuples ``(l2..lt)``, applies the
masks, takes one softmax per row and contracts with the Hadamard product of the values. Cost and
memory are ``batch * n1 * ... * nt``; :data:`polyattn.planning.REFERENCE_MAX_TUPLES` bounds it.
Differentiable (plain torch ops), so its gradients are the reference for gradient tests too.
"""

from __future__ import annotations

import torch

from ..planning import Plan
from . import trace
from .common import NEG_INF, expand_to, letters
from .inputs import Problem

__all__ = ["reference_attention"]


def reference_attention(prob: Problem, plan: Plan) -> torch.Tensor:
    trace.emit("reference")
    t = prob.t
    allv = tuple(range(1, t + 1))
    f64 = torch.float64
    q: list[torch.Tensor | None] = [None] + [x.to(f64) for x in prob.q[1:] if x is not None]
    logits = torch.zeros((), dtype=f64, device=prob.device)
    for mono in prob.spec.polynomial.monomials:
        spec = ",".join(f"...{letters((v,))}z" for v in mono) + f"->...{letters(mono)}"
        g = torch.einsum(spec, *[q[v] for v in mono]) * prob.scale
        logits = logits + expand_to(g, mono, allv)
    full_shape = tuple(prob.batch_shape) + tuple(prob.n(v) for v in allv)
    logits = logits.expand(full_shape)
    for a in range(1, t + 1):
        for b in range(a + 1, t + 1):
            m = prob.pair_mask(a, b)
            if m is not None:
                logits = logits.masked_fill(~expand_to(m, (a, b), allv), NEG_INF)
    flat = logits.reshape(*prob.batch_shape, prob.n(1), -1)
    mx = flat.detach().amax(-1, keepdim=True)
    mx = torch.where(torch.isfinite(mx), mx, torch.zeros_like(mx))
    w = torch.exp(flat - mx).reshape(full_shape)
    z = w.reshape(*prob.batch_shape, prob.n(1), -1).sum(-1)
    operands = [w]
    specs = ["..." + letters(allv)]
    for v in range(2, t + 1):
        if prob.v[v] is not None:
            operands.append(prob.v[v].to(f64))  # type: ignore[union-attr]
            specs.append(f"...{letters((v,))}z")
    if len(operands) == 1:
        num = z.unsqueeze(-1)
    else:
        num = torch.einsum(",".join(specs) + "->...az", *operands)
    ok = (z > 0).unsqueeze(-1)
    out = torch.where(ok, num / torch.where(ok, z.unsqueeze(-1), torch.ones_like(num)), torch.zeros_like(num))
    return out.expand(*prob.batch_shape, prob.n(1), out.shape[-1])
