"""Every exact method equals the float64 reference, forward and backward (DESIGN §5)."""

from __future__ import annotations

import torch
from hypothesis import given, settings

import polyattn
from polyattn import MethodError

from strategies import poly_problems

EXACT = ("auto", "sdpa", "tree", "elimination")
TOL = 1e-9


def _leaves(queries, values):
    return [x for x in list(queries) + list(values) if x is not None]


def _grads(out, inputs, weight):
    loss = (out * weight).sum()
    if not loss.requires_grad:  # e.g. all variables value-less: the output is constant
        return [torch.zeros_like(x) for x in inputs]
    gs = torch.autograd.grad(loss, inputs, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for g, x in zip(gs, inputs)]


@settings(max_examples=220)
@given(poly_problems())
def test_exact_methods_match_reference(problem):
    p, queries, values, kw = problem
    queries = [q.clone().requires_grad_(True) for q in queries]
    values = [None if v is None else v.clone().requires_grad_(True) for v in values]
    inputs = _leaves(queries, values)
    ref = polyattn.poly_attention(p, queries, values, method="reference", **kw)
    assert ref.dtype == torch.float64 and torch.isfinite(ref).all()
    weight = torch.randn(ref.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ref_g = _grads(ref, inputs, weight)
    ran = 0
    for method in EXACT:
        try:
            out = polyattn.poly_attention(p, queries, values, method=method, **kw)
        except MethodError:
            assert method in ("sdpa", "tree"), method
            continue
        ran += 1
        assert out.shape == ref.shape, method
        assert (out - ref).abs().max().item() <= TOL, (method, str(p), kw)
        for g, rg in zip(_grads(out, inputs, weight), ref_g):
            assert (g - rg).abs().max().item() <= TOL, (method, str(p), kw)
    assert ran >= 2  # auto + elimination at least


def test_auto_records_choice():
    q = [torch.randn(4, 3, dtype=torch.float64) for _ in range(3)]
    pl = polyattn.plan_for("x1*x2 + x2*x3", q, None)
    assert pl.method == "tree"
    assert polyattn.plan_for("x1*x2 + x2*x3 + x1*x3", q, None).method == "elimination"
    assert polyattn.plan_for("x1*x2", q[:2], None).method == "sdpa"
