"""method="approx": the stated a-priori bound holds against the float64 reference, the error falls
with the degree, the plan reports rank / B / degree / bound, and the limits raise clear errors."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import as_layout

import polyattn
from polyattn import PolyAttentionError
from polyattn.planning.approx import (
    ApproximationRangeError,
    ApproxPlan,
    error_bound,
    exp_coefficients,
    feature_rank,
    feature_table,
    relative_error_interval,
)

F64 = torch.float64


def approx(poly, q, v, **kw):  # noqa: ANN001, ANN201
    """``method="approx"`` on a test-sized problem (the exact method is faster there: insist)."""
    return polyattn.poly_attention(poly, q, v, method="approx", allow_slower=True, **kw)


def approx_plan(poly, q, v, **kw):  # noqa: ANN001, ANN201
    return polyattn.plan_for(poly, q, v, method="approx", allow_slower=True, **kw)

DEG2 = ["x1*x2", "x1*x2 + x2*x3", "x1*x2 + x1*x3 + x3*x4", "x1*x2 + x2*x3 + x1*x3", "x2*x3", "x1*x3 + x3*x4"]
DEG3 = ["x1*x2*x3", "x1*x2*x3 + x3*x4", "x1*x2 + x2*x3*x4", "x1*x2*x3 + x1*x4"]


#: Value distributions of the bound tests: small uniform, Gaussian, heavy-tailed (Student t, 2 dof).
DISTRIBUTIONS = ("uniform", "gaussian", "heavy")


def _values(dist: str, shape: tuple, g: torch.Generator) -> torch.Tensor:
    if dist == "uniform":
        return 0.5 * (2 * torch.rand(*shape, generator=g, dtype=F64) - 1)
    z = torch.randn(*shape, generator=g, dtype=F64)
    if dist == "gaussian":
        return z
    chi2 = torch.randn(*shape, 2, generator=g, dtype=F64).pow(2).sum(-1)
    return z / (chi2 / 2).sqrt()  # Student t with 2 degrees of freedom: infinite variance


def _inputs(rng: random.Random, poly: str, *, amp: float, causal: object = False, batch: tuple = (),
            dist: str = "gaussian"):
    p = polyattn.parse(poly)
    t = p.num_variables
    g = torch.Generator().manual_seed(rng.randrange(2**31))
    if causal:
        lens = [rng.randint(2, 6)] * t
    else:
        lens = [rng.randint(1, 6) for _ in range(t)]
    d, dv = rng.randint(1, 4), rng.randint(1, 3)
    q = [amp * (2 * torch.rand(*batch, n, d, generator=g, dtype=F64) - 1) for n in lens]
    v = []
    for n in lens[1:]:
        if rng.random() < 0.2:
            v.append(None)
        else:
            v.append(_values(dist, (*batch, n, dv), g))
    return q, v


def _accuracy(rng: random.Random) -> dict:
    """A forced degree, or a degree chosen for an absolute / relative tolerance."""
    basis = rng.choice(["taylor", "chebyshev"])
    how = rng.choice(["degree", "degree", "tolerance", "rtol"])
    if how == "degree":
        return dict(basis=basis, degree=rng.choice([0, 2, 4, 6] if basis == "taylor" else [0, 1, 2, 3, 4, 5]))
    return dict(basis=basis, **{how: rng.choice([1e-1, 1e-2, 1e-4])})


def _case(rng: random.Random, poly: str, **kw):
    acc = _accuracy(rng)
    amp = rng.choice([0.3, 0.7, 1.2])
    scale = rng.choice([None, 0.5])
    batch = rng.choice([(), (2,)])
    q, v = _inputs(rng, poly, amp=amp, batch=batch, **kw)
    kw.pop("dist", None)
    # tiny problems: the exact method is faster, so insist (the speed check is tested separately)
    opts = dict(method="approx", scale=scale, allow_slower=True, **acc, **kw)
    try:
        plan = polyattn.plan_for(poly, q, v, **opts)
    except ApproximationRangeError:  # low degree not positive on a wide range: refused, never silent
        return None
    out = polyattn.poly_attention(poly, q, v, **opts)
    ref = polyattn.poly_attention(poly, q, v, method="reference", scale=scale, causal=kw.get("causal", False))
    if plan.target is not None:
        assert plan.error_bound <= plan.target
    if plan.rtol is not None:
        assert plan.target <= plan.rtol * plan.value_radius * (1 + 1e-12)
    return (out - ref).abs().max().item(), plan.error_bound


def test_bound_holds_on_random_cases():
    """>= 100 random cases over degree-2 and degree-3 polynomials and three value distributions
    (uniform small, Gaussian, heavy-tailed), degrees forced or chosen for tolerance= / rtol=:
    observed <= predicted."""
    rng = random.Random(1234)
    checked = {(k, dist): 0 for k in (2, 3) for dist in DISTRIBUTIONS}
    for i in range(150):
        k = 2 if i % 2 == 0 else 3
        dist = DISTRIBUTIONS[(i // 2) % 3]
        poly = rng.choice(DEG2 if k == 2 else DEG3)
        res = _case(rng, poly, dist=dist)
        if res is None:
            continue
        err, bound = res
        assert err <= bound * (1 + 1e-9) + 1e-13, (poly, dist, err, bound)
        checked[k, dist] += 1
    assert sum(checked.values()) >= 100 and min(checked.values()) >= 12, checked


def test_bound_holds_causal_tree():
    rng = random.Random(7)
    n = 0
    for _ in range(30):
        poly = rng.choice(["x1*x2 + x2*x3", "x1*x2 + x1*x3 + x3*x4", "x1*x2"])
        res = _case(rng, poly, causal="tree")
        if res is None:
            continue
        err, bound = res
        assert err <= bound * (1 + 1e-9) + 1e-13
        n += 1
    assert n >= 20


@pytest.mark.parametrize("poly", ["x1*x2 + x2*x3", "x1*x2*x3", "x1*x2 + x2*x3 + x1*x3"])
@pytest.mark.parametrize("basis,degrees", [("taylor", [0, 2, 4, 6, 8]), ("chebyshev", [0, 1, 2, 3, 4, 5])])
def test_error_decreases_with_degree(poly, basis, degrees):
    torch.manual_seed(0)
    t = polyattn.parse(poly).num_variables
    q = [torch.rand(2, 12, 4, dtype=F64) - 0.5 for _ in range(t)]
    v = [torch.rand(2, 12, 3, dtype=F64) - 0.5 for _ in range(t - 1)]
    ref = polyattn.poly_attention(poly, q, v, method="reference")
    errs, bounds = [], []
    for p in degrees:
        out = approx(poly, q, v, degree=p, basis=basis)
        errs.append((out - ref).abs().max().item())
        bounds.append(approx_plan(poly, q, v, degree=p, basis=basis).error_bound)
    assert all(a > b for a, b in zip(errs, errs[1:])), errs
    assert all(a > b for a, b in zip(bounds, bounds[1:])), bounds
    assert all(e <= b for e, b in zip(errs, bounds))


@pytest.mark.parametrize("tol", [1e-2, 1e-4, 1e-6])
@pytest.mark.parametrize("basis", ["taylor", "chebyshev"])
def test_tolerance_picks_smallest_degree(tol, basis):
    torch.manual_seed(1)
    q = [torch.rand(20, 8, dtype=F64) - 0.5 for _ in range(3)]
    v = [torch.rand(20, 8, dtype=F64) - 0.5 for _ in range(2)]
    plan = approx_plan("x1*x2 + x2*x3", q, v, tolerance=tol, basis=basis)
    assert isinstance(plan, ApproxPlan) and plan.error_bound <= tol
    step = 2 if basis == "taylor" else 1
    if plan.degree >= step:
        lower = error_bound(plan.logit_bound, plan.degree - step, plan.value_radius, basis)
        assert lower > tol
    out = approx("x1*x2 + x2*x3", q, v, tolerance=tol, basis=basis)
    ref = polyattn.poly_attention("x1*x2 + x2*x3", q, v, method="reference")
    assert (out - ref).abs().max().item() <= tol


def test_plan_reports_rank_bound_degree():
    q = [torch.rand(16, 4) - 0.5 for _ in range(3)]
    v = [torch.rand(16, 4) - 0.5 for _ in range(2)]
    plan = approx_plan("x1*x2 + x2*x3", q, v, tolerance=1e-3)
    assert plan.rank == feature_rank(4, plan.degree) == math.comb(4 + plan.degree, plan.degree)
    assert plan.entry_bound == pytest.approx(max(x.abs().max().item() for x in q), rel=1e-5)
    text = str(plan)
    for word in ("degree", "rank", "entry bound", "error bound", f"{plan.error_bound:.3g}", "B = "):
        assert word in text
    d = plan.to_dict()
    assert d["rank"] == plan.rank and d["error_bound"] == plan.error_bound and d["degree"] == plan.degree
    # logit bound never exceeds the s*d*B^k
    for x in plan.logit_bound:
        assert x <= 0.5 * 4 * plan.entry_bound**2 + 1e-9
    # structure-only plan (no tensors): degree chosen at call time; auto never picks approx
    sp = polyattn.plan("x1*x2 + x2*x3", seq_len=64, head_dim=16, method="approx")
    assert sp.method == "approx" and "chosen at call time" in str(sp)
    assert polyattn.plan("x1*x2 + x2*x3", seq_len=64, head_dim=16).method != "approx"


def test_gradients_match_reference():
    torch.manual_seed(2)
    for poly, causal in [("x1*x2 + x2*x3", False), ("x1*x2 + x2*x3", "tree"), ("x1*x2*x3 + x3*x4", False)]:
        t = polyattn.parse(poly).num_variables
        q = [(0.6 * (torch.rand(1, 6, 3, dtype=F64) - 0.5)).requires_grad_() for _ in range(t)]
        v = [torch.randn(1, 6, 2, dtype=F64, requires_grad=True) for _ in range(t - 1)]
        out = approx(poly, q, v, degree=10, basis="taylor", causal=causal)
        ref = polyattn.poly_attention(poly, q, v, method="reference", causal=causal)
        w = torch.randn_like(ref)
        g1 = torch.autograd.grad((out * w).sum(), q + v)
        g2 = torch.autograd.grad((ref * w).sum(), q + v)
        for a, b in zip(g1, g2):
            torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-6)


def test_chunked_equals_unchunked_and_float32():
    torch.manual_seed(3)
    q = [torch.rand(2, 37, 4) - 0.5 for _ in range(3)]
    v = [torch.rand(2, 37, 3) - 0.5 for _ in range(2)]
    for causal in (False, "tree"):
        big = approx("x1*x2 + x2*x3", q, v, degree=3, causal=causal)
        small = approx("x1*x2 + x2*x3", q, v, degree=3, causal=causal, memory_budget=2**14)
        assert approx_plan("x1*x2 + x2*x3", q, v, degree=3, memory_budget=2**14).chunk_rows < 37
        torch.testing.assert_close(big, small, atol=1e-6, rtol=1e-5)
        assert big.dtype == torch.float32
        ref = polyattn.poly_attention("x1*x2 + x2*x3", q, v, method="reference", causal=causal)
        bound = approx_plan("x1*x2 + x2*x3", q, v, degree=3, causal=causal).error_bound
        assert (big.double() - ref).abs().max().item() <= bound + 1e-5


def test_contract_strategy_chunked_equals_unchunked():
    torch.manual_seed(6)
    for poly in ("x1*x2*x3 + x3*x4", "x1*x2 + x2*x3 + x1*x3", "x2*x3*x4"):
        t = polyattn.parse(poly).num_variables
        q = [torch.rand(2, 120, 3, dtype=F64) - 0.5 for _ in range(t)]
        v = [torch.randn(120, 2, dtype=F64) for _ in range(t - 1)]
        small = approx_plan(poly, q, v, degree=3, memory_budget=2**16)
        assert small.strategy == "contract" and small.chunk_rows < 120
        a = approx(poly, q, v, degree=3)
        b = approx(poly, q, v, degree=3, memory_budget=2**16)
        torch.testing.assert_close(a, b)
        exact = polyattn.poly_attention(poly, q, v)  # exact method (the reference is too large here)
        assert (a - exact).abs().max().item() <= small.error_bound + 1e-12
        # gradients through the chunked summaries (checkpointed) equal the one-shot contraction's
        qg = [x.clone().requires_grad_() for x in q]
        g1 = torch.autograd.grad(approx(poly, qg, v, degree=3).sum(), qg[1:])
        g2 = torch.autograd.grad(
            approx(poly, qg, v, degree=3, memory_budget=2**16).sum(), qg[1:])
        for x, y in zip(g1, g2):
            torch.testing.assert_close(x, y)


def test_unequal_lengths_causal_directions_and_valueless():
    torch.manual_seed(4)
    # x2 is x1's child, x3 is x2's child; unequal lengths exercise clipped prefix sums
    q = [torch.rand(n, 3, dtype=F64) - 0.5 for n in (9, 5, 7)]
    v = [None, torch.randn(7, 2, dtype=F64)]
    for causal in ("tree", "prefix"):
        poly = "x1*x2 + x1*x3" if causal == "prefix" else "x1*x2 + x2*x3"
        out = approx(poly, q, v, degree=12, basis="taylor", causal=causal)
        ref = polyattn.poly_attention(poly, q, v, method="reference", causal=causal)
        torch.testing.assert_close(out, ref, atol=1e-9, rtol=0)


def test_features_factorise_the_polynomial():
    from polyattn.ops.approx import Features

    torch.manual_seed(5)
    d, p, s = 3, 4, 0.7
    a = exp_coefficients("chebyshev", p, 1.5)
    f = Features(d, p, s, torch.device("cpu"), F64)
    assert f.rank == feature_rank(d, p) == len(feature_table(d, p)[1])
    x, y = torch.randn(5, d, dtype=F64), torch.randn(6, d, dtype=F64)
    lhs = (f(x) * f.coef(a)) @ f(y).T
    z = s * x @ y.T
    rhs = sum(c * z**i for i, c in enumerate(a))
    torch.testing.assert_close(lhs, rhs)
    # the in-place (no-autograd) and the differentiable construction agree
    xg = x.clone().requires_grad_()
    torch.testing.assert_close(f(xg).detach(), f(x))


@pytest.mark.parametrize("basis,degree,xmax", [("taylor", 4, 1.0), ("chebyshev", 3, 0.7), ("chebyshev", 6, 2.5),
                                               ("taylor", 3, 0.5), ("chebyshev", 1, 0.3)])
def test_relative_error_interval_encloses_samples(basis, degree, xmax):
    lo, hi = relative_error_interval(basis, degree, xmax)
    a = exp_coefficients(basis, degree, xmax)
    xs = torch.linspace(-xmax, xmax, 20001, dtype=F64)
    h = sum(c * xs**i for i, c in enumerate(a)) * torch.exp(-xs) - 1
    assert lo <= h.min().item() and h.max().item() <= hi
    assert hi - lo <= 1.05 * (h.max() - h.min()).item() + 1e-12  # and is tight


def test_errors_are_clear():
    q = [torch.rand(8, 4) - 0.5 for _ in range(3)]
    v = [torch.rand(8, 4) for _ in range(2)]
    with pytest.raises(PolyAttentionError, match="pair masks"):
        polyattn.poly_attention("x1*x2 + x2*x3", q, v, method="approx", mask={(1, 2): torch.ones(8, 8, dtype=torch.bool)})
    with pytest.raises(PolyAttentionError, match="forest"):
        polyattn.poly_attention("x1*x2 + x2*x3", q, v, method="approx", causal="prefix")
    big = [5 * torch.randn(8, 4) for _ in range(3)]
    with pytest.raises(ApproximationRangeError, match="exact method"):
        polyattn.poly_attention("x1*x2 + x2*x3", big, v, method="approx", tolerance=1e-6)
    with pytest.raises(PolyAttentionError, match="even degree"):
        polyattn.poly_attention("x1*x2", q[:2], v[:1], method="approx", degree=3, basis="taylor")
    with pytest.raises(PolyAttentionError, match="max_rank"):
        polyattn.poly_attention("x1*x2", q[:2], v[:1], method="approx", degree=6, max_rank=50)
    with pytest.raises(PolyAttentionError, match="tolerance"):
        polyattn.poly_attention("x1*x2", q[:2], v[:1], method="approx", degree=0, tolerance=1e-9)
    with pytest.raises(PolyAttentionError, match="unexpected keyword"):
        polyattn.poly_attention("x1*x2", q[:2], v[:1], method="approx", tolerence=1e-3)
    with pytest.raises(PolyAttentionError, match="unexpected keyword"):
        polyattn.poly_attention("x1*x2", q[:2], v[:1], method="tree", tolerance=1e-3)
    with pytest.raises(PolyAttentionError, match="memory_budget"):
        polyattn.poly_attention("x1*x2 + x2*x3 + x1*x3", q, v, method="approx", degree=4, memory_budget=2**12)


@pytest.mark.parametrize("amp", [0.0, 1e-9])
def test_zero_and_tiny_logits(amp):
    q = [amp * torch.randn(2, 7, 3, dtype=F64) for _ in range(3)]
    v = [torch.randn(2, 7, 2, dtype=F64) for _ in range(2)]
    for poly in ("x1*x2 + x2*x3", "x1*x2*x3"):
        plan = approx_plan(poly, q, v, tolerance=1e-9)
        out = approx(poly, q, v, tolerance=1e-9)
        ref = polyattn.poly_attention(poly, q, v, method="reference")
        assert plan.degree <= 2 and (out - ref).abs().max().item() <= plan.error_bound + 1e-12
        json.dumps(plan.to_dict())


# ----------------------------------------------------------------------------- rtol=
def test_rtol_is_relative_to_the_value_radius():
    torch.manual_seed(8)
    q = [torch.rand(24, 4, dtype=F64) - 0.5 for _ in range(3)]
    for amp in (0.1, 10.0):  # the degree chosen for rtol does not depend on the values' scale
        v = [amp * torch.randn(24, 3, dtype=F64) for _ in range(2)]
        plan = approx_plan("x1*x2 + x2*x3", q, v, rtol=1e-3)
        assert plan.rtol == 1e-3 and plan.tolerance is None
        assert plan.target == pytest.approx(1e-3 * plan.value_radius)
        assert plan.error_bound <= plan.target
        lower = error_bound(plan.logit_bound, plan.degree - 1, plan.value_radius, plan.basis)
        assert lower > plan.target  # the smallest such degree
        assert "rtol=0.001" in str(plan) and "value radius R" in str(plan)
        ref = polyattn.poly_attention("x1*x2 + x2*x3", q, v, method="reference")
        out = approx("x1*x2 + x2*x3", q, v, rtol=1e-3)
        assert (out - ref).abs().max().item() <= plan.error_bound + 1e-12
        if amp == 0.1:
            small_values_degree = plan.degree
    assert plan.degree == small_values_degree
    # both: both must hold (the smaller target wins)
    both = approx_plan("x1*x2 + x2*x3", q, v, rtol=1e-3, tolerance=1e-6)
    assert both.target == pytest.approx(min(1e-6, 1e-3 * both.value_radius))
    assert "tolerance=1e-06 and rtol=0.001" in str(both)


def test_rtol_with_constant_values_needs_no_degree():
    q = [torch.rand(6, 3, dtype=F64) - 0.5 for _ in range(3)]
    v = [torch.full((6, 2), 3.0, dtype=F64), None]  # V_T is constant: the output is exact at any degree
    plan = approx_plan("x1*x2 + x2*x3", q, v, rtol=1e-9)
    assert plan.value_radius == 0.0 and plan.degree == 0 and plan.error_bound == 0.0
    torch.testing.assert_close(approx("x1*x2 + x2*x3", q, v, rtol=1e-9), torch.full((6, 2), 3.0, dtype=F64))


@pytest.mark.parametrize("bad", [0, -1e-3, float("nan"), float("inf"), "1e-3", True])
def test_rtol_and_tolerance_must_be_positive_finite(bad):
    q = [torch.rand(8, 4) - 0.5 for _ in range(2)]
    v = [torch.rand(8, 4)]
    with pytest.raises(PolyAttentionError, match=r"rtol must be a positive finite float \(a bound on max "
                                                 r"\|approx - exact\| relative to the value radius R\)"):
        approx("x1*x2", q, v, rtol=bad)
    with pytest.raises(PolyAttentionError, match=r"tolerance must be a positive finite float \(an absolute bound"):
        approx("x1*x2", q, v, tolerance=bad)


def test_unreachable_rtol_names_it():
    big = [5 * torch.randn(8, 4) for _ in range(3)]
    v = [torch.randn(8, 4) for _ in range(2)]
    with pytest.raises(ApproximationRangeError, match=r"cannot reach rtol=1e-06 \(= .* absolute; value radius R = "):
        approx("x1*x2 + x2*x3", big, v, rtol=1e-6)
    q = [torch.rand(8, 4) - 0.5 for _ in range(3)]
    with pytest.raises(ApproximationRangeError, match=r"degree=1 guarantees only .* > rtol=1e-06"):
        approx("x1*x2 + x2*x3", q, v, rtol=1e-6, degree=1)


# ----------------------------------------------------------------------------- speed vs exact
def _spec(n: int, d: int = 16, dv: int = 8):
    from polyattn.planning import ProblemSpec

    return ProblemSpec.build("x1*x2 + x2*x3", seq_len=n, head_dim=d, value_dim=dv)


def test_speed_check_raises_with_both_estimates():
    from polyattn.planning.approx import CostModel, plan_approx

    model = CostModel(product_flops=40e9, build_entries=5e9, op_seconds=3e-6,
                      exact_seconds_per_flop=1 / 30e9, exact_probe="a probe")
    # n = 64: the exact quadratic method is far cheaper than rank-4845 features
    with pytest.raises(ApproximationRangeError, match=r"slower than the exact method for rtol=0.001 .*: approx ~ "
                       r"[0-9.]+ [mu]?s \(degree 3, feature rank 969\) vs exact 'tree' ~ [0-9.]+ [mu]?s "
                       r"\(approx: cost model .*; exact: a probe\). Use method='auto' .*allow_slower=True"):
        plan_approx(_spec(64), entry_bound=0.25, value_bound=4.0, rtol=1e-3, cost_model=model)
    slow = plan_approx(_spec(64), entry_bound=0.25, value_bound=4.0, rtol=1e-3, cost_model=model,
                       allow_slower=True)
    assert slow.faster_than_exact is False and slow.seconds > slow.exact_seconds > 0
    assert "exact is faster" in str(slow) and "allow_slower=True" in str(slow)
    # n = 2^20: linear beats quadratic
    fast = plan_approx(_spec(2**20), entry_bound=0.25, value_bound=4.0, rtol=1e-3, cost_model=model)
    assert fast.faster_than_exact and fast.exact_method == "tree"
    assert f"approx is faster ({fast.exact_seconds / fast.seconds:.3g}x)" in str(fast)
    d = fast.to_dict()
    assert d["seconds"] == fast.seconds and d["exact_seconds"] == fast.exact_seconds
    json.dumps(d)


def test_speed_estimates_scale_with_n():
    from polyattn.planning.approx import DEFAULT_COST_MODEL, plan_approx

    plans = [plan_approx(_spec(n), entry_bound=0.25, rtol=1e-3, allow_slower=True) for n in (2**14, 2**16)]
    a, b = plans
    assert b.seconds / a.seconds == pytest.approx(4.0, rel=0.05)  # linear
    assert b.exact_seconds / a.exact_seconds == pytest.approx(16.0, rel=0.01)  # quadratic
    assert a.cost_source.startswith("approx: cost model with the development machine's default constants")
    assert DEFAULT_COST_MODEL.exact_seconds_per_flop is None


def test_slower_than_exact_raises_on_real_tensors_unless_allowed():
    torch.manual_seed(9)
    q = [torch.rand(16, 8) - 0.5 for _ in range(3)]
    v = [torch.randn(16, 4) for _ in range(2)]
    # degree 6 at d = 8 is rank 3003 for 16 rows: orders of magnitude slower than 2 x 16 x 16 exact scores
    with pytest.raises(ApproximationRangeError, match="slower than the exact method .* vs exact 'tree' ~ .*"
                       r"\(approx: cost model measured on this machine \(\d+ threads?(; native kernel [\d.]+ GFLOP/s)?\), "
                       r"probe of approx at n=16 "
                       r".*; exact: probe of 'tree' at n=16"):
        polyattn.poly_attention("x1*x2 + x2*x3", q, v, method="approx", degree=6)
    plan = approx_plan("x1*x2 + x2*x3", q, v, degree=6)  # insisting: default constants, nothing measured
    assert plan.allow_slower and "default constants" in plan.cost_source
    ref = polyattn.poly_attention("x1*x2 + x2*x3", q, v)
    assert (approx("x1*x2 + x2*x3", q, v, degree=6) - ref).abs().max().item() <= plan.error_bound + 1e-5
    with pytest.raises(PolyAttentionError, match="allow_slower must be True or False"):
        polyattn.poly_attention("x1*x2 + x2*x3", q, v, method="approx", allow_slower="yes")


def test_measured_cost_model_is_sane():
    """Measured numbers are positive and finite; the exact probe is a scaled-down copy (no timing thresholds)."""
    from polyattn.ops.approx_cost import PROBE_FLOPS, _probe_spec, cost_model
    from polyattn.planning.strategy import make_plan

    spec = _spec(2**16)
    small = _probe_spec(spec, 2**28)
    assert make_plan(small, "auto", 2**28).flops <= PROBE_FLOPS < make_plan(spec, "auto", 2**28).flops
    assert small.head_dim == 16 and small.value_dim == 8 and len(set(small.seq_lens)) == 1
    m = cost_model(_spec(300), 2**28, torch.float32)
    for x in (m.product_flops, m.build_entries, m.op_seconds, m.exact_seconds_per_flop):
        assert 0 < x < math.inf
    assert "n=300" in m.exact_probe  # small enough: the probe is the problem itself


# ----------------------------------------------------------------------------- feature layout
@pytest.mark.parametrize("batch", [(), (2, 3)])
def test_feature_columns_reuse_buffers_correctly(batch):
    from polyattn.ops.approx_features import Features

    torch.manual_seed(10)
    f = Features(5, 3, 0.5, torch.device("cpu"), F64)
    q = torch.randn(*batch, 280, 5, dtype=F64)
    whole = f._differentiable(q.transpose(-1, -2))
    for r0 in range(0, 280, 100):  # chunks of 100, 100, 80 rows share two buffers
        got = f.cols(q[..., r0 : r0 + 100, :].transpose(-1, -2))
        torch.testing.assert_close(got, whole[..., r0 : r0 + 100])
    assert len(f._buffers) == 2
    torch.testing.assert_close(f(q), whole.transpose(-1, -2))


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 700), cols=st.integers(1, 40), batch=st.sampled_from([(), (3,), (2, 2)]),
       layout=st.sampled_from(["plain", "transposed", "sliced_last", "sliced_seq", "expand_batch"]),
       dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]), seed=st.integers(0, 2**16))
def test_entry_statistics_are_exact_maxima_and_safe_norms(rows, cols, batch, layout, dtype, seed):
    """The statistics' fast column reductions equal the plain ones (any row count, views, dtypes),
    and the float32-summed row norms are never below the float64 ones."""
    from polyattn.ops.approx import _column_reduce, measure
    from polyattn.ops.inputs import prepare

    g = torch.Generator().manual_seed(seed)
    x = as_layout((torch.randn(*batch, rows, cols, generator=g) * 10 ** torch.randint(-3, 4, (cols,), generator=g))
                  .to(dtype), layout)
    flat = x.reshape(-1, cols)
    for op in (torch.amax, torch.amin):
        assert torch.equal(_column_reduce(x, op), op(flat, dim=0))
    q = [x.float(), x.float()]
    v = [torch.randn(*batch, rows, 3, generator=g)]
    stats = measure(prepare("x1*x2", q, v))
    exact = torch.linalg.vector_norm(x.double(), dim=-1).max().item()
    assert stats.row_norm_max[0] >= exact
    assert stats.row_norm_max[0] <= exact * (1 + 1e-5) + 1e-30
    assert stats.coord_max[0] == pytest.approx(x.abs().reshape(-1, cols).amax(0).double().tolist(), rel=1e-6)


# ----------------------------------------------------------------------------- benchmark suites
def test_bench_sweep_writes_json(tmp_path):
    """Wiring of `polyattn bench approx sweep` at toy sizes (no timing asserted)."""
    from polyattn.cli import main

    rc = main(["bench", "approx", "sweep", "--sizes", "48", "--dims", "4", "--reps", "1", "--exact-reps", "1",
               "--out", str(tmp_path)])
    assert rc == 0
    doc = json.loads((tmp_path / "approx_sweep.json").read_text())
    rows = doc["rows"]
    assert {r["values"] for r in rows} == {"uniform", "gaussian", "heavy"} and len(rows) == 6
    for r in rows:
        assert r["decision"] == "approx" or r["decision"].startswith(("exact", "unreachable"))
        if "observed_error" in r:
            assert r["bound_holds"] and r["speedup"] > 0 and r["predicted_speedup"] > 0
    assert (tmp_path / "approx_sweep.png").stat().st_size > 1000
