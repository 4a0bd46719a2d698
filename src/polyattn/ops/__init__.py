"""Kernels: float64 reference, SDPA, fused tree message passing, stable variable elimination (with
fused cubic kernels) and the polynomial-method approximation; one kernel table."""

from .approx import measure as measure_approx
from .dispatch import KERNELS, run
from .inputs import Problem, prepare

__all__ = ["KERNELS", "run", "Problem", "prepare", "measure_approx"]
