"""Planning: printable, inspectable plans and the cost model. Pure Python, no torch."""

from .plan import Plan, Step
from .spec import CAUSAL_MODES, ProblemSpec, normalize_causal
from .strategy import (
    DEFAULT_MEMORY_BUDGET,
    REFERENCE_MAX_TUPLES,
    available_methods,
    make_plan,
    plan,
    register_planner,
)

__all__ = [
    "Plan",
    "Step",
    "ProblemSpec",
    "CAUSAL_MODES",
    "normalize_causal",
    "plan",
    "make_plan",
    "register_planner",
    "available_methods",
    "DEFAULT_MEMORY_BUDGET",
    "REFERENCE_MAX_TUPLES",
]
