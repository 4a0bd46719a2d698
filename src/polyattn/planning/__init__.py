"""Planning: printable, inspectable plans and the cost model. Pure Python, no torch.

``make_plan(spec, method, budget)`` is the one planning entry (cached); :func:`plan` builds the
spec from sizes. A :class:`Plan` holds every decision the kernels execute (:mod:`.details`).
"""

from .details import (
    EdgeCausal,
    EdgeImpl,
    EdgePlan,
    EliminationDetail,
    ElimStep,
    FusedCubic,
    ReferenceDetail,
    SdpaDetail,
    StepKind,
    TreeDetail,
)
from .methods import AUTO_REQUESTS, Method, parse_request
from .plan import DEFAULT_MEMORY_BUDGET, Plan, Step
from .spec import CAUSAL_MODES, ProblemSpec, normalize_causal
from .strategy import PLANNERS, REFERENCE_MAX_TUPLES, available_methods, make_plan, plan

__all__ = [
    "Plan",
    "Step",
    "StepKind",
    "Method",
    "AUTO_REQUESTS",
    "parse_request",
    "ProblemSpec",
    "CAUSAL_MODES",
    "normalize_causal",
    "plan",
    "make_plan",
    "PLANNERS",
    "available_methods",
    "DEFAULT_MEMORY_BUDGET",
    "REFERENCE_MAX_TUPLES",
    "TreeDetail",
    "EdgePlan",
    "EdgeImpl",
    "EdgeCausal",
    "EliminationDetail",
    "ElimStep",
    "FusedCubic",
    "SdpaDetail",
    "ReferenceDetail",
]
