"""``poly_attention``: the one public op (DESIGN §4), and ``plan_for``.

The flow is ``parse -> spec -> plan -> bind -> run``: :func:`polyattn.ops.prepare` validates the
tensors and derives the torch-free :class:`~polyattn.planning.ProblemSpec` (parse is cached);
:func:`polyattn.planning.make_plan` turns the spec into a :class:`~polyattn.planning.Plan`
(cached); for ``method="approx"`` the plan is refined from the measured tensors (the only
data-dependent planning step); :func:`polyattn.ops.run` executes the plan's detail.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import fields

import torch

from .errors import PolyAttentionError
from .ops import Problem, prepare, run
from .ops.approx import approx_hook
from .ops.placement import apply_root_values, split_root_values
from .planning import DEFAULT_MEMORY_BUDGET, Method, Plan, make_plan, parse_request
from .planning.structure_ext import padding_partners
from .polynomial import AttentionPolynomial, parse

__all__ = ["poly_attention", "plan_for", "key_padding_masks"]


def _refine(prob: Problem, pl: Plan, options: Mapping[str, object]) -> Plan:
    """The data-dependent planning step: ``approx`` chooses its degree from the measured tensors."""
    if pl.method == Method.APPROX:
        return approx_hook(prob, pl, options)
    if options:
        raise PolyAttentionError(
            f"unexpected keyword argument(s) {', '.join(sorted(options))} for method={str(pl.method)!r}"
        )
    return pl


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
    value_placement: object = "own",
    **options: object,
) -> Plan:
    """The :class:`Plan` that :func:`poly_attention` would run for these tensors (same ``**options``)."""
    values, _ = split_root_values(polynomial, queries, values, value_placement)
    prob = prepare(polynomial, queries, values, scale=scale, causal=causal, mask=mask)
    return _refine(prob, make_plan(prob.spec, method, int(memory_budget)), options)


def _check_plan_matches(plan: Plan, prob: Problem) -> None:
    want, got = plan.spec, prob.spec
    if want == got:
        return
    diffs = [
        f"{f.name}: plan {getattr(want, f.name)!r}, tensors {getattr(got, f.name)!r}"
        for f in fields(want)
        if getattr(want, f.name) != getattr(got, f.name)
    ]
    raise PolyAttentionError(
        "the tensors do not match the plan (" + "; ".join(diffs) + "). Make a plan for these shapes "
        "with polyattn.plan_for(...) or pass the polynomial instead of the plan"
    )


def poly_attention(
    polynomial: str | AttentionPolynomial | Plan,
    queries: Sequence[torch.Tensor],
    values: Sequence[torch.Tensor | None] | None,
    *,
    scale: float | None = None,
    causal: object = False,
    mask: Mapping[tuple[int, int], torch.Tensor] | None = None,
    method: str = "auto",
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    value_placement: object = "own",
    **options: object,
) -> torch.Tensor:
    r"""Poly-attention of ``polynomial`` (DESIGN §1.2).

    .. math::
        \mathrm{out}[l_1] = \sum_{l_2..l_t} \mathrm{softmax}_{l_2..l_t}\big(s\,h(l_1..l_t)\big)
        \; V_2[l_2] \odot \dots \odot V_t[l_t]

    Args:
        polynomial: a spec such as ``"x1*x2 + x2*x3"``, an :class:`AttentionPolynomial`, or a
            :class:`Plan` (from :func:`polyattn.plan` / :func:`plan_for`) to run without planning
            again; the tensors must then match the plan's shapes, dtype and device, and
            ``causal``/``method``/``memory_budget`` come from the plan.
        queries: ``t`` tensors ``[..., n_j, d]``, one per variable (``x1`` first; there are no
            separate keys: a variable's row enters every monomial containing it).
        values: ``t - 1`` entries for ``x2..xt``, each ``[..., n_j, dv]`` or ``None`` (all-ones value).
            ``None`` for the whole list makes every variable value-less (then ``dv = 1``).
        scale: logit scale ``s``; default ``1/sqrt(d)`` so that ``x1*x2`` equals SDPA.
        causal: ``False``, ``"tree"`` (each variable <= its parent in the tree rooted at x1; a
            component without x1 is rooted at its smallest variable, whose position is <= x1's),
            ``"prefix"`` (every variable <= the query position) or ``True`` (= ``"prefix"``).
        mask: ``{(a, b): bool [..., n_a, n_b]}`` pair masks, 1-based variables, True = allowed.
        method: ``"auto"`` (the fastest exact method), ``"exact"`` (the same: never an
            approximation) or a method: ``"sdpa"``, ``"tree"``, ``"elimination"``,
            ``"reference"``; an explicit method that cannot handle the input raises
            :class:`~polyattn.MethodError`. ``"approx"`` is the polynomial method with an
            a-priori error bound (``tolerance=``, ``rtol=``, ``degree=``, ``basis=``,
            ``max_rank=``, ``allow_slower=``; see docs/approximation.md).
        memory_budget: working-memory target in bytes; chunk sizes are chosen to stay under it.
        value_placement: ``"own"`` (default: the formula above), ``"root"`` (the authors' released
            code: the value of every neighbour of x1 that has children of its own, e.g. x2 in
            ``x1*x2 + x2*x3``, is multiplied at the query position, outside the sum:
            ``out[l1] = V_2[l1] * sum w V_3[l3]``) or ``{j: "own" | "root"}``. Exact for every
            method; defined only when a root-placed variable ranges over the query's tokens
            (``n_j == n_1``) and carries a value. See :mod:`polyattn.planning.placement`.

    Leading dims broadcast like SDPA. float16/bfloat16 accumulate in float32 and return the input
    dtype. A query row with no admissible tuple returns zeros. Returns ``[..., n_1, dv]``.
    """
    values, root_values = split_root_values(
        polynomial.spec.polynomial if isinstance(polynomial, Plan) else polynomial, queries, values, value_placement
    )
    if isinstance(polynomial, Plan):
        pl = polynomial
        if method != "auto" and parse_request(method)[1] not in (pl.requested, str(pl.method)):
            raise PolyAttentionError(
                f"method={method!r} conflicts with the plan's method {str(pl.method)!r}; "
                "leave method= at its default when passing a Plan"
            )
        prob = prepare(pl.spec.polynomial, queries, values, scale=scale,
                       causal=causal if causal is not False else pl.spec.causal, mask=mask)
        _check_plan_matches(pl, prob)
        if pl.method == Method.APPROX and not options and getattr(pl, "degree", None) is not None:
            # an approx plan's degree holds for the data it was measured on: re-measure with its options
            options = pl.refine_options()  # type: ignore[attr-defined]
    else:
        prob = prepare(polynomial, queries, values, scale=scale, causal=causal, mask=mask)
        pl = make_plan(prob.spec, method, int(memory_budget))
    pl = _refine(prob, pl, options)
    out = run(prob, pl)
    return apply_root_values(out, root_values, prob.out_dtype)


def key_padding_masks(
    polynomial: str | AttentionPolynomial,
    keep: torch.Tensor,
    *,
    variables: Sequence[int] | None = None,
    heads: bool = True,
    lengths: Sequence[int] | None = None,
) -> dict[tuple[int, int], torch.Tensor]:
    """Pair masks that exclude padded positions of the non-query variables (True = real token).

    ``keep`` is ``[B, n]`` bool over the shared token set. A padded position of a variable ``x_j``
    (``j >= 2``, default every one, or those in ``variables``) is excluded by a mask on one pair that
    already is a factor containing ``x_j`` (its tree edge, or a pair inside a monomial), so a tree
    stays a tree and the masks stay one row each (``[B, 1, 1, n]`` views, ``O(n)`` memory): the
    planner keeps them broadcast. A variable in no monomial is paired with ``x1``. Query rows
    (``x1``) are not masked: a padded query row computes something harmless that callers ignore.
    ``heads=True`` leaves a singleton head dim (masks ``[B, 1, n_a, n_b]``) for ``[B, H, n, d]`` inputs.
    ``lengths``: each variable's sequence length when they differ (e.g. ``x1`` on one row).
    """
    p = polynomial if isinstance(polynomial, AttentionPolynomial) else parse(polynomial)
    if not isinstance(keep, torch.Tensor) or keep.dtype != torch.bool or keep.dim() != 2:
        raise PolyAttentionError(
            f"key_padding_mask: expected a bool tensor [batch, n] (True = real token), got "
            f"{getattr(keep, 'dtype', type(keep).__name__)} {list(getattr(keep, 'shape', []))}"
        )
    t = p.num_variables
    want = tuple(range(2, t + 1)) if variables is None else tuple(variables)
    bad = [j for j in want if not (isinstance(j, int) and 2 <= j <= t)]
    if bad:
        raise PolyAttentionError(f"key padding applies to non-query variables 2..{t}, got {bad}")
    b, n = keep.shape
    lens = [n] * t if lengths is None else [int(x) for x in lengths]
    out: dict[tuple[int, int], torch.Tensor] = {}
    for j, partner in padding_partners(p).items():
        if j not in want:
            continue
        a, c = min(partner, j), max(partner, j)
        row = keep[:, None, None, :] if heads else keep[:, None, :]  # masks x_j's positions
        if j == c:  # x_j indexes the columns of the (a, c) mask
            m = row.expand(*row.shape[:-2], lens[a - 1], n)
        else:  # x_j indexes the rows
            m = row.transpose(-1, -2).expand(*row.shape[:-2], n, lens[c - 1])
        out[(a, c)] = out[(a, c)] & m if (a, c) in out else m
    return out
