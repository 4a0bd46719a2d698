"""Kernels: float64 reference, SDPA, fused tree message passing, stable variable elimination (with
fused cubic kernels) and the polynomial-method approximation; one dispatch table."""

from . import approx as _approx  # noqa: E402,F401  registers method="approx"
from .dispatch import KERNELS, register_kernel, run
from .inputs import Problem, prepare

__all__ = ["KERNELS", "register_kernel", "run", "Problem", "prepare"]
