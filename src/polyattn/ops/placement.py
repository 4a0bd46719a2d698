r"""Root value placement around any planned kernel (see :mod:`polyattn.planning.placement`).

A root-placed variable ``x_j`` has its value multiplied at the query position::

    out[l1] = V_j[l1] * sum_{l2..lt} w(l1..lt) * prod_{i != j} V_i[l_i]
            = V_j[l1] * poly_attention(h, Q, V with V_j := None)[l1]

so :func:`split_root_values` takes the root-placed values out of the list (the kernels then see
``x_j`` as value-less, which changes nothing else: ``x_j``'s query row still enters every monomial
containing it) and :func:`apply_root_values` multiplies them in afterwards. Exact, any method,
any mask or causal mode; one extra ``O(n_1 * dv)`` product per root-placed variable.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import PolyAttentionError
from ..planning.placement import root_placed_variables
from ..polynomial import AttentionPolynomial, parse

__all__ = ["split_root_values", "apply_root_values"]


def split_root_values(
    polynomial: str | AttentionPolynomial,
    queries: Sequence[torch.Tensor],
    values: Sequence[torch.Tensor | None] | None,
    value_placement: object,
) -> tuple[Sequence[torch.Tensor | None] | None, list[torch.Tensor]]:
    """``(values for the kernels, root-placed values)``; validates the request against the tensors.

    A root-placed variable must carry a value and range over the query's tokens (``n_j == n_1``).
    """
    if value_placement is None or (isinstance(value_placement, str) and value_placement == "own"):
        return values, []
    p = parse(polynomial)
    root = root_placed_variables(p, value_placement)
    if not root:
        return values, []
    t = p.num_variables
    if (
        values is None or isinstance(values, torch.Tensor) or isinstance(queries, torch.Tensor)
        or not isinstance(queries, Sequence) or len(values) != t - 1 or len(queries) != t
        or not isinstance(queries[0], torch.Tensor) or queries[0].dim() < 2
    ):
        return values, []  # let prepare() report the malformed input
    n1 = queries[0].shape[-2]
    kept = list(values)
    moved = []
    for j in root:
        v = values[j - 2]
        if v is None:
            raise PolyAttentionError(
                f"value_placement: x{j} is root-placed but has no value (values[{j - 2}] is None); "
                "a value-less variable has nothing to place"
            )
        if not isinstance(v, torch.Tensor) or v.dim() < 2:
            return values, []  # prepare() reports it
        if v.shape[-2] != n1:
            raise PolyAttentionError(
                f"value_placement: x{j} is root-placed, so its value is read at the query position; "
                f"that needs x{j} to range over the query's tokens, but values[{j - 2}] has "
                f"{v.shape[-2]} rows and the query x1 has n={n1}"
            )
        moved.append(v)
        kept[j - 2] = None
    dvs = {v.shape[-1] for v in values if isinstance(v, torch.Tensor)}
    if len(dvs) > 1:
        raise PolyAttentionError(
            f"values: every value must have the same last dim dv, got {sorted(dvs)} (root-placed included)"
        )
    return kept, moved


def apply_root_values(out: torch.Tensor, moved: Sequence[torch.Tensor], out_dtype: torch.dtype) -> torch.Tensor:
    """``out * V_j`` for every root-placed value (broadcast over batch dims), cast to the output dtype."""
    for v in moved:
        out = out * v.to(out.dtype)
        out_dtype = torch.promote_types(out_dtype, v.dtype)
    return out.to(out_dtype)
