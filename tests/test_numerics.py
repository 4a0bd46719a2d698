"""Numerical contract: SDPA equality, star factorisation, large logits, low precision, edge cases."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import polyattn

METHODS_ANY = ("elimination", "reference")


def _rand(*shape, dtype=torch.float32, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)


@pytest.mark.parametrize("method", ["auto", "sdpa", "tree", "elimination"])
def test_self_attention_equals_sdpa_float32(method):
    q, k, v = (_rand(2, 3, 37, 16, seed=s) for s in range(3))
    out = polyattn.poly_attention("x1*x2", [q, k], [v], method=method)
    ref = F.scaled_dot_product_attention(q, k, v)
    assert out.dtype == torch.float32
    assert (out - ref).abs().max().item() <= 1e-6


def test_self_attention_causal_and_mask_equal_sdpa():
    q, k, v = (_rand(2, 19, 8, seed=s) for s in range(3))
    out = polyattn.poly_attention("x1*x2", [q, k], [v], causal=True)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert (out - ref).abs().max().item() <= 1e-6
    m = torch.rand(19, 19, generator=torch.Generator().manual_seed(3)) < 0.5
    m[:, 0] = True
    out = polyattn.poly_attention("x1*x2", [q, k], [v], mask={(1, 2): m}, method="tree")
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=m)
    assert (out - ref).abs().max().item() <= 1e-6


def test_star_is_hadamard_of_independent_attentions():
    qs = [_rand(2, 11, 8, seed=s) for s in range(4)]
    vs = [_rand(2, 11, 5, seed=10 + s) for s in range(3)]
    out = polyattn.poly_attention("x1*x2 + x1*x3 + x1*x4", qs, vs)
    ref = torch.ones_like(out)
    for j in range(3):
        ref = ref * F.scaled_dot_product_attention(qs[0], qs[j + 1], vs[j])
    assert (out - ref).abs().max().item() <= 1e-6


@pytest.mark.parametrize(
    "poly", ["x1*x2 + x2*x3", "x1*x2 + x2*x3 + x1*x3", "x1*x2*x3", "x1*x2 + x2*x3 + x3*x4 + x4*x1"]
)
def test_logits_of_magnitude_1e3_are_finite_and_exact_in_float32(poly):
    t = polyattn.parse(poly).num_variables
    n, d = 12, 4
    # entries ~ 30 give logits scale*d*30^2 ~ 1e3 (and up to several 1e3 for the degree-3 monomial)
    qs64 = [_rand(n, d, dtype=torch.float64, seed=s, scale=30.0) for s in range(t)]
    vs64 = [_rand(n, 3, dtype=torch.float64, seed=50 + s) for s in range(t - 1)]
    ref = polyattn.poly_attention(poly, qs64, vs64, method="reference")
    q32 = [q.float() for q in qs64]
    v32 = [v.float() for v in vs64]
    logit = (q32[0] @ q32[1].T).abs().max().item() / d**0.5
    assert logit > 500
    out = polyattn.poly_attention(poly, q32, v32)
    assert torch.isfinite(out).all()
    # float32 rounding of logits ~1e3 perturbs each weight by ~1e3 * 6e-8 relative
    assert (out.double() - ref).abs().max().item() <= 1e-3


def test_triangle_underflow_is_recomputed_exactly():
    # Separable shifts underflow here (argmaxes of x1-x3 and x2-x3 rows disagree); the exact
    # recomputation must still agree with the float64 reference.
    n, d = 16, 2
    g = torch.Generator().manual_seed(7)
    qs = [40 * torch.randn(n, d, generator=g, dtype=torch.float64) for _ in range(3)]
    vs = [torch.randn(n, 2, generator=g, dtype=torch.float64) for _ in range(2)]
    ref = polyattn.poly_attention("x1*x2 + x2*x3 + x1*x3", qs, vs, method="reference")
    out = polyattn.poly_attention("x1*x2 + x2*x3 + x1*x3", [q.float() for q in qs], [v.float() for v in vs])
    assert torch.isfinite(out).all()
    assert (out.double() - ref).abs().max().item() <= 1e-3


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("poly", ["x1*x2", "x1*x2 + x2*x3", "x1*x2 + x2*x3 + x1*x3"])
def test_low_precision_accumulates_in_float32(dtype, poly):
    t = polyattn.parse(poly).num_variables
    qs = [_rand(2, 9, 8, seed=s) for s in range(t)]
    vs = [_rand(2, 9, 8, seed=20 + s) for s in range(t - 1)]
    ref = polyattn.poly_attention(poly, [q.to(dtype).double() for q in qs], [v.to(dtype).double() for v in vs],
                                  method="reference")
    out = polyattn.poly_attention(poly, [q.to(dtype) for q in qs], [v.to(dtype) for v in vs])
    assert out.dtype == dtype
    tol = 1e-2 if dtype == torch.float16 else 3e-2  # output rounding only
    assert (out.double() - ref).abs().max().item() <= tol


def test_float64_stays_float64():
    qs = [_rand(5, 3, dtype=torch.float64, seed=s) for s in range(3)]
    out = polyattn.poly_attention("x1*x2 + x2*x3", qs, [qs[1], qs[2]])
    assert out.dtype == torch.float64


@pytest.mark.parametrize("method", ["auto", "tree", "elimination", "reference"])
def test_fully_masked_row_gives_zeros_not_nan(method):
    qs = [_rand(6, 4, seed=s) for s in range(3)]
    vs = [_rand(6, 2, seed=10 + s) for s in range(2)]
    m = torch.ones(6, 6, dtype=torch.bool)
    m[2] = False  # query row 2 may attend to nothing
    for x in qs + vs:
        x.requires_grad_(True)
    out = polyattn.poly_attention("x1*x2 + x2*x3", qs, vs, mask={(1, 2): m}, method=method)
    assert torch.isfinite(out).all() and (out[2] == 0).all() and (out[3] != 0).any()
    out.sum().backward()
    assert all(torch.isfinite(x.grad).all() for x in qs + vs)


def test_variable_in_no_monomial_contributes_mean_of_values():
    qs = [_rand(5, 3, dtype=torch.float64, seed=s) for s in range(3)]
    v2 = _rand(4, 2, dtype=torch.float64, seed=9)
    qs[1] = _rand(4, 3, dtype=torch.float64, seed=8)
    v3 = _rand(5, 2, dtype=torch.float64, seed=10)
    out = polyattn.poly_attention("x1*x3", qs, [v2, v3])
    ref = F.scaled_dot_product_attention(qs[0], qs[2], v3) * v2.mean(0)
    assert (out - ref).abs().max().item() <= 1e-12


def test_query_in_no_monomial_gives_equal_rows():
    qs = [_rand(5, 3, dtype=torch.float64, seed=s) for s in range(3)]
    vs = [_rand(5, 2, dtype=torch.float64, seed=10 + s) for s in range(2)]
    out = polyattn.poly_attention("x2*x3", qs, vs)
    assert (out - out[:1]).abs().max().item() <= 1e-12
    ref = polyattn.poly_attention("x2*x3", qs, vs, method="reference")
    assert (out - ref).abs().max().item() <= 1e-12


def test_all_value_less_gives_indicator_of_admissible_rows():
    qs = [_rand(4, 3, seed=s) for s in range(2)]
    m = torch.ones(4, 4, dtype=torch.bool)
    m[1] = False
    out = polyattn.poly_attention("x1*x2", qs, None, mask={(1, 2): m}, method="tree")
    assert out.shape == (4, 1)
    assert out.squeeze(-1).tolist() == [1.0, 0.0, 1.0, 1.0]


def test_tree_causal_semantics():
    # causal="tree" on the path: l3 <= l2 <= l1; compare with explicit pair masks.
    n = 7
    qs = [_rand(n, 3, dtype=torch.float64, seed=s) for s in range(3)]
    vs = [_rand(n, 2, dtype=torch.float64, seed=10 + s) for s in range(2)]
    low = torch.ones(n, n, dtype=torch.bool).tril()
    a = polyattn.poly_attention("x1*x2 + x2*x3", qs, vs, causal="tree")
    b = polyattn.poly_attention("x1*x2 + x2*x3", qs, vs, mask={(1, 2): low, (2, 3): low}, method="reference")
    assert (a - b).abs().max().item() <= 1e-12
    c = polyattn.poly_attention("x1*x2 + x2*x3", qs, vs, causal=True)
    d = polyattn.poly_attention("x1*x2 + x2*x3", qs, vs, mask={(1, 2): low, (1, 3): low}, method="reference")
    assert (c - d).abs().max().item() <= 1e-12


@pytest.mark.parametrize("poly", ["x1*x2 + x2*x3 + x1*x3", "x1*x2 + x2*x3 + x3*x4 + x1*x4", "x1*x2*x3 + x2*x4 + x3*x4"])
@pytest.mark.parametrize("budget", [None, 1])
def test_huge_logits_float64_batched_with_masks(poly, budget):
    # logits ~1e4: separable shifts underflow even in float64; rows with suspect normalisers are
    # recomputed exactly (also under row/column chunking), gradients included.
    t = polyattn.parse(poly).num_variables
    g = torch.Generator().manual_seed(11)
    qs = [(60 * torch.randn(2, 1, 7, 3, generator=g, dtype=torch.float64)).requires_grad_(True) for _ in range(t)]
    vs = [torch.randn(2, 3, 7, 2, generator=g, dtype=torch.float64).requires_grad_(True) for _ in range(t - 1)]
    mask = {(1, 3): torch.rand(7, 7, generator=g) < 0.6}
    kw = dict(mask=mask) if budget is None else dict(mask=mask, memory_budget=budget)
    ref = polyattn.poly_attention(poly, qs, vs, method="reference", mask=mask)
    out = polyattn.poly_attention(poly, qs, vs, method="elimination", **kw)
    assert torch.isfinite(out).all()
    assert (out - ref).abs().max().item() <= 1e-9
    w = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    ga = torch.autograd.grad((out * w).sum(), qs + vs)
    gb = torch.autograd.grad((ref * w).sum(), qs + vs)
    for a, b in zip(ga, gb):
        assert torch.isfinite(a).all()
        assert (a - b).abs().max().item() <= 1e-6 * max(1.0, b.abs().max().item())
