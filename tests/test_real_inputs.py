"""Inputs and transforms from real models (issue 12): torch.func.vmap / grad, double backward,
empty sequences, ``method="exact"``, autocast, key padding (masks kept broadcast), padded batches."""

from __future__ import annotations

import pytest
import torch
from torch.func import grad, vmap

import polyattn
from polyattn import PolyAttentionError

F64 = torch.float64
POLYS = {
    "tree": "x1*x2 + x2*x3",
    "cycle": "x1*x2 + x2*x3 + x1*x3",
    "tensor3": "x1*x2*x3",
}


def _inputs(t=3, b=3, n=5, d=4, dv=3, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    q = [torch.randn(b, n, d, generator=g, dtype=dtype) for _ in range(t)]
    v = [torch.randn(b, n, dv, generator=g, dtype=dtype) for _ in range(t - 1)]
    return q, v


def _ref(poly, q, v, **kw):
    return polyattn.poly_attention(poly, q, v, method="reference", **kw)


# ---------------------------------------------------------------------------------- torch.func
@pytest.mark.parametrize("name", list(POLYS))
@pytest.mark.parametrize("causal", [False, "prefix"])
def test_vmap_matches_batched_call(name, causal):
    poly = POLYS[name]
    q, v = _inputs()

    def one(q1, q2, q3, v2, v3):  # one batch element: [n, d]
        return polyattn.poly_attention(poly, [q1, q2, q3], [v2, v3], causal=causal)

    out = vmap(one)(*q, *v)
    torch.testing.assert_close(out, _ref(poly, q, v, causal=causal), rtol=0, atol=1e-10)


def test_vmap_tree_causal_masked_and_nested():
    poly = POLYS["tree"]
    q, v = _inputs(b=2)
    m = torch.rand(5, 5, generator=torch.Generator().manual_seed(3)) < 0.6

    def one(q1, q2, q3, v2, v3):
        return polyattn.poly_attention(poly, [q1, q2, q3], [v2, v3], causal="tree", mask={(2, 3): m})

    torch.testing.assert_close(vmap(one)(*q, *v), _ref(poly, q, v, causal="tree", mask={(2, 3): m}),
                               rtol=0, atol=1e-10)
    # vmap over an extra leading dim of already batched inputs (in_dims on a middle dim)
    qq = [torch.stack([x, 2 * x], 1) for x in q]  # [b, 2, n, d]
    out = vmap(lambda *xs: polyattn.poly_attention(poly, list(xs[:3]), list(xs[3:])), in_dims=1)(*qq, *[
        torch.stack([x, x], 1) for x in v])
    torch.testing.assert_close(out[1], _ref(poly, [2 * x for x in q], v), rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", list(POLYS))
def test_func_grad_matches_autograd(name):
    poly = POLYS[name]
    q, v = _inputs()
    w = torch.randn(3, 5, 3, dtype=F64, generator=torch.Generator().manual_seed(9))

    def loss(q1, q2, q3, v2, v3, method="auto"):
        return (polyattn.poly_attention(poly, [q1, q2, q3], [v2, v3], method=method) * w).sum()

    g = grad(loss, argnums=(0, 1, 2, 3, 4))(*q, *v)
    leaves = [x.clone().requires_grad_(True) for x in (*q, *v)]
    ref = torch.autograd.grad(loss(*leaves, method="reference"), leaves)
    for a, b in zip(g, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", list(POLYS))
def test_per_sample_gradients_vmap_of_grad(name):
    poly = POLYS[name]
    q, v = _inputs(b=2)

    def loss(q1, q2, q3, v2, v3):
        return polyattn.poly_attention(poly, [q1, q2, q3], [v2, v3]).square().sum()

    per = vmap(grad(loss))(*q, *v)  # d loss_b / d q1_b
    for b in range(2):
        leaf = q[0][b].clone().requires_grad_(True)
        ref = torch.autograd.grad(
            polyattn.poly_attention(poly, [leaf, q[1][b], q[2][b]], [v[0][b], v[1][b]], method="reference")
            .square().sum(), leaf)[0]
        torch.testing.assert_close(per[b], ref, rtol=0, atol=1e-10)


# ---------------------------------------------------------------------------- double backward
def test_double_backward_flash_tree_raises_clear_error():
    q, v = _inputs()
    q = [x.requires_grad_(True) for x in q]
    out = polyattn.poly_attention(POLYS["tree"], q, v, method="tree")
    (g,) = torch.autograd.grad(out.sum(), q[0], create_graph=True)
    with pytest.raises(PolyAttentionError, match="double backward through a fused flash tree edge.*'elimination'"):
        g.sum().backward()


def test_double_backward_elimination_matches_reference():
    q, v = _inputs(n=4, d=3, dv=2)
    # the 3-cycle runs the fused triangle kernel (custom backward, refuses double backward:
    # tests/test_kernels_fast.py); a causal mask keeps it on plain elimination steps
    for poly, method, causal in ((POLYS["tree"], "elimination", None), (POLYS["cycle"], "elimination", "prefix")):
        leaves = [x.clone().requires_grad_(True) for x in q]

        def f(*xs, method=method, poly=poly, causal=causal):
            return polyattn.poly_attention(poly, list(xs), v, method=method, causal=causal).square().sum()

        torch.autograd.gradgradcheck(f, leaves, atol=1e-7)


# -------------------------------------------------------------------------------- empty inputs
@pytest.mark.parametrize("poly", ["x1*x2", "x1*x2 + x2*x3", "x1*x2 + x2*x3 + x1*x3", "x1*x2*x3"])
def test_empty_sequences_follow_sdpa(poly):
    t = polyattn.parse(poly).num_variables
    # n1 = 0: an empty output
    q = [torch.randn(2, 0 if j == 0 else 4, 3, requires_grad=True) for j in range(t)]
    v = [torch.randn(2, 4, 5) for _ in range(t - 1)]
    out = polyattn.poly_attention(poly, q, v)
    assert out.shape == (2, 0, 5)
    # an empty key set: zeros, like SDPA, with zero gradients
    q = [torch.randn(2, 0 if j == t - 1 else 4, 3, requires_grad=True) for j in range(t)]
    v = [torch.randn(2, 0 if j == t - 2 else 4, 5) for j in range(t - 1)]
    out = polyattn.poly_attention(poly, q, v)
    assert out.shape == (2, 4, 5) and (out == 0).all()
    out.sum().backward()
    assert all(x.grad is not None and (x.grad == 0).all() for x in q)
    if poly == "x1*x2":
        sd = torch.nn.functional.scaled_dot_product_attention(q[0], q[1], v[0])
        assert torch.equal(out, sd)
    assert "no kernel runs" in str(polyattn.plan_for(poly, q, v))


# ---------------------------------------------------------------------------------- exact alias
def test_method_exact_is_auto_restricted_to_exact_methods():
    q, v = _inputs()
    for poly in POLYS.values():
        pe = polyattn.plan_for(poly, q, v, method="exact")
        pa = polyattn.plan_for(poly, q, v)
        assert pe.method == pa.method and pe.method != "approx" and pe.requested == "exact"
        torch.testing.assert_close(polyattn.poly_attention(poly, q, v, method="exact"),
                                   polyattn.poly_attention(poly, q, v), rtol=0, atol=0)
    with pytest.raises(PolyAttentionError, match="unexpected keyword argument.*tolerance"):
        polyattn.poly_attention(POLYS["tree"], q, v, method="exact", tolerance=1e-3)
    with pytest.raises(PolyAttentionError, match="'exact' pick the fastest exact method"):
        polyattn.poly_attention(POLYS["tree"], q, v, method="exactly")


# ------------------------------------------------------------------------------------ autocast
@pytest.mark.parametrize("name", list(POLYS))
def test_autocast_bf16_accumulates_in_float32(name):
    poly = POLYS[name]
    q, v = _inputs(n=32, d=16, dv=8, dtype=torch.float32)
    ref = _ref(poly, q, v)
    plain = polyattn.poly_attention(poly, [x.bfloat16() for x in q], [x.bfloat16() for x in v])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = polyattn.poly_attention(poly, q, v)
    assert auto.dtype == torch.float32
    # under autocast the float32 inputs are used as they are: float32 accuracy, not bf16's
    assert (auto.double() - ref).abs().max() < 1e-5
    assert (plain.double() - ref).abs().max() > 1e-4  # (bf16 inputs lose precision, as expected)


# --------------------------------------------------------------------------- padding and masks
def test_key_padding_masks_stay_broadcast_and_tree_stays_tree():
    keep = torch.ones(2, 8, dtype=torch.bool)
    keep[0, 5:] = False
    masks = polyattn.key_padding_masks("x1*x2 + x2*x3", keep)
    assert set(masks) == {(1, 2), (2, 3)}
    assert all(m.stride(-2) == 0 and m.shape == (2, 1, 8, 8) for m in masks.values())
    q = [torch.randn(2, 2, 8, 4) for _ in range(3)]
    pl = polyattn.plan_for("x1*x2 + x2*x3", q, None, mask=masks)
    assert pl.method == "tree"
    with pytest.raises(PolyAttentionError, match="key_padding_mask: expected a bool tensor"):
        polyattn.key_padding_masks("x1*x2", keep.long())


def test_key_padding_mask_memory_is_linear():
    """A key-padding mask at n = 8192 is one row per batch entry: no n x n float copy."""
    n = 8192
    keep = torch.ones(1, n, dtype=torch.bool)
    keep[0, -100:] = False
    masks = polyattn.key_padding_masks("x1*x2 + x2*x3", keep, heads=False)
    pl = polyattn.plan("x1*x2 + x2*x3", seq_len=n, head_dim=16, mask_pairs=list(masks))
    full = pl.peak_bytes  # layout unknown to a plan made from sizes: n x n assumed
    q = [torch.randn(1, n, 16) for _ in range(3)]
    v = [torch.randn(1, n, 8) for _ in range(2)]
    real = polyattn.plan_for("x1*x2 + x2*x3", q, v, mask=masks)
    assert real.peak_bytes < 16 * 2**20 < full
    from polyattn.bench.measure import memory_supported, peak_memory_growth

    if memory_supported():
        polyattn.poly_attention("x1*x2 + x2*x3", q, v, mask=masks)  # warm-up
        grow = peak_memory_growth(lambda: polyattn.poly_attention("x1*x2 + x2*x3", q, v, mask=masks))
        assert grow < 16 * 2**20, f"grew {grow / 2**20:.0f} MB; one n x n float mask is {n * n * 4 / 2**20:.0f} MB"


def test_padded_batch_matches_unpadded_sequences():
    torch.manual_seed(0)
    for poly in ("x1*x2", "x1*x2 + x2*x3", "x1*x2 + x1*x3 + x2*x3", "x1*x2*x3"):
        for readout in ("last", "all"):
            m = polyattn.PolyTransformer(7, 3, dim=16, polynomial=poly, heads=2, readout=readout).double().eval()
            tok = torch.randint(0, 7, (2, 6))
            keep = torch.ones(2, 6, dtype=torch.bool)
            keep[0, 4:] = False
            out = m(tok, token_mask=keep)
            a, b = m(tok[:1, :4]), m(tok[1:])
            got_a = out[0] if readout == "last" else out[0, :4]
            torch.testing.assert_close(got_a, a[0], rtol=0, atol=1e-12)
            torch.testing.assert_close(out[1], b[0], rtol=0, atol=1e-12)
    with pytest.raises(PolyAttentionError, match=r"token_mask must be a bool tensor \[batch=2, seq=6\]"):
        m(tok, token_mask=keep[:, :3])


# --------------------------------------------------------------------------------- approximation
def test_approx_accepts_views_and_propagates_nan():
    g = torch.Generator().manual_seed(4)
    base = [torch.rand(2, 3, 96, generator=g, dtype=F64) - 0.5 for _ in range(3)]
    q = [x.transpose(-1, -2) for x in base]  # [2, 96, 3] views with head-dim stride 96
    v = [torch.randn(2, 96, 4, generator=g, dtype=F64)[..., ::2] for _ in range(2)]  # sliced head dim
    kw = dict(method="approx", tolerance=1e-3, allow_slower=True)
    out = polyattn.poly_attention("x1*x2 + x2*x3", q, v, **kw)
    same = polyattn.poly_attention("x1*x2 + x2*x3", [x.contiguous() for x in q], [x.contiguous() for x in v], **kw)
    assert torch.equal(out, same)
    ref = _ref("x1*x2 + x2*x3", q, v)
    assert (out - ref).abs().max() <= 1e-3
    q = [x.contiguous() for x in q]
    q[0][1, 7, 0] = float("nan")  # one query row: only that row
    out = polyattn.poly_attention("x1*x2 + x2*x3", q, v, **kw)
    assert out[1, 7].isnan().all() and torch.isfinite(out[1, :7]).all() and torch.isfinite(out[0]).all()
    q[2][0, 5, 1] = float("nan")  # a leaf key: every row of that batch entry
    out = polyattn.poly_attention("x1*x2 + x2*x3", q, v, **kw)
    assert out[0].isnan().all()
