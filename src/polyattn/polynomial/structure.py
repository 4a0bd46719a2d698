"""Structure of the (hyper)graph of an attention polynomial: components, forests, elimination.

All functions take plain hyperedges (tuples of 1-based variables) so that the planner can add
mask pairs as extra factors without building a new polynomial.

Elimination: to compute poly-attention we sum out every non-query variable ``x2..xt``; ``x1``
indexes the output and is never eliminated. Eliminating ``v`` joins every factor that touches
``v``; its *width* is the number of other variables in that join. The width of an order is the
largest step width, and the exact cost is ``n^(width+1)`` (times ``d``). For graphs the best width
is the treewidth of the graph with ``x1`` forced last; trees have width 1 (quadratic).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence

__all__ = [
    "connected_components",
    "is_forest",
    "elimination_order",
    "order_width",
    "tree_parents",
]

Edge = Sequence[int]

# The exact (dynamic programming) order search is used up to this many variables to eliminate.
_EXACT_LIMIT = 14


def _adjacency(edges: Iterable[Edge], t: int) -> dict[int, set[int]]:
    adj: dict[int, set[int]] = {v: set() for v in range(1, t + 1)}
    for e in edges:
        for a in e:
            for b in e:
                if a != b:
                    adj[a].add(b)
    return adj


def connected_components(edges: Iterable[Edge], t: int) -> list[tuple[int, ...]]:
    """Connected components of the primal graph, each sorted, ordered by smallest variable."""
    adj = _adjacency(edges, t)
    seen: set[int] = set()
    comps: list[tuple[int, ...]] = []
    for v in range(1, t + 1):
        if v in seen:
            continue
        stack, comp = [v], []
        seen.add(v)
        while stack:
            u = stack.pop()
            comp.append(u)
            for w in adj[u]:
                if w not in seen:
                    seen.add(w)
                    stack.append(w)
        comps.append(tuple(sorted(comp)))
    return comps


def is_forest(edges: Iterable[Edge], t: int) -> bool:
    """True when every hyperedge is a pair and the graph has no cycle (parallel pairs count as one)."""
    pairs = {tuple(sorted(e)) for e in edges}
    if any(len(p) != 2 for p in pairs):
        return False
    parent = list(range(t + 1))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra == rb:
            return False
        parent[ra] = rb
    return True


def tree_parents(edges: Iterable[Edge], t: int) -> dict[int, int | None]:
    """Root each component of a forest (x1's at x1, others at their smallest variable).

    Returns ``parent[v]`` (``None`` for roots). Raises ``ValueError`` if the graph is not a forest.
    """
    pairs = {tuple(sorted(e)) for e in edges}
    if not is_forest(pairs, t):
        raise ValueError("not a forest")
    adj = _adjacency(pairs, t)
    parent: dict[int, int | None] = {}
    for root in range(1, t + 1):
        if root in parent:
            continue
        parent[root] = None
        stack = [root]
        while stack:
            u = stack.pop()
            for w in sorted(adj[u]):
                if w not in parent:
                    parent[w] = u
                    stack.append(w)
    return parent


def order_width(edges: Iterable[Edge], t: int, order: Sequence[int]) -> int:
    """Width of eliminating ``order`` (x1 kept): the largest number of neighbours at elimination."""
    adj = _adjacency(edges, t)
    width = 0
    for v in order:
        nb = adj.pop(v)
        width = max(width, len(nb))
        for a in nb:
            adj[a].discard(v)
            adj[a] |= nb - {a}
    return width


def elimination_order(edges: Iterable[Edge], t: int) -> tuple[tuple[int, ...], int]:
    """An order to eliminate ``x2..xt`` of minimum width, and that width.

    Exact for up to 14 eliminated variables by dynamic programming over the sets of eliminated
    variables (the width of eliminating ``v`` after a set ``S`` is the number of variables outside
    ``S`` reachable from ``v`` through ``S``, so it depends on ``S`` only): ``O(2^m * m^2)``.
    Greedy min-degree / min-fill beyond. Ties are broken by the number of steps at large width,
    and the greedy order (which eliminates leaves first, turning trees into message passing) is
    kept whenever it is as good.
    """
    edge_list: list[tuple[int, ...]] = [tuple(e) for e in edges]
    rest = list(range(2, t + 1))
    if not rest:
        return (), 0
    greedy = _greedy_order(edge_list, t, rest)
    g_key = (order_width(edge_list, t, greedy), _sum_cost(edge_list, t, greedy))
    if len(rest) > _EXACT_LIMIT or g_key[0] <= 1:
        return greedy, g_key[0]
    order, key = _dp_order(edge_list, t, rest)
    if g_key <= key:
        return greedy, g_key[0]
    return order, key[0]


def _dp_order(edges: list[tuple[int, ...]], t: int, rest: list[int]) -> tuple[tuple[int, ...], tuple[int, int]]:
    adj = _adjacency(edges, t)
    m = len(rest)
    bit = {v: 1 << i for i, v in enumerate(rest)}

    def step_width(mask: int, v: int) -> int:
        # variables outside mask ∪ {v} reachable from v through eliminated ones
        seen = {v}
        stack = [v]
        out = 0
        while stack:
            u = stack.pop()
            for w in adj[u]:
                if w in seen:
                    continue
                seen.add(w)
                if w != 1 and mask & bit[w]:
                    stack.append(w)
                else:
                    out += 1
        return out

    best: dict[int, tuple[tuple[int, int], tuple[int, ...]]] = {0: ((0, 0), ())}
    for mask in range(1, 1 << m):
        cand: tuple[tuple[int, int], tuple[int, ...]] | None = None
        for i, v in enumerate(rest):
            if not mask & (1 << i):
                continue
            prev = mask & ~(1 << i)
            (pw, ps), porder = best[prev]
            w = step_width(prev, v)
            key = (max(pw, w), ps + 8**w)
            if cand is None or key < cand[0]:
                cand = (key, porder + (v,))
        assert cand is not None
        best[mask] = cand
    key, order = best[(1 << m) - 1]
    return order, key


def _sum_cost(edges: list[tuple[int, ...]], t: int, order: Sequence[int]) -> int:
    # Secondary criterion: number of steps at the maximal width (fewer is cheaper).
    adj = _adjacency(edges, t)
    widths = []
    for v in order:
        nb = adj.pop(v)
        widths.append(len(nb))
        for a in nb:
            adj[a].discard(v)
            adj[a] |= nb - {a}
    return sum(8 ** w for w in widths)


def _greedy_order(edges: list[tuple[int, ...]], t: int, rest: list[int]) -> tuple[int, ...]:
    adj = _adjacency(edges, t)
    remaining = set(rest)
    order = []
    while remaining:

        def key(v: int) -> tuple[int, int, int]:
            nb = adj[v]
            fill = sum(1 for a, b in itertools.combinations(nb, 2) if b not in adj[a])
            return (len(nb), fill, -v)

        v = min(remaining, key=key)
        nb = adj.pop(v)
        for a in nb:
            adj[a].discard(v)
            adj[a] |= nb - {a}
        remaining.discard(v)
        order.append(v)
    return tuple(order)
