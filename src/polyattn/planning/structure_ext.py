"""Structure the planner adds on top of the polynomial: causal constraints and the rooted forest."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import PolyAttentionError
from ..polynomial import AttentionPolynomial, is_forest, tree_parents

if TYPE_CHECKING:
    from .spec import ProblemSpec

__all__ = ["causal_constraints", "rooted_forest", "padding_partners"]


def causal_constraints(spec: ProblemSpec) -> frozenset[tuple[int, int]]:
    """Causal constraints as (parent, child) pairs meaning ``l_child <= l_parent``.

    ``"prefix"``: (1, j) for every j >= 2. ``"tree"`` (DESIGN §1.3): every variable's position is at
    most its parent's in the forest rooted at x1, where the roots of the other components (and
    variables in no monomial) hang under x1. Only defined for tree polynomials.
    """
    p = spec.polynomial
    t = p.num_variables
    if spec.causal == "prefix":
        return frozenset((1, j) for j in range(2, t + 1))
    if spec.causal == "tree":
        if not p.is_tree:
            raise PolyAttentionError(
                f"causal='tree' needs a tree polynomial (degree 2, forest graph); {p} is not one. "
                "Use causal='prefix' (every position <= the query position) instead"
            )
        parents = tree_parents(p.monomials, t)
        out = set()
        for v, par in parents.items():
            if v == 1:
                continue
            out.add((par if par is not None else 1, v))
        return frozenset(out)
    return frozenset()


def rooted_forest(
    edges: tuple[tuple[int, ...], ...], t: int
) -> tuple[dict[int, int], tuple[int, ...]] | None:
    """Root the factor graph at x1, hanging other components' roots under x1 by a zero edge.

    Returns (parent map for every v >= 2, post-order of v >= 2 with children before parents) or
    ``None`` when the factor graph is not a forest of pairs.
    """
    if not is_forest(edges, t):
        return None
    raw = tree_parents(edges, t)
    parent: dict[int, int] = {}
    for v in range(2, t + 1):
        par = raw[v]
        parent[v] = par if par is not None else 1
    # post-order: depth-first from x1
    children: dict[int, list[int]] = {v: [] for v in range(1, t + 1)}
    for v, par in parent.items():
        children[par].append(v)
    order: list[int] = []

    def visit(u: int) -> None:
        for c in sorted(children[u]):
            visit(c)
        if u != 1:
            order.append(u)

    visit(1)
    return parent, tuple(order)


def padding_partners(p: AttentionPolynomial) -> dict[int, int]:
    """For each non-query variable ``j``, a variable ``a`` such that the pair ``(a, j)`` is already a
    factor (inside a monomial containing ``j``): masking ``x_j``'s padded positions on that pair
    adds no new factor edge. Trees use ``j``'s parent in the forest rooted at x1; variables in no
    monomial pair with x1 (a zero edge)."""
    t = p.num_variables
    out: dict[int, int] = {}
    if p.is_forest:
        parents = tree_parents(p.monomials, t)
        for j in range(2, t + 1):
            par = parents.get(j)
            out[j] = par if par is not None else next((m[0] if m[0] != j else m[1] for m in p.monomials if j in m), 1)
        return out
    for j in range(2, t + 1):
        mono = next((m for m in p.monomials if j in m), None)
        out[j] = 1 if mono is None else (1 if 1 in mono else min(v for v in mono if v != j))
    return out
