"""Planner for ``method="tree"``: message passing over a forest factor graph (quadratic time)."""

from __future__ import annotations

from ..errors import MethodError
from .capability import edge_impl
from .details import EdgeCausal, EdgeImpl, EdgePlan, StepKind, TreeDetail
from .methods import Method
from .plan import Plan, Step
from .spec import ProblemSpec
from .structure_ext import rooted_forest

__all__ = ["plan_tree", "EDGE_ROW_CHUNK_ELEMS"]

#: the materialised edge keeps one chunk of logits below this many elements (per batch entry)
EDGE_ROW_CHUNK_ELEMS = 2**24


def _edge(spec: ProblemSpec, u: int, c: int, logits: bool, bias: bool, causal_pairs: frozenset[tuple[int, int]]) -> EdgePlan:
    key = (min(u, c), max(u, c))
    masked = key in spec.mask_pairs
    causal = "child<=parent" if (u, c) in causal_pairs else "parent<=child" if (c, u) in causal_pairs else None
    impl = edge_impl(spec.device, spec.dtype, logits=logits, constrained=masked or causal is not None)
    nu, nc = spec.seq_lens[u - 1], spec.seq_lens[c - 1]
    via = EdgeCausal.NONE
    if causal is not None:
        if impl == EdgeImpl.FLASH and not masked and causal == "child<=parent":
            via = EdgeCausal.KERNEL
        elif impl == EdgeImpl.FLASH and not masked and nu == nc:
            via = EdgeCausal.FLIPPED  # j >= i becomes j' <= i' after reversing both sequences
        else:
            via = EdgeCausal.MASK
    rows = 0
    if impl == EdgeImpl.MATERIALISED:
        rows = max(1, min(nu, EDGE_ROW_CHUNK_ELEMS // max(1, nc)))
    return EdgePlan(u, c, logits, bias, masked, causal, impl, via, rows)


def _edge_bytes(spec: ProblemSpec, e: EdgePlan) -> float:
    """Working memory of one edge, forward and backward (inputs excluded)."""
    nu, nc = spec.seq_lens[e.parent - 1], spec.seq_lens[e.child - 1]
    b, isz, d, dv = spec.batch, spec.itemsize, spec.head_dim, spec.value_dim
    if e.impl == EdgeImpl.FLASH:
        # augmented q/k/v copies, output, lse and their gradients: O((n_u + n_c)(d + dv))
        m = 3.0 * (nu + nc) * (d + dv + 2) * b * isz
        compact = e.masked and spec.mask_layout(min(e.parent, e.child), max(e.parent, e.child)) == (
            "rows" if e.parent < e.child else "cols")  # the same for every parent row: one row
        if e.causal_via == EdgeCausal.MASK:
            m += nu * nc * (1 + (b if e.masked else 1) * (1 + isz))  # causal bool, combined mask, additive
        elif e.masked:
            m += (nc if compact else nu * nc) * b * (1 + isz)  # the mask's empty-row test and additive form
        return m
    if e.impl == EdgeImpl.BROADCAST:
        return 2.0 * (nc + nu) * (dv + 1) * b * isz
    rows = e.row_chunk or nu
    # logits, probabilities and their saved copies for autograd: every chunk is kept for backward
    return 3.0 * nu * nc * b * isz + rows * nc * b * isz + (nu * nc if (e.masked or e.causal) else 0)


def plan_tree(spec: ProblemSpec, budget: int) -> Plan:
    p = spec.polynomial
    t = p.num_variables
    rooted = rooted_forest(spec.factor_edges(), t)
    if rooted is None:
        why = f"degree {p.degree}" if p.degree > 2 else "its factor graph has a cycle"
        extra = ""
        if p.is_tree and spec.causal == "prefix":
            extra = " (causal='prefix' couples x1 with non-neighbours; causal='tree' keeps it a tree)"
        elif p.is_tree and spec.mask_pairs:
            extra = " (a mask on a pair that is not an edge closes a cycle)"
        raise MethodError(
            f"method='tree' needs a factor graph that is a forest of pairs; {p} has {why}{extra}. "
            "Use method='elimination' or 'auto'"
        )
    parent, post = rooted
    monos = set(p.monomials)
    causal_pairs = spec.causal_pairs()
    has_children = set(parent.values())
    edges, steps = [], []
    flops = peak = 0.0
    for c in post:
        u = parent[c]
        logits = (min(u, c), max(u, c)) in monos
        e = _edge(spec, u, c, logits, c in has_children, causal_pairs)
        nu, nc = spec.seq_lens[u - 1], spec.seq_lens[c - 1]
        f = 2.0 * nu * nc * ((spec.head_dim if logits else 0) + spec.value_dim + 1) * spec.batch
        m = _edge_bytes(spec, e)
        edges.append(e)
        steps.append(Step(StepKind.EDGE, c, (u, c), f, m, parent=u, logits=logits, impl=str(e.impl)))
        flops += f
        peak = max(peak, m)
    reason = (
        "the factor graph is a forest: message passing from the leaves, one attention pass per "
        "edge with the child's log-mass as a key bias (quadratic time, O(n*d) memory per edge)"
    )
    detail = TreeDetail(parents=tuple(sorted(parent.items())), order=tuple(post), edges=tuple(edges))
    return Plan(spec, Method.TREE, reason, tuple(steps), flops, peak, 2 if steps else 1, detail=detail)
