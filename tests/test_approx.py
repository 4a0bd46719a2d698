"""method="approx": the stated a-priori bound holds against the float64 reference, the error falls
with the degree, the plan reports rank / B / degree / bound, and the limits raise clear errors."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

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

DEG2 = ["x1*x2", "x1*x2 + x2*x3", "x1*x2 + x1*x3 + x3*x4", "x1*x2 + x2*x3 + x1*x3", "x2*x3", "x1*x3 + x3*x4"]
DEG3 = ["x1*x2*x3", "x1*x2*x3 + x3*x4", "x1*x2 + x2*x3*x4", "x1*x2*x3 + x1*x4"]


def _inputs(rng: random.Random, poly: str, *, amp: float, causal: object = False, batch: tuple = ()):
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
            v.append(torch.randn(*batch, n, dv, generator=g, dtype=F64))
    return q, v


def _case(rng: random.Random, poly: str, **kw):
    basis = rng.choice(["taylor", "chebyshev"])
    degree = rng.choice([0, 2, 4, 6] if basis == "taylor" else [0, 1, 2, 3, 4, 5])
    amp = rng.choice([0.3, 0.7, 1.2])
    scale = rng.choice([None, 0.5])
    batch = rng.choice([(), (2,)])
    q, v = _inputs(rng, poly, amp=amp, batch=batch, **kw)
    opts = dict(method="approx", degree=degree, basis=basis, scale=scale, **kw)
    try:
        plan = polyattn.plan_for(poly, q, v, **opts)
    except ApproximationRangeError:  # low degree not positive on a wide range: refused, never silent
        return None
    out = polyattn.poly_attention(poly, q, v, **opts)
    ref = polyattn.poly_attention(poly, q, v, method="reference", scale=scale, causal=kw.get("causal", False))
    return (out - ref).abs().max().item(), plan.error_bound


def test_bound_holds_on_random_cases():
    """>= 100 random cases over degree-2 and degree-3 polynomials: observed <= predicted."""
    rng = random.Random(1234)
    checked = {2: 0, 3: 0}
    for i in range(150):
        k = 2 if i % 2 == 0 else 3
        poly = rng.choice(DEG2 if k == 2 else DEG3)
        res = _case(rng, poly)
        if res is None:
            continue
        err, bound = res
        assert err <= bound * (1 + 1e-9) + 1e-13, (poly, err, bound)
        checked[k] += 1
    assert checked[2] >= 50 and checked[3] >= 50, checked


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
        out = polyattn.poly_attention(poly, q, v, method="approx", degree=p, basis=basis)
        errs.append((out - ref).abs().max().item())
        bounds.append(polyattn.plan_for(poly, q, v, method="approx", degree=p, basis=basis).error_bound)
    assert all(a > b for a, b in zip(errs, errs[1:])), errs
    assert all(a > b for a, b in zip(bounds, bounds[1:])), bounds
    assert all(e <= b for e, b in zip(errs, bounds))


@pytest.mark.parametrize("tol", [1e-2, 1e-4, 1e-6])
@pytest.mark.parametrize("basis", ["taylor", "chebyshev"])
def test_tolerance_picks_smallest_degree(tol, basis):
    torch.manual_seed(1)
    q = [torch.rand(20, 8, dtype=F64) - 0.5 for _ in range(3)]
    v = [torch.rand(20, 8, dtype=F64) - 0.5 for _ in range(2)]
    plan = polyattn.plan_for("x1*x2 + x2*x3", q, v, method="approx", tolerance=tol, basis=basis)
    assert isinstance(plan, ApproxPlan) and plan.error_bound <= tol
    step = 2 if basis == "taylor" else 1
    if plan.degree >= step:
        lower = error_bound(plan.logit_bound, plan.degree - step, plan.value_radius, basis)
        assert lower > tol
    out = polyattn.poly_attention("x1*x2 + x2*x3", q, v, method="approx", tolerance=tol, basis=basis)
    ref = polyattn.poly_attention("x1*x2 + x2*x3", q, v, method="reference")
    assert (out - ref).abs().max().item() <= tol


def test_plan_reports_rank_bound_degree():
    q = [torch.rand(16, 4) - 0.5 for _ in range(3)]
    v = [torch.rand(16, 4) - 0.5 for _ in range(2)]
    plan = polyattn.plan_for("x1*x2 + x2*x3", q, v, method="approx", tolerance=1e-3)
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
        out = polyattn.poly_attention(poly, q, v, method="approx", degree=10, basis="taylor", causal=causal)
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
        big = polyattn.poly_attention("x1*x2 + x2*x3", q, v, method="approx", degree=3, causal=causal)
        small = polyattn.poly_attention("x1*x2 + x2*x3", q, v, method="approx", degree=3, causal=causal,
                                        memory_budget=2**14)
        assert polyattn.plan_for("x1*x2 + x2*x3", q, v, method="approx", degree=3,
                                 memory_budget=2**14).chunk_rows < 37
        torch.testing.assert_close(big, small, atol=1e-6, rtol=1e-5)
        assert big.dtype == torch.float32
        ref = polyattn.poly_attention("x1*x2 + x2*x3", q, v, method="reference", causal=causal)
        bound = polyattn.plan_for("x1*x2 + x2*x3", q, v, method="approx", degree=3, causal=causal).error_bound
        assert (big.double() - ref).abs().max().item() <= bound + 1e-5


def test_contract_strategy_chunked_equals_unchunked():
    torch.manual_seed(6)
    for poly in ("x1*x2*x3 + x3*x4", "x1*x2 + x2*x3 + x1*x3", "x2*x3*x4"):
        t = polyattn.parse(poly).num_variables
        q = [torch.rand(2, 120, 3, dtype=F64) - 0.5 for _ in range(t)]
        v = [torch.randn(120, 2, dtype=F64) for _ in range(t - 1)]
        small = polyattn.plan_for(poly, q, v, method="approx", degree=3, memory_budget=2**16)
        assert small.strategy == "contract" and small.chunk_rows < 120
        a = polyattn.poly_attention(poly, q, v, method="approx", degree=3)
        b = polyattn.poly_attention(poly, q, v, method="approx", degree=3, memory_budget=2**16)
        torch.testing.assert_close(a, b)
        exact = polyattn.poly_attention(poly, q, v)  # exact method (the reference is too large here)
        assert (a - exact).abs().max().item() <= small.error_bound + 1e-12
        # gradients through the chunked summaries (checkpointed) equal the one-shot contraction's
        qg = [x.clone().requires_grad_() for x in q]
        g1 = torch.autograd.grad(polyattn.poly_attention(poly, qg, v, method="approx", degree=3).sum(), qg[1:])
        g2 = torch.autograd.grad(
            polyattn.poly_attention(poly, qg, v, method="approx", degree=3, memory_budget=2**16).sum(), qg[1:])
        for x, y in zip(g1, g2):
            torch.testing.assert_close(x, y)


def test_unequal_lengths_causal_directions_and_valueless():
    torch.manual_seed(4)
    # x2 is x1's child, x3 is x2's child; unequal lengths exercise clipped prefix sums
    q = [torch.rand(n, 3, dtype=F64) - 0.5 for n in (9, 5, 7)]
    v = [None, torch.randn(7, 2, dtype=F64)]
    for causal in ("tree", "prefix"):
        poly = "x1*x2 + x1*x3" if causal == "prefix" else "x1*x2 + x2*x3"
        out = polyattn.poly_attention(poly, q, v, method="approx", degree=12, basis="taylor", causal=causal)
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
        plan = polyattn.plan_for(poly, q, v, method="approx", tolerance=1e-9)
        out = polyattn.poly_attention(poly, q, v, method="approx", tolerance=1e-9)
        ref = polyattn.poly_attention(poly, q, v, method="reference")
        assert plan.degree <= 2 and (out - ref).abs().max().item() <= plan.error_bound + 1e-12
        json.dumps(plan.to_dict())
