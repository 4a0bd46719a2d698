"""The methods poly-attention can run, as data (pure Python).

:class:`Method` lists every algorithm; the planner table (:mod:`.strategy`) and the kernel table
(:mod:`polyattn.ops.dispatch`) each hold one entry per member, so adding a method means adding a
member and one row in each table, and nothing registers itself as a side effect of an import.

A *request* (the ``method=`` argument) is a method name or one of the two planner choices:

* ``"auto"``  -- the cheapest exact method that applies (never an approximation);
* ``"exact"`` -- the same choice, spelled for users who want to say "never approximate".
"""

from __future__ import annotations

from enum import Enum

from ..errors import PolyAttentionError

__all__ = ["Method", "AUTO_REQUESTS", "EXACT_METHODS", "AUTO_ORDER", "REQUESTS", "parse_request"]


class Method(str, Enum):
    """An algorithm. ``str``-valued, so ``Method.TREE == "tree"`` and it prints as its name."""

    SDPA = "sdpa"  #: x1*x2 only: one fused scaled_dot_product_attention call
    TREE = "tree"  #: forest factor graphs: message passing, one attention pass per edge (n^2)
    ELIMINATION = "elimination"  #: any polynomial: stable variable elimination (n^(width+1))
    REFERENCE = "reference"  #: brute force over all tuples in float64 (the specification)
    APPROX = "approx"  #: polynomial method with an a-priori error bound (almost linear)

    def __str__(self) -> str:
        return self.value

    def __repr__(self) -> str:  # messages show method={m!r} as method='tree'
        return repr(self.value)

    @property
    def exact(self) -> bool:
        return self is not Method.APPROX


#: requests that let the planner choose (both choose among exact methods only)
AUTO_REQUESTS = ("auto", "exact")
#: exact methods in the order ``auto`` tries them (first that applies wins: cheapest first)
AUTO_ORDER = (Method.SDPA, Method.TREE, Method.ELIMINATION)
EXACT_METHODS = tuple(m for m in Method if m.exact)
#: every accepted value of ``method=``
REQUESTS = (*AUTO_REQUESTS, *(m.value for m in Method))


def parse_request(method: object) -> tuple[Method | None, str]:
    """``(Method or None for auto/exact, canonical request string)``; raises for unknown names."""
    if isinstance(method, Method):
        return method, method.value
    if isinstance(method, str):
        if method in AUTO_REQUESTS:
            return None, method
        try:
            return Method(method), method
        except ValueError:
            pass
    raise PolyAttentionError(
        f"unknown method {method!r}; choose one of {', '.join(repr(m) for m in REQUESTS)} "
        "('auto' and 'exact' pick the fastest exact method)"
    )
