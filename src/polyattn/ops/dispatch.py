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
    """Execute ``plan`` on ``prob`` (the plan was made for ``prob.spec``)."""
    return KERNELS[Method(plan.method)](prob, plan)
