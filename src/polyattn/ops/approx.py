r"""``method="approx"``: almost-linear poly-attention by the polynomial method (DESIGN §2).

Each monomial's ``exp(x_m)`` becomes a polynomial ``P(x) = sum_i a_i x^i`` (Chebyshev interpolant
or even Taylor truncation), which factorises as ``sum_alpha coef[alpha] prod_{v in m} F_v[l_v, alpha]``
with ``F_v[l, alpha] = Q_v[l]^alpha`` (symmetric tensor powers, rank ``r = C(d+p, p)``) and
``coef[alpha] = a_|alpha| s^|alpha| |alpha|!/alpha!``; see :mod:`polyattn.planning.approx` for the
a-priori error bound, the degree choice (``tolerance=`` / ``rtol=``) and the time estimates.

Every value carries an extra all-ones channel (the normaliser), so one contraction gives numerator
and denominator; ``P > 0`` on the logit range makes the denominator positive. Sums over a
variable's rows are means (divided by ``n_v``) so nothing overflows however long the sequences are.

* **Tree factor graphs** (monomials of degree 2 forming a forest, plus causal pairs): message
  passing in feature space, :mod:`polyattn.ops.approx_tree` (features built feature-major in
  cache-sized row chunks, :mod:`polyattn.ops.approx_features`).
* **Other polynomials** (cycles, degree >= 3): per-variable summaries and one einsum along the
  opt_einsum path stored in the plan (this module).

This module also holds the entry statistics (:func:`measure`) and :func:`approx_hook`, which turns
the structure-only plan into the data-dependent one with the cost model measured by
:mod:`polyattn.ops.approx_cost`. Pair masks are rejected by the planner (they do not factor
through the features).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace

import opt_einsum
import torch

from ..errors import PolyAttentionError
from ..planning import Plan
from ..planning.approx import DEFAULT_BASIS, ApproxPlan, ApproxStats, plan_approx
from .approx_cost import approx_probe, cost_model
from .approx_features import Features
from .approx_native import native_threads
from .approx_tree import finish as _finish
from .approx_tree import run_chunk as _run
from .approx_tree import tree_approx
from .approx_tree import value_ext as _value_ext
from .inputs import Problem

__all__ = ["approx_attention", "approx_hook", "plan_options", "measured_plan", "measure", "Features", "APPROX_OPTIONS"]

#: keyword options ``poly_attention(..., method="approx", **options)`` accepts
APPROX_OPTIONS = ("tolerance", "rtol", "degree", "basis", "max_rank", "allow_slower")


# ----------------------------------------------------------------------------- statistics
def _column_reduce(x: torch.Tensor, op: Callable[..., torch.Tensor]) -> torch.Tensor:
    """``op(x.reshape(-1, c), dim=0)`` (``op`` = amax / amin, ``c = x.shape[-1]``), fast: a reduction
    over dim 0 of a narrow matrix runs ~10x slower on CPU than one over dim 0 of a wide one, so the
    rows are folded ``k`` at a time into ``k c`` columns first and the ``k`` partial results reduced."""
    c = x.shape[-1]
    x2 = x.reshape(-1, c)
    k = max(1, 256 // max(1, c))
    head = x2.shape[0] - x2.shape[0] % k
    if head == 0 or k == 1:
        return op(x2, dim=0)
    out = op(op(x2[:head].reshape(-1, k * c), dim=0).reshape(k, c), dim=0)
    if head < x2.shape[0]:
        out = op(torch.stack([out, op(x2[head:], dim=0)]), dim=0)
    return out


def measure(prob: Problem) -> ApproxStats:
    """Entry bound, row norms, per-coordinate maxima and value ranges of the actual tensors.

    Maxima and minima are exact in any dtype; the row norms are summed in float32 (float64 inputs: in
    float64) and inflated by ``(d + 8)`` ulps, which covers the rounding of a ``d``-term sum of
    squares and its square root; the other figures by a few ulps of the compute dtype, so that
    rounding cannot make the bound optimistic.
    They are taken over the *finite* entries: a NaN/inf input has no bound, and the kernel lets it
    make the rows it reaches non-finite (the NaN rule, docs/numerics.md); the stated bound covers
    the other rows.
    """

    def finite_stats(x: torch.Tensor, stats: Callable[[torch.Tensor], tuple[torch.Tensor, ...]]):  # noqa: ANN202
        """``(x, stats(x))`` over the finite entries: ``x`` is copied with its non-finite entries
        zeroed only when the statistics show there are any."""
        out = stats(x)
        if all(bool(torch.isfinite(o).all()) for o in out):
            return x, out
        x = torch.where(torch.isfinite(x), x, torch.zeros((), dtype=x.dtype, device=x.device))
        return x, stats(x)

    def abs_max(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (torch.maximum(_column_reduce(x, torch.amax), -_column_reduce(x, torch.amin)),)

    def min_max(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return _column_reduce(x, torch.amin), _column_reduce(x, torch.amax)

    eps = torch.finfo(prob.dtype).eps
    grow = 1.0 + 8 * eps
    with torch.no_grad():
        ent, nrm, crd = [], [], []
        for v in range(1, prob.t + 1):
            q, (a,) = finite_stats(prob.q[v].detach(), abs_max)  # type: ignore[union-attr]
            a = a.double()
            crd.append(tuple(x * grow for x in a.tolist()))
            ent.append(float(a.max()) * grow)
            qn = q if q.dtype in (torch.float32, torch.float64) else q.float()
            ulps = 1.0 + (q.shape[-1] + 8) * torch.finfo(qn.dtype).eps
            nrm.append(float(torch.linalg.vector_norm(qn, dim=-1).amax()) * ulps * grow)
        lo: list[tuple[float, ...] | None] = [None]
        hi: list[tuple[float, ...] | None] = [None]
        for v in range(2, prob.t + 1):
            x = prob.v[v]
            if x is None:
                lo.append(None)
                hi.append(None)
                continue
            _, (mn, mx) = finite_stats(x.detach(), min_max)
            lo.append(tuple(mn.double().tolist()))
            hi.append(tuple(mx.double().tolist()))
    return ApproxStats(tuple(ent), tuple(nrm), tuple(crd), tuple(lo), tuple(hi))


def approx_hook(prob: Problem, plan: Plan, options: Mapping[str, object]) -> ApproxPlan:
    """Turn the structure-only plan into the data-dependent one (degree, rank, bound, time estimates).

    The degree is chosen first (pure planning, default cost model), so an unreachable accuracy
    fails before anything is measured; when it has a top-degree split, whether the native kernel
    runs it is decided here (float32 on the CPU, library built on first need: ``plan.split.native``).
    With ``allow_slower=True`` that plan is returned (its time
    estimates use the default constants); otherwise :func:`measured_plan` re-makes it with costs
    measured on this machine, which raises when the approximation would be slower than exact.
    """
    kw = plan_options(plan, options)
    allow_slower = options.get("allow_slower", False)
    stats = measure(prob)
    first = plan_approx(prob.spec, stats=stats, scale=prob.scale, allow_slower=True, **kw)
    if first.split is not None:  # only the split has a native kernel: build it only where it may run
        kw["native"] = native_threads(prob.device, prob.dtype)
        first = plan_approx(prob.spec, stats=stats, scale=prob.scale, allow_slower=True, **kw)
    if allow_slower is True:  # the user insists: nothing to decide, so nothing to measure
        return first
    return measured_plan(prob, first, stats, kw, allow_slower)  # type: ignore[arg-type]


def plan_options(plan: Plan, options: Mapping[str, object]) -> dict:
    """Validate ``options`` and turn them into keyword arguments of :func:`plan_approx`."""
    unknown = sorted(set(options) - set(APPROX_OPTIONS))
    if unknown:
        raise PolyAttentionError(
            f"unexpected keyword argument(s) {', '.join(unknown)} for method='approx'; "
            f"it accepts {', '.join(APPROX_OPTIONS)}"
        )
    kw: dict = dict(
        tolerance=options.get("tolerance"), rtol=options.get("rtol"), degree=options.get("degree"),
        basis=str(options.get("basis", DEFAULT_BASIS)), requested=plan.requested,
    )
    if "max_rank" in options:
        kw["max_rank"] = int(options["max_rank"])  # type: ignore[call-overload]
    budget = getattr(plan, "memory_budget", None)
    if budget is not None:
        kw["memory_budget"] = budget
    return kw


def measured_plan(prob: Problem, first: ApproxPlan, stats: ApproxStats, kw: dict, allow_slower: bool) -> ApproxPlan:
    """``first`` re-planned with the cost model measured on this machine.

    :func:`polyattn.ops.approx_cost.cost_model` (kernel constants and a probe of the exact plan),
    then :func:`~polyattn.ops.approx_cost.approx_probe` (a short run of this very approximation on a
    scaled-down copy, correcting the model by one factor); all cached per process.
    """
    native = first.split.native if first.split is not None else 0
    model = cost_model(prob.spec, first.memory_budget, prob.dtype, prob.device, native)
    first = plan_approx(prob.spec, stats=stats, scale=prob.scale, allow_slower=True, cost_model=model, **kw)
    scale, probe = approx_probe(first, model, prob.dtype, prob.device)
    model = replace(model, approx_scale=scale, approx_probe=probe)
    return plan_approx(prob.spec, stats=stats, scale=prob.scale, cost_model=model,
                       allow_slower=allow_slower, **kw)


# ----------------------------------------------------------------------------- contraction strategy
def _flattener(prob: Problem) -> tuple[Callable[[torch.Tensor], torch.Tensor], int]:
    bshape = tuple(prob.batch_shape)
    bt = 1
    for s in bshape:
        bt *= s

    def flat(x: torch.Tensor) -> torch.Tensor:
        return x.expand(*bshape, *x.shape[-2:]).reshape(bt, *x.shape[-2:])

    return flat, bt


def _contract_direct(prob: Problem, plan: ApproxPlan, feats: Features) -> torch.Tensor:
    """All features at once, one opt_einsum contraction (the planner's choice for short sequences)."""
    flat, bt = _flattener(prob)
    monos = prob.spec.polynomial.monomials
    cache: dict[int, torch.Tensor] = {}
    ops = []
    for kind, x in plan.operands:
        if kind == "F":
            if x not in cache:
                cache[x] = feats(flat(prob.q[x]))
            ops.append(cache[x])
        elif kind == "coef":
            ops.append(feats.coef(plan.exp_coeffs[monos.index(x)]))
        elif kind == "V":
            ops.append(flat(_value_ext(prob, x)) / prob.n(x))
        else:
            ops.append(torch.ones(bt, prob.n(1), dtype=prob.dtype, device=prob.device))
    out = opt_einsum.contract(plan.einsum, *ops, optimize=[tuple(p) for p in plan.path], backend="torch")
    return _finish(out.reshape(*prob.batch_shape, prob.n(1), prob.dv + 1), prob)


def _contract(prob: Problem, plan: ApproxPlan, feats: Features) -> torch.Tensor:
    """Per-variable summaries (row chunks), then x1 in row chunks along the planned opt_einsum path."""
    if not plan.summaries:
        return _contract_direct(prob, plan, feats)
    flat, bt = _flattener(prob)
    bshape = tuple(prob.batch_shape)

    monos = prob.spec.polynomial.monomials
    coefs = {m: feats.coef(a) for m, a in zip(monos, plan.exp_coeffs)}
    chunk = max(1, plan.chunk_rows)
    summary: dict[int, torch.Tensor] = {}
    for v, expr in plan.summaries:
        deg = sum(1 for m in monos if v in m)
        q, val = flat(prob.q[v]), flat(_value_ext(prob, v))  # type: ignore[arg-type]
        n_v = prob.n(v)

        def part(qc: torch.Tensor, vc: torch.Tensor, _deg: int = deg, _expr: str = expr) -> torch.Tensor:
            F = feats(qc) if _deg else None
            return opt_einsum.contract(_expr, *([F] * _deg), vc, backend="torch")

        acc = None
        for r0 in range(0, n_v, chunk):
            piece = _run(part, q[:, r0 : r0 + chunk], val[:, r0 : r0 + chunk])
            acc = piece if acc is None else acc + piece
        assert acc is not None
        summary[v] = acc / n_v
    q1 = flat(prob.q[1])  # type: ignore[arg-type]
    outs = []
    for r0 in range(0, prob.n(1), chunk):

        def final(qc: torch.Tensor, *ts: torch.Tensor) -> torch.Tensor:
            F = feats(qc)
            it = iter(ts)
            ops = []
            for kind, x in plan.operands:
                if kind == "F1":
                    ops.append(F)
                elif kind == "coef":
                    ops.append(coefs[x])
                elif kind == "T":
                    ops.append(next(it))
                else:
                    ops.append(torch.ones(qc.shape[:-1], dtype=qc.dtype, device=qc.device))
            rows = qc.shape[-2]
            path = [tuple(p) for p in plan.path] if rows == chunk else "auto"
            return opt_einsum.contract(plan.einsum, *ops, optimize=path, backend="torch")

        ts = [summary[x] for kind, x in plan.operands if kind == "T"]
        outs.append(_run(final, q1[:, r0 : r0 + chunk], *ts))
    out = torch.cat(outs, dim=-2) if len(outs) > 1 else outs[0]
    out = out.reshape(*bshape, prob.n(1), prob.dv + 1)
    return _finish(out, prob)


def approx_attention(prob: Problem, plan: Plan) -> torch.Tensor:
    """Kernel for ``method="approx"`` (see module docstring)."""
    if not isinstance(plan, ApproxPlan) or plan.degree is None:
        raise PolyAttentionError(
            "an approx plan must be refined from the tensors before it runs (its degree depends on "
            "their entry bound): poly_attention does this, or call polyattn.plan_for(..., method='approx')"
        )
    feats = Features(prob.spec.head_dim, plan.degree, prob.scale, prob.device, prob.dtype)
    if plan.strategy == "tree":
        return tree_approx(prob, plan, feats)
    return _contract(prob, plan, feats)

