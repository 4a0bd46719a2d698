"""The kernel table: one kernel ``fn(problem, plan) -> tensor`` per :class:`Method`.

It mirrors the planner table (:data:`polyattn.planning.PLANNERS`); ``tests/test_plan_execution``
checks that the two list the same methods.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..planning import Method, Plan
from .approx import approx_attention
from .elimination import elimination_attention
from .inputs import Problem
from .reference import reference_attention
from .sdpa import sdpa_attention
from .tree import tree_attention

__all__ = ["KERNELS", "run"]

Kernel = Callable[[Problem, Plan], torch.Tensor]

KERNELS: dict[Method, Kernel] = {
    Method.SDPA: sdpa_attention,
    Method.TREE: tree_attention,
    Method.ELIMINATION: elimination_attention,
    Method.REFERENCE: reference_attention,
    Method.APPROX: approx_attention,
}


def run(prob: Problem, plan: Plan) -> torch.Tensor:
    """Execute ``plan`` on ``prob`` (the plan was made for ``prob.spec``).

    Kernels compute in the problem's compute dtype with autocast off (an enclosing
    ``torch.autocast`` would otherwise run the logits GEMMs in bf16/fp16: half inputs already
    accumulate in float32, DESIGN §5). An empty problem returns without running a kernel.
    """
    if plan.spec.empty:
        return _empty_output(prob)
    with torch.autocast(device_type=prob.device.type, enabled=False):
        return KERNELS[Method(plan.method)](prob, plan)


def _empty_output(prob: Problem) -> torch.Tensor:
    """SDPA's convention: ``[..., 0, dv]`` when ``n_1 = 0``, zeros when a key set is empty. The
    zeros stay connected to the inputs (zero gradients) so that ``backward()`` works as usual."""
    out = torch.zeros((*prob.batch_shape, prob.n(1), prob.dv), dtype=prob.dtype, device=prob.device)
    inputs = [x for x in (*prob.q, *prob.v) if x is not None]
    if torch.is_grad_enabled() and any(x.requires_grad for x in inputs):
        link = sum(x.sum() for x in inputs)
        out = torch.where(torch.zeros_like(out, dtype=torch.bool), link, out)
    return out
