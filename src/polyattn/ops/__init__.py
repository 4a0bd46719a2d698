"""Kernels: the float64 reference, SDPA, tree message passing and stable variable elimination."""

from .dispatch import KERNELS, register_kernel, run
from .inputs import Problem, prepare

__all__ = ["KERNELS", "register_kernel", "run", "Problem", "prepare"]
