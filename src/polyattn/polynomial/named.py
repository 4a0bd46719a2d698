"""Named mechanisms of DESIGN §1.4 as polynomial constructors."""

from __future__ import annotations

from collections.abc import Iterable

from ..errors import PolyAttentionError
from .core import AttentionPolynomial
from .structure import is_forest

__all__ = ["self_attention", "tensor", "strassen", "path", "star", "tree", "NAMED"]


def _need(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise PolyAttentionError(f"{name} must be an integer >= {minimum}, got {value!r}")


def self_attention() -> AttentionPolynomial:
    """``x1*x2``: standard softmax attention."""
    return AttentionPolynomial([(1, 2)])


def tensor(t: int = 3) -> AttentionPolynomial:
    """``x1*x2*…*xt``: t-tensor (higher-order) attention; ``t = 3`` is 2-simplicial attention."""
    _need("t", t, 2)
    return AttentionPolynomial([tuple(range(1, t + 1))])


def strassen() -> AttentionPolynomial:
    """``x1*x2 + x2*x3 + x1*x3``: Strassen attention (the triangle)."""
    return AttentionPolynomial([(1, 2), (2, 3), (1, 3)])


def path(r: int = 2) -> AttentionPolynomial:
    """``h_r = x1*x2 + x2*x3 + … + xr*x(r+1)``: tree-attention that composes r functions."""
    _need("r", r, 1)
    return AttentionPolynomial([(i, i + 1) for i in range(1, r + 1)])


def star(t: int = 3) -> AttentionPolynomial:
    """``x1*x2 + x1*x3 + … + x1*xt``: factorises into t-1 independent attentions."""
    _need("t", t, 2)
    return AttentionPolynomial([(1, j) for j in range(2, t + 1)])


def tree(edges: Iterable[tuple[int, int]]) -> AttentionPolynomial:
    """The tree polynomial with the given edges; raises if they contain a cycle."""
    edges = list(edges)
    if any(len(tuple(e)) != 2 for e in edges):
        raise PolyAttentionError("tree() takes pairs (a, b) of variables")
    p = AttentionPolynomial(edges)
    if not is_forest(p.monomials, p.num_variables):
        raise PolyAttentionError(f"tree({edges!r}): the edges contain a cycle")
    return p


NAMED: dict[str, AttentionPolynomial] = {
    "self-attention": self_attention(),
    "tree (path h2)": path(2),
    "path h3": path(3),
    "star t=3": star(3),
    "strassen": strassen(),
    "tensor t=3": tensor(3),
}
