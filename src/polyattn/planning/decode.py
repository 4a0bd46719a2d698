r"""Incremental decoding: which polynomials and causal modes can be cached, and the decode plan.

Pure Python (no torch). :func:`decode_support` states whether a (polynomial, causal mode) pair
admits an incremental forward whose per-token cost is ``O(n * d)`` per edge and why;
:func:`plan_decode` turns a supported pair into a :class:`DecodePlan`: the rooted tree, the edges
in execution order and what the cache stores per variable.

Why tree-causal tree polynomials can be cached. Under ``causal="tree"`` every variable's position
is at most its parent's in the tree rooted at ``x1``. Message passing (DESIGN §2) computes, for
each non-root variable ``c`` and each of its positions ``l``, a subtree log-mass and a value
product::

    logZ_c[l] = sum_{children g} logsumexp_{l' <= l} (s Q_c[l] . Q_g[l'] + logZ_g[l'])
    M_c[l]    = V_c[l] * prod_{children g} softmax_{l' <= l}(...) @ M_g

Both depend only on positions ``<= l``: they never change when tokens arrive after ``l``. A new
token at position ``n`` therefore needs, for every edge ``(u, c)`` in post-order, one attention
row from ``Q_u[n]`` over the cached keys ``Q_c[0..n]`` with the cached ``logZ_c`` as key bias and
the cached ``M_c`` as values: ``O(n * (d + dv))`` per edge, instead of the ``O(n^2 * (d + dv))``
of recomputing the messages. For ``x1*x2`` this is the ordinary KV cache (keys ``Q_2``, values
``V_2``).

What cannot be cached cheaply (and why):

* ``causal=False``: every position attends to later tokens, so every earlier output changes with
  each new token; there is nothing incremental to decode.
* ``causal="prefix"`` on a tree with a variable two or more edges from ``x1`` (e.g. ``x3`` in
  ``x1*x2 + x2*x3``): that variable is bounded by the *query* position, not by its parent's, so the
  message into its parent at an earlier position ``l2`` sums over ``l3 <= n`` and changes with
  every new query: each new query couples with all earlier tuples. At depth exactly 2 the changed
  messages could be updated by running sums (one new term per earlier position, ``O(n * d)`` per
  token; not implemented); from depth 3 on, updating them needs every pair of earlier positions
  (``O(n^2 * d)`` per token, the cost of recomputing the newest output row from scratch).
  ``causal="prefix"`` *is* cached when it coincides with ``"tree"``: every monomial contains ``x1``
  (``x1*x2``, stars).
* Non-tree polynomials (cycles such as Strassen, or degree >= 3 monomials): one new query row
  couples ``x1`` with tuples of earlier positions that share no per-position summary (a triangle's
  new row costs ``O(n^2 * d)`` however much is stored), so no per-position message is reusable.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import PolyAttentionError
from ..polynomial import AttentionPolynomial, parse
from .details import EdgeCausal, EdgeImpl, EdgePlan
from .plan_tree import EDGE_ROW_CHUNK_ELEMS
from .spec import ProblemSpec, normalize_causal
from .structure_ext import rooted_forest

__all__ = [
    "DecodeSupport",
    "DecodeVar",
    "DecodePlan",
    "decode_support",
    "plan_decode",
    "CACHEABLE_METHODS",
]

#: layer ``method=`` values whose result the cache reproduces (tree message passing is exact and
#: what ``auto`` picks for these inputs); other methods are refused, never silently replaced
CACHEABLE_METHODS = ("auto", "exact", "tree", "sdpa")


@dataclass(frozen=True)
class DecodeSupport:
    """Whether ``polynomial`` under ``causal`` has an ``O(n*d)``-per-edge incremental forward."""

    polynomial: AttentionPolynomial
    causal: str | bool
    cacheable: bool
    reason: str

    def __bool__(self) -> bool:
        return self.cacheable

    def __str__(self) -> str:
        verdict = "cacheable" if self.cacheable else "not cacheable"
        return f"{self.polynomial} (causal={self.causal!r}): {verdict}: {self.reason}"


def _depth(parent: dict[int, int], v: int) -> int:
    d = 0
    while v != 1:
        v = parent[v]
        d += 1
    return d


def decode_support(polynomial: str | AttentionPolynomial, causal: object) -> DecodeSupport:
    """Can ``polynomial`` under ``causal`` be decoded token by token from a cache, and why.

    Returns a :class:`DecodeSupport` (truthy when cacheable); never raises for a valid polynomial
    and causal mode. See the module docstring for the reasons.
    """
    p = parse(polynomial)
    mode = normalize_causal(causal)
    if mode is False:
        return DecodeSupport(p, mode, False, (
            "without causality every position attends to later tokens, so every earlier output "
            "changes when a token arrives; incremental decoding needs causal='tree'"
        ))
    if not p.is_tree:
        why = f"degree {p.degree}" if p.degree > 2 else "a cycle"
        return DecodeSupport(p, mode, False, (
            f"{p} is not a tree polynomial ({why}): each new query couples with tuples of earlier "
            "positions that share no per-position summary (a new output row of the triangle or of "
            "x1*x2*x3 costs O(n^2) even with every pairwise factor stored), so no per-position "
            "message can be cached"
        ))
    spec = ProblemSpec.build(p, seq_len=1, head_dim=1, causal="tree")
    rooted = rooted_forest(spec.factor_edges(), p.num_variables)
    assert rooted is not None
    parent, _ = rooted
    if mode == "prefix":
        deep = sorted(v for v in parent if _depth(parent, v) >= 2)
        if deep:
            v = deep[0]
            return DecodeSupport(p, mode, False, (
                f"under causal='prefix' x{v} is bounded by the query position, not by its parent "
                f"x{parent[v]}'s, so the message x{v} -> x{parent[v]} at every earlier position changes "
                "with each new token: each new query couples with all earlier tuples (O(n^2 d) per "
                "token from depth 3 on; depth 2 would need running sums, not implemented). "
                "Use causal='tree' (each variable <= its parent), which is cacheable"
            ))
        return DecodeSupport(p, mode, True, (
            "every monomial contains x1, so causal='prefix' equals causal='tree': each position's "
            "message depends only on earlier positions; O(n*(d+dv)) per edge per token"
        ))
    return DecodeSupport(p, mode, True, (
        "under causal='tree' each non-query position's subtree message (log-mass and value "
        "product) depends only on positions at or before it, so it is computed once and cached; "
        "a new token costs one attention row per edge, O(n*(d+dv))"
    ))


@dataclass(frozen=True)
class DecodeVar:
    """What the cache stores for one non-query variable (one row per position)."""

    var: int
    parent: int
    key: bool  #: its query row ``Q_c`` (the parent edge has logits)
    message: bool  #: its value product ``M_c`` (a value, or children that carry one)
    logz: bool  #: its subtree log-mass ``logZ_c`` (it has children)


@dataclass(frozen=True)
class DecodePlan:
    """The incremental forward of a cacheable (polynomial, causal) pair.

    ``vars`` in execution order (post-order: children before parents); edge ``(parent, var)``
    runs right after ``var``'s new rows are final. ``root_values``: variables whose value is
    multiplied at the query position (value placement "root", never cached).
    """

    polynomial: AttentionPolynomial
    causal: str
    vars: tuple[DecodeVar, ...]
    root_values: tuple[int, ...]
    has_values: tuple[bool, ...]  #: per variable x2..xt, as the kernels see them (root-placed: False)
    reason: str

    def edges(self, new_rows: int, total_rows: int) -> tuple[EdgePlan, ...]:
        """Edge plans for ``new_rows`` parent rows over ``total_rows`` child rows.

        The materialised edge with an explicit boolean mask (causality with the cache offset and
        key padding, built by the caller): rows are chunked to keep ``row_chunk * total_rows``
        logits below :data:`~polyattn.planning.plan_tree.EDGE_ROW_CHUNK_ELEMS`.
        """
        rows = max(1, min(new_rows, EDGE_ROW_CHUNK_ELEMS // max(1, total_rows)))
        return tuple(
            EdgePlan(v.parent, v.var, v.key, v.logz, True, None, EdgeImpl.MATERIALISED, EdgeCausal.NONE, rows)
            for v in self.vars
        )

    @staticmethod
    def row_kernel(new_rows: int, constrained: bool) -> bool:
        """Whether a call runs the single-row kernel (one new token, no mask: no row can be empty,
        so the log-sum-exp needs no guard) instead of the masked, chunked materialised edge."""
        return new_rows == 1 and not constrained

    def cached_floats(self, head_dim: int, value_dim: int) -> int:
        """Floats stored per position, batch entry and head."""
        return sum((head_dim if v.key else 0) + (value_dim if v.message else 0) + (1 if v.logz else 0)
                   for v in self.vars)

    def __str__(self) -> str:
        lines = [f"DecodePlan for {self.polynomial} (causal={self.causal!r}): {self.reason}"]
        for v in self.vars:
            stored = [name for name, on in (("key", v.key), ("message", v.message), ("logZ", v.logz)) if on]
            lines.append(
                f"  edge x{v.parent} <- x{v.var}: one row over the cached x{v.var} rows; "
                f"cache x{v.var}: {', '.join(stored) or 'nothing (zero edge, value-less leaf)'}"
            )
        if self.root_values:
            lines.append("  root-placed values (read at the query position): "
                         + ", ".join(f"x{j}" for j in self.root_values))
        return "\n".join(lines)


def plan_decode(
    polynomial: str | AttentionPolynomial,
    causal: object,
    *,
    has_values: tuple[bool, ...] | None = None,
    root_values: tuple[int, ...] = (),
) -> DecodePlan:
    """The :class:`DecodePlan`, or a :class:`~polyattn.PolyAttentionError` saying why not.

    ``has_values``: per variable x2..xt, whether it carries a value (default all); root-placed
    variables (``root_values``) are treated as value-less inside the sum.
    """
    p = parse(polynomial)
    sup = decode_support(p, causal)
    if not sup:
        raise PolyAttentionError(f"cannot decode incrementally with a cache: {sup.reason}")
    t = p.num_variables
    hv = list(has_values) if has_values is not None else [True] * (t - 1)
    if len(hv) != t - 1:
        raise PolyAttentionError(f"has_values needs {t - 1} entries (x2..x{t}), got {len(hv)}")
    for j in root_values:
        hv[j - 2] = False
    spec = ProblemSpec.build(p, seq_len=1, head_dim=1, causal="tree")
    rooted = rooted_forest(spec.factor_edges(), t)
    assert rooted is not None
    parent, post = rooted
    monos = set(p.monomials)
    children: dict[int, list[int]] = {v: [] for v in range(1, t + 1)}
    for v, u in parent.items():
        children[u].append(v)
    carries: dict[int, bool] = {}
    out = []
    for c in post:  # children before parents, so carries[g] is known for every child g
        carries[c] = hv[c - 2] or any(carries[g] for g in children[c])
        out.append(DecodeVar(
            var=c, parent=parent[c], key=(min(c, parent[c]), max(c, parent[c])) in monos,
            message=carries[c], logz=bool(children[c]),
        ))
    return DecodePlan(p, str(sup.causal), tuple(out), tuple(sorted(root_values)), tuple(hv), sup.reason)
