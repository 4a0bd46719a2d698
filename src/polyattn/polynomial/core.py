"""The :class:`AttentionPolynomial` value type: a sum of distinct multilinear monomials.

Mathematics (DESIGN §1.1): variables ``x1 … xt``; ``x1`` is the query variable. A polynomial is a
set of monomials; each monomial is a set of at least two distinct variables with coefficient 1.
The canonical form sorts variables inside a monomial and monomials by (degree, variables), so two
polynomials are equal exactly when they denote the same function.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property

from ..errors import PolyAttentionError

__all__ = ["AttentionPolynomial", "Monomial"]

Monomial = tuple[int, ...]


def _canonical_monomial(mono: Iterable[int]) -> Monomial:
    items = list(mono)
    for v in items:
        if isinstance(v, bool) or not isinstance(v, int):
            raise PolyAttentionError(
                f"monomial {items!r}: variables are positive integers (1 for x1), got {v!r}"
            )
        if v < 1:
            raise PolyAttentionError(
                f"monomial {items!r}: variables are numbered from 1 (x1 is the query), got {v}"
            )
    if len(set(items)) != len(items):
        raise PolyAttentionError(
            f"monomial {items!r} repeats a variable; poly-attention polynomials are multilinear"
        )
    if len(items) < 2:
        raise PolyAttentionError(
            f"monomial {items!r} has degree {len(items)}; every monomial needs at least 2 variables"
        )
    return tuple(sorted(items))


def _sort_key(m: Monomial) -> tuple[int, Monomial]:
    return (len(m), m)


@dataclass(frozen=True)
class AttentionPolynomial:
    """An attention polynomial ``h`` in canonical form.

    Construct with :func:`polyattn.parse` from a string, or programmatically::

        AttentionPolynomial([(1, 2), (2, 3)])           # x1*x2 + x2*x3
        AttentionPolynomial([(1, 3)], num_variables=3)   # x1*x3 with x2 in no monomial

    ``num_variables`` (``t``) defaults to the largest variable index; a larger value adds variables
    that appear in no monomial (they contribute the mean of their values). ``str()`` gives the
    canonical spec, which :func:`polyattn.parse` maps back to an equal polynomial (when
    ``num_variables`` is the default).
    """

    monomials: tuple[Monomial, ...]
    num_variables: int = field(default=0)

    def __init__(self, monomials: Iterable[Iterable[int]], num_variables: int | None = None) -> None:
        monos = [_canonical_monomial(m) for m in monomials]
        if not monos:
            raise PolyAttentionError("a polynomial needs at least one monomial, e.g. x1*x2")
        seen: set[Monomial] = set()
        for m in monos:
            if m in seen:
                raise PolyAttentionError(
                    f"duplicate monomial {_fmt(m)}; coefficients are always 1, list it once"
                )
            seen.add(m)
        top = max(max(m) for m in monos)
        if num_variables is None:
            num_variables = top
        if num_variables < top:
            raise PolyAttentionError(
                f"num_variables={num_variables} but the polynomial uses x{top}"
            )
        object.__setattr__(self, "monomials", tuple(sorted(monos, key=_sort_key)))
        object.__setattr__(self, "num_variables", int(num_variables))

    # -- basic queries -------------------------------------------------------------------
    @property
    def degree(self) -> int:
        """``k``: the largest monomial size."""
        return max(len(m) for m in self.monomials)

    @property
    def variables(self) -> tuple[int, ...]:
        """All variables ``1..t`` (including those in no monomial)."""
        return tuple(range(1, self.num_variables + 1))

    @cached_property
    def used_variables(self) -> frozenset[int]:
        return frozenset(v for m in self.monomials for v in m)

    @property
    def isolated_variables(self) -> tuple[int, ...]:
        """Variables that appear in no monomial."""
        return tuple(v for v in self.variables if v not in self.used_variables)

    @property
    def edges(self) -> tuple[tuple[int, int], ...]:
        """The graph of a degree-2 polynomial (monomials as edges)."""
        if self.degree != 2:
            raise PolyAttentionError(
                f"{self} has degree {self.degree}; only degree-2 polynomials have a graph "
                "(use .monomials for the hypergraph)"
            )
        return tuple((m[0], m[1]) for m in self.monomials)

    def __str__(self) -> str:
        return " + ".join(_fmt(m) for m in self.monomials)

    def __repr__(self) -> str:
        extra = (
            f", num_variables={self.num_variables}"
            if self.num_variables != max(self.used_variables)
            else ""
        )
        return f"AttentionPolynomial({str(self)!r}{extra})"

    def relabel(self, mapping: dict[int, int] | Sequence[int]) -> AttentionPolynomial:
        """Rename variables: ``mapping[v]`` is the new index of ``v`` (a permutation of 1..t)."""
        if not isinstance(mapping, dict):
            mapping = {i + 1: int(v) for i, v in enumerate(mapping)}
        if sorted(mapping) != list(self.variables) or sorted(mapping.values()) != list(self.variables):
            raise PolyAttentionError("relabel needs a permutation of the variables 1..t")
        return AttentionPolynomial(
            [[mapping[v] for v in m] for m in self.monomials], num_variables=self.num_variables
        )

    # Structure queries live in structure.py; expose the common ones as properties.
    @property
    def is_tree(self) -> bool:
        """True for tree polynomials: degree 2 and the graph is a forest (DESIGN §1.1)."""
        from .structure import is_forest

        return self.degree == 2 and is_forest(self.monomials, self.num_variables)

    @property
    def is_forest(self) -> bool:
        return self.is_tree

    def components(self) -> list[tuple[int, ...]]:
        from .structure import connected_components

        return connected_components(self.monomials, self.num_variables)

    def elimination_order(self) -> tuple[tuple[int, ...], int]:
        """An order to eliminate ``x2..xt`` and its width (see :func:`structure.elimination_order`)."""
        from .structure import elimination_order

        return elimination_order(self.monomials, self.num_variables)


def _fmt(m: Monomial) -> str:
    return "*".join(f"x{v}" for v in m)
