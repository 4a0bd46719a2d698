"""Strategy choice: turn a :class:`ProblemSpec` into a :class:`Plan` (the one planning entry).

Strategies by structure of the *factor graph* (monomials plus mask and causal pairs):

* exactly ``x1*x2`` (masks on that pair only)          -> ``"sdpa"`` (one fused attention call)
* every factor a pair and the graph a forest            -> ``"tree"`` (message passing, n^2)
* anything else                                         -> ``"elimination"`` (n^(width+1))
* ``method="reference"``                                -> brute force in float64 (the specification)
* ``method="approx"``                                   -> the polynomial method (structure here;
  the degree is chosen from the measured tensors by :func:`polyattn.planning.approx.refine`)

``method="auto"`` (or ``"exact"``) takes the first exact method of :data:`AUTO_ORDER` that applies
and records its choice in the plan. An explicitly requested method that cannot handle the input
raises :class:`MethodError`; nothing falls back silently.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from functools import lru_cache

from ..errors import MethodError, PolyAttentionError
from ..polynomial import AttentionPolynomial
from . import approx as _approx
from .methods import AUTO_ORDER, Method, parse_request
from .plan import DEFAULT_MEMORY_BUDGET, Plan
from .plan_basic import REFERENCE_MAX_TUPLES, plan_reference, plan_sdpa
from .plan_elimination import plan_elimination
from .plan_tree import plan_tree
from .spec import ProblemSpec

__all__ = [
    "plan",
    "make_plan",
    "PLANNERS",
    "available_methods",
    "DEFAULT_MEMORY_BUDGET",
    "REFERENCE_MAX_TUPLES",
]

Planner = Callable[[ProblemSpec, int], Plan]

#: One planner per method (the kernel table in polyattn.ops.dispatch mirrors it).
PLANNERS: dict[Method, Planner] = {
    Method.SDPA: plan_sdpa,
    Method.TREE: plan_tree,
    Method.ELIMINATION: plan_elimination,
    Method.REFERENCE: plan_reference,
    Method.APPROX: _approx.plan_structure,
}


def available_methods() -> tuple[str, ...]:
    return ("auto", "exact", *(m.value for m in PLANNERS))


@lru_cache(maxsize=1024)
def make_plan(spec: ProblemSpec, method: str | Method = "auto", memory_budget: int = DEFAULT_MEMORY_BUDGET) -> Plan:
    """Plan ``spec`` with ``method`` (cached: the same spec, method and budget give the same plan).

    ``"auto"``/``"exact"`` pick the cheapest exact strategy that applies.
    """
    chosen, requested = parse_request(method)
    budget = int(memory_budget)
    if chosen is not None:
        pl = PLANNERS[chosen](spec, budget)
    else:
        for m in AUTO_ORDER:
            try:
                pl = PLANNERS[m](spec, budget)
                break
            except MethodError:
                continue
        else:  # pragma: no cover - elimination handles every polynomial
            raise PolyAttentionError(f"no method can compute {spec.polynomial}")
    notes = pl.notes
    if spec.empty:
        notes = ("a sequence is empty: the output is empty (n1 = 0) or zeros, and no kernel runs", *notes)
    return replace(pl, requested=requested, memory_budget=budget, notes=notes)


def plan(
    polynomial: str | AttentionPolynomial,
    *,
    seq_len: int | tuple[int, ...] | list[int],
    head_dim: int,
    value_dim: int | None = None,
    batch: int = 1,
    causal: object = False,
    mask_pairs: object = (),
    has_values: tuple[bool, ...] | None = None,
    method: str = "auto",
    itemsize: int = 4,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    device: str = "cpu",
    dtype: str | None = None,
) -> Plan:
    """Plan a poly-attention call from sizes, without tensors. ``print(plan(...))`` shows the report.

    ``device``/``dtype`` are plain strings (``"cpu"``, ``"cuda"``; ``"float32"``, ``"float64"``) and
    choose among kernel implementations; ``dtype`` defaults from ``itemsize``.

    >>> print(plan("x1*x2 + x2*x3", seq_len=4096, head_dim=64).complexity)
    n^2
    """
    spec = ProblemSpec.build(
        polynomial, seq_len=tuple(seq_len) if isinstance(seq_len, list) else seq_len,
        head_dim=head_dim, value_dim=value_dim, batch=batch, causal=causal,
        mask_pairs=tuple(mask_pairs), has_values=has_values, itemsize=itemsize,  # type: ignore[arg-type]
        device=device, dtype=dtype,
    )
    return make_plan(spec, method, int(memory_budget))
