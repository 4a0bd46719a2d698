"""Planners for the two single-step methods: ``sdpa`` (x1*x2) and ``reference`` (brute force)."""

from __future__ import annotations

from ..errors import MethodError, ReferenceSizeError
from .details import ReferenceDetail, SdpaDetail, StepKind
from .methods import Method
from .plan import Plan, Step
from .spec import ProblemSpec

__all__ = ["plan_sdpa", "plan_reference", "REFERENCE_MAX_TUPLES"]

#: The reference refuses to enumerate more than this many (batch x tuple) entries.
REFERENCE_MAX_TUPLES = 2**24


def plan_sdpa(spec: ProblemSpec, budget: int) -> Plan:
    p = spec.polynomial
    if p.monomials != ((1, 2),) or p.num_variables != 2:
        raise MethodError(
            f"method='sdpa' computes exactly x1*x2 (standard attention); got {p}. "
            "Use method='auto' to let the planner choose"
        )
    n1, n2 = spec.seq_lens
    is_causal = bool(spec.causal) and not spec.mask_pairs
    masked = bool(spec.mask_pairs) or bool(spec.causal) and not is_causal
    flops = 2.0 * n1 * n2 * (spec.head_dim + spec.value_dim) * spec.batch
    mem = (n1 * n2 if masked else 0) * spec.batch * 1.0 + n1 * spec.value_dim * spec.batch * spec.itemsize
    step = Step(StepKind.SDPA, 2, (1, 2), flops, mem, parent=1)
    return Plan(spec, Method.SDPA, "x1*x2 is standard softmax attention: one fused SDPA call",
                (step,), flops, mem, 2, detail=SdpaDetail(masked=masked, is_causal=is_causal))


def plan_reference(spec: ProblemSpec, budget: int) -> Plan:
    t = spec.num_variables
    tuples = 1
    for n in spec.seq_lens:
        tuples *= n
    total = tuples * spec.batch
    if total > REFERENCE_MAX_TUPLES:
        raise ReferenceSizeError(
            f"method='reference' enumerates batch x n1 x ... x nt = {total:,} tuples, above its limit "
            f"of {REFERENCE_MAX_TUPLES:,} (polyattn.planning.REFERENCE_MAX_TUPLES). Use a smaller "
            "problem or an exact method such as method='auto'"
        )
    flops = 2.0 * total * (len(spec.polynomial.monomials) * spec.head_dim + spec.value_dim * t)
    mem = total * 8.0 * 4
    step = Step(StepKind.REFERENCE, 0, tuple(range(1, t + 1)), flops, mem)
    return Plan(spec, Method.REFERENCE, "brute force over all tuples in float64 (the specification)",
                (step,), flops, mem, t, detail=ReferenceDetail())
