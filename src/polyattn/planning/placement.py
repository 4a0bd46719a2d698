r"""Value placement: where a variable's value enters the output (pure Python, no torch).

The paper's formula (DESIGN §1.2) multiplies every non-query variable's value at *its own*
position, inside the sum over tuples ("own" placement)::

    out[l1] = sum_{l2..lt} w(l1..lt) * V_2[l2] * ... * V_t[lt]

The authors' released code (``kozmath/tree_attention``: ``src/tree_general.py``,
``src/tree_simple.py``; the figure scripts of ``sayaksc/tree_attention_simple``:
``src/tree_att_nan_seed.py``) multiplies the value of the middle variable of the path
``x1*x2 + x2*x3`` at the *query* position instead ("root" placement)::

    out[l1] = V_2[l1] * sum_{l2, l3} w(l1, l2, l3) * V_3[l3]

Since ``V_j[l1]`` does not depend on the summed tuple, a root-placed value factors out of the
sum exactly: the output is ``V_j[l1]`` times poly-attention with ``x_j`` value-less. That is only
defined when ``x_j`` ranges over the query's tokens (``n_j == n_1``; in self-attention use they
are the same tokens).

Requests (the ``value_placement=`` argument of :func:`polyattn.poly_attention`):

* ``"own"`` (default) -- the paper's formula;
* ``"root"`` -- the authors' convention: in a tree polynomial rooted at ``x1``, every neighbour of
  ``x1`` that has children of its own is root-placed, leaves keep their own position. Their general
  code (``TreeAttention_General``) places a deeper internal variable's value at its *parent's*
  position, which is not the query position; such trees are refused (name the variables instead);
* a mapping ``{j: "root" | "own"}`` -- choose per variable (any polynomial).

:func:`root_placed_variables` resolves a request to the tuple of root-placed variables.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..errors import PolyAttentionError
from ..polynomial import AttentionPolynomial, tree_parents

__all__ = ["PLACEMENTS", "root_placed_variables", "check_layer_placement"]

#: accepted string requests
PLACEMENTS = ("own", "root")


def _authors_root_vars(p: AttentionPolynomial) -> tuple[int, ...]:
    """Neighbours of x1 that have children of their own, in the tree rooted at x1."""
    t = p.num_variables
    if not p.is_tree or len(p.components()) != 1:
        raise PolyAttentionError(
            f"value_placement='root' is the authors' convention for a connected tree polynomial "
            f"rooted at x1; {p} is not one. Pass a mapping such as {{2: 'root'}} to choose the "
            "root-placed variables yourself"
        )
    parent = tree_parents(p.monomials, t)
    children: dict[int, list[int]] = {v: [] for v in range(1, t + 1)}
    for v, par in parent.items():
        if par is not None:
            children[par].append(v)
    deep = sorted(v for v in range(2, t + 1) if children[v] and parent[v] != 1)
    if deep:
        names = ", ".join(f"x{v} (parent x{parent[v]})" for v in deep)
        raise PolyAttentionError(
            f"value_placement='root' on {p}: the authors' code places the value of an internal "
            f"variable that is not a neighbour of x1 at its parent's position ({names}), which is "
            "not the query position and is not offered. Pass a mapping such as {2: 'root'} to "
            "root-place chosen variables"
        )
    return tuple(sorted(v for v in children[1] if children[v]))


def root_placed_variables(p: AttentionPolynomial, value_placement: object) -> tuple[int, ...]:
    """The variables whose value is multiplied at the query position (sorted; may be empty).

    ``value_placement`` is ``"own"``, ``"root"`` or ``{j: "own" | "root"}`` (see the module doc).
    Raises :class:`~polyattn.PolyAttentionError` naming what is wrong.
    """
    if value_placement is None or value_placement == "own":
        return ()
    if value_placement == "root":
        return _authors_root_vars(p)
    if isinstance(value_placement, Mapping):
        t = p.num_variables
        out = []
        for j, how in value_placement.items():
            if isinstance(j, bool) or not isinstance(j, int) or not 2 <= j <= t:
                raise PolyAttentionError(
                    f"value_placement key {j!r}: expected a non-query variable 2..{t} of {p} "
                    "(x1 has no value)"
                )
            if how not in PLACEMENTS:
                raise PolyAttentionError(
                    f"value_placement[{j}] = {how!r}: expected 'own' or 'root'"
                )
            if how == "root":
                out.append(j)
        return tuple(sorted(out))
    raise PolyAttentionError(
        f"value_placement must be 'own' (the paper's formula), 'root' (the authors' code: x1's "
        f"internal neighbours' values at the query position) or a mapping {{j: 'own' | 'root'}}, "
        f"got {value_placement!r}"
    )


def check_layer_placement(
    p: AttentionPolynomial, value_placement: object, valueless: tuple[int, ...] = ()
) -> object:
    """Validate a layer's ``value_placement`` up front (no tensors yet); returns it unchanged.

    Besides :func:`root_placed_variables`' checks, a root-placed variable must not be declared
    value-less (it would have nothing to place).
    """
    root = root_placed_variables(p, value_placement)
    both = sorted(set(root) & set(valueless))
    if both:
        raise PolyAttentionError(
            f"value_placement root-places {', '.join(f'x{j}' for j in both)}, which valueless= "
            "declares value-less; a value-less variable has nothing to place"
        )
    if isinstance(value_placement, Mapping):
        return dict(value_placement)
    return "own" if value_placement is None else value_placement
