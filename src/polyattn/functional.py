"""``poly_attention``: the one public operation (DESIGN §4)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from .ops import prepare, run
from .planning import DEFAULT_MEMORY_BUDGET, Plan
from .planning.strategy import _cached
from .polynomial import AttentionPolynomial

__all__ = ["poly_attention", "plan_for"]


def plan_for(
    polynomial: str | AttentionPolynomial,
    queries: Sequence[torch.Tensor],
    values: Sequence[torch.Tensor | None] | None,
    *,
    scale: float | None = None,
    causal: object = False,
    mask: Mapping[tuple[int, int], torch.Tensor] | None = None,
    method: str = "auto",
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    **options: object,
) -> Plan:
    """The :class:`Plan` that :func:`poly_attention` would run for these tensors (same ``**options``)."""
    prob = prepare(polynomial, queries, values, scale=scale, causal=causal, mask=mask)
    pl = _cached(prob.spec, method, int(memory_budget))
    hook = _OPTION_HOOKS.get(pl.method)
    if hook is not None:
        return hook(prob, pl, options)  # type: ignore[operator]
    if options:
        raise_unknown_options(pl.method, options)
    return pl


def poly_attention(
    polynomial: str | AttentionPolynomial,
    queries: Sequence[torch.Tensor],
    values: Sequence[torch.Tensor | None] | None,
    *,
    scale: float | None = None,
    causal: object = False,
    mask: Mapping[tuple[int, int], torch.Tensor] | None = None,
    method: str = "auto",
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    **options: object,
) -> torch.Tensor:
    r"""Poly-attention of ``polynomial`` (DESIGN §1.2).

    .. math::
        \mathrm{out}[l_1] = \sum_{l_2..l_t} \mathrm{softmax}_{l_2..l_t}\big(s\,h(l_1..l_t)\big)
        \; V_2[l_2] \odot \dots \odot V_t[l_t]

    Args:
        polynomial: a spec such as ``"x1*x2 + x2*x3"`` or an :class:`AttentionPolynomial`.
        queries: ``t`` tensors ``[..., n_j, d]``, one per variable (``x1`` first; there are no
            separate keys: a variable's row enters every monomial containing it).
        values: ``t - 1`` entries for ``x2..xt``, each ``[..., n_j, dv]`` or ``None`` (all-ones value).
            ``None`` for the whole list makes every variable value-less (then ``dv = 1``).
        scale: logit scale ``s``; default ``1/sqrt(d)`` so that ``x1*x2`` equals SDPA.
        causal: ``False``, ``"tree"`` (each variable <= its parent in the tree rooted at x1; a
            component without x1 is rooted at its smallest variable, whose position is <= x1's),
            ``"prefix"`` (every variable <= the query position) or ``True`` (= ``"prefix"``).
        mask: ``{(a, b): bool [..., n_a, n_b]}`` pair masks, 1-based variables, True = allowed.
        method: ``"auto"`` or an exact method (``"sdpa"``, ``"tree"``, ``"elimination"``,
            ``"reference"``); an explicit method that cannot handle the input raises.
            ``"approx"`` is the polynomial method with an a-priori error bound
            (``tolerance=``, ``rtol=``, ``degree=``, ``basis=``, ``max_rank=``, ``allow_slower=``;
            see docs/approximation.md).

    Leading dims broadcast like SDPA. float16/bfloat16 accumulate in float32 and return the input
    dtype. A query row with no admissible tuple returns zeros. Returns ``[..., n_1, dv]``.
    """
    prob = prepare(polynomial, queries, values, scale=scale, causal=causal, mask=mask)
    pl = _cached(prob.spec, method, int(memory_budget))
    hook = _OPTION_HOOKS.get(pl.method)
    if hook is not None:  # hooks may also refine a data-dependent plan (approx: entry bound B)
        pl = hook(prob, pl, options)  # type: ignore[misc]
    elif options:
        raise_unknown_options(pl.method, options)
    out = run(prob, pl)
    return out.to(prob.out_dtype)


#: Methods that accept extra keyword options (e.g. ``tolerance=`` for ``"approx"``) register here.
#: A hook ``(problem, plan, options) -> plan`` is called for every call of its method (options may be empty).
_OPTION_HOOKS: dict[str, object] = {}


def _register_approx_hook() -> None:
    from .ops.approx import approx_hook

    _OPTION_HOOKS["approx"] = approx_hook


_register_approx_hook()


def raise_unknown_options(method: str, options: Mapping[str, object]) -> None:
    from .errors import PolyAttentionError

    raise PolyAttentionError(
        f"unexpected keyword argument(s) {', '.join(sorted(options))} for method={method!r}"
    )
