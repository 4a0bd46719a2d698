"""Attention polynomials: parsing, canonical form, named mechanisms and structure. No torch here."""

from .core import AttentionPolynomial, Monomial
from .named import NAMED, path, self_attention, star, strassen, tensor, tree
from .parse import parse
from .structure import (
    connected_components,
    elimination_order,
    is_forest,
    order_width,
    tree_parents,
)

__all__ = [
    "AttentionPolynomial",
    "Monomial",
    "parse",
    "self_attention",
    "tensor",
    "strassen",
    "path",
    "star",
    "tree",
    "NAMED",
    "connected_components",
    "elimination_order",
    "is_forest",
    "order_width",
    "tree_parents",
]
