"""The one dispatch table: method name -> kernel ``fn(problem, plan) -> tensor``."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..planning import Plan
from .elimination import elimination_attention
from .inputs import Problem
from .reference import reference_attention
from .sdpa import sdpa_attention
from .tree import tree_attention

__all__ = ["KERNELS", "register_kernel", "run"]

Kernel = Callable[[Problem, Plan], torch.Tensor]

KERNELS: dict[str, Kernel] = {
    "reference": reference_attention,
    "sdpa": sdpa_attention,
    "tree": tree_attention,
    "elimination": elimination_attention,
}


def register_kernel(name: str, fn: Kernel) -> None:
    KERNELS[name] = fn


def run(prob: Problem, plan: Plan) -> torch.Tensor:
    return KERNELS[plan.method](prob, plan)
