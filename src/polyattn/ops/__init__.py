"""Kernels: the float64 reference, SDPA, tree message passing and stable variable elimination."""

from .dispatch import KERNELS, register_kernel, run
from .inputs import Problem, prepare
from . import approx as _approx  # noqa: E402,F401  registers method="approx"

__all__ = ["KERNELS", "register_kernel", "run", "Problem", "prepare"]
