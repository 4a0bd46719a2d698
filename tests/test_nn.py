"""PolyAttention / PolyTransformer: SDPA equivalence, shapes, cross-attention, errors, round trips."""

from __future__ import annotations

import io
import time

import pytest
import torch
import torch.nn.functional as F

import polyattn
from polyattn import PolyAttentionError
from polyattn.nn import PolyAttention, PolyTransformer


def _mha_reference(layer: PolyAttention, x: torch.Tensor, causal: bool) -> torch.Tensor:
    b, n, _ = x.shape
    h, dh = layer.heads, layer.dim_head

    def split(y: torch.Tensor) -> torch.Tensor:
        return y.view(b, n, h, dh).transpose(1, 2)

    q = split(F.linear(x, layer.to_q[0].weight))
    k = split(F.linear(x, layer.to_q[1].weight))
    v = split(F.linear(x, layer.to_v[0].weight))
    o = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    return F.linear(o.transpose(1, 2).reshape(b, n, h * dh), layer.to_out.weight)


@pytest.mark.parametrize("causal", [False, True])
def test_self_attention_equals_sdpa_multihead(causal: bool) -> None:
    torch.manual_seed(0)
    layer = PolyAttention(32, "x1*x2", heads=4, causal=causal).double()
    x = torch.randn(3, 10, 32, dtype=torch.float64)
    torch.testing.assert_close(layer(x), _mha_reference(layer, x, causal))


def test_self_attention_matches_torch_multihead_attention() -> None:
    torch.manual_seed(1)
    dim, heads = 24, 3
    mha = torch.nn.MultiheadAttention(dim, heads, bias=False, batch_first=True).double()
    layer = PolyAttention(dim, "x1*x2", heads=heads).double()
    wq, wk, wv = mha.in_proj_weight.chunk(3)
    with torch.no_grad():
        layer.to_q[0].weight.copy_(wq)
        layer.to_q[1].weight.copy_(wk)
        layer.to_v[0].weight.copy_(wv)
        layer.to_out.weight.copy_(mha.out_proj.weight)
    x = torch.randn(2, 7, dim, dtype=torch.float64)
    torch.testing.assert_close(layer(x), mha(x, x, x, need_weights=False)[0])


def test_layer_matches_reference_method_for_tree_and_triangle() -> None:
    torch.manual_seed(2)
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    for spec in ["x1*x2 + x2*x3", "x1*x2 + x2*x3 + x1*x3", "x1*x2*x3"]:
        layer = PolyAttention(16, spec, heads=2).double()
        ref = PolyAttention(16, spec, heads=2, method="reference").double()
        ref.load_state_dict(layer.state_dict())
        torch.testing.assert_close(layer(x), ref(x))


def test_projection_counts_and_shapes() -> None:
    layer = PolyAttention(32, "x1*x2 + x2*x3 + x3*x4", heads=2, dim_head=8, value_dim_head=4)
    assert len(layer.to_q) == 4 and len(layer.to_v) == 3
    assert layer.to_q[0].weight.shape == (16, 32)
    assert layer.to_v[0].weight.shape == (8, 32)
    assert layer.to_out.weight.shape == (32, 8)
    out = layer(torch.randn(2, 5, 32))
    assert out.shape == (2, 5, 32)
    assert "x1*x2" in repr(layer)


def test_cross_attention_contexts() -> None:
    torch.manual_seed(3)
    layer = PolyAttention(16, "x1*x2 + x2*x3", heads=2, context_dims={3: 8}).double()
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    c2 = torch.randn(2, 7, 16, dtype=torch.float64)
    c3 = torch.randn(2, 4, 8, dtype=torch.float64)
    out = layer(x, contexts={2: c2, 3: c3})
    assert out.shape == (2, 5, 16)
    out_seq = layer(x, contexts=[None, c2, c3])
    torch.testing.assert_close(out, out_seq)
    # against the functional op on hand-made projections
    q = [layer._split(layer.to_q[0](x), 8), layer._split(layer.to_q[1](c2), 8), layer._split(layer.to_q[2](c3), 8)]
    v = [layer._split(layer.to_v[0](c2), 8), layer._split(layer.to_v[1](c3), 8)]
    o = polyattn.poly_attention("x1*x2 + x2*x3", q, v, method="reference")
    expect = layer.to_out(o.transpose(1, 2).reshape(2, 5, 16))
    torch.testing.assert_close(out, expect)


def test_layer_errors() -> None:
    with pytest.raises(PolyAttentionError, match="not divisible"):
        PolyAttention(10, "x1*x2", heads=3)
    with pytest.raises(PolyAttentionError, match="polynomial must be"):
        PolyAttention(8, 3, heads=1)  # type: ignore[arg-type]
    layer = PolyAttention(8, "x1*x2", heads=2)
    with pytest.raises(PolyAttentionError, match=r"x must be \[batch, seq, dim=8\]"):
        layer(torch.randn(2, 3, 9))
    with pytest.raises(PolyAttentionError, match="contexts has 3 entries"):
        layer(torch.randn(2, 3, 8), contexts=[None, None, None])
    with pytest.raises(PolyAttentionError, match="context for x2"):
        layer(torch.randn(2, 3, 8), contexts={2: torch.randn(2, 4, 5)})
    with pytest.raises(PolyAttentionError, match="must follow a variable"):
        PolyAttention(8, "x1**x2", heads=1)


def test_gradients_reach_every_projection() -> None:
    torch.manual_seed(4)
    layer = PolyAttention(16, "x1*x2 + x2*x3", heads=2)
    layer(torch.randn(2, 6, 16)).square().sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("readout", ["last", "all"])
def test_transformer_shapes(readout: str) -> None:
    torch.manual_seed(5)
    model = PolyTransformer((5, 7, 2), 4, dim=16, depth=2, polynomial=["x1*x2", "x1*x2 + x2*x3"],
                            heads=2, max_len=12, readout=readout)
    tok = torch.stack([torch.randint(0, v, (3, 9)) for v in (5, 7, 2)], dim=-1)
    out = model(tok)
    assert out.shape == ((3, 4) if readout == "last" else (3, 9, 4))
    single = PolyTransformer(6, 3, dim=16)
    assert single(torch.randint(0, 6, (2, 5))).shape == (2, 3)


@pytest.mark.parametrize("poly", ["x1*x2", "x1*x2 + x2*x3", "x1*x2 + x2*x3 + x1*x3", "x1*x2*x3"])
def test_last_readout_computes_only_the_last_row_exactly(poly: str) -> None:
    """readout='last' runs the final block on the last query row only: same logits and gradients."""
    torch.manual_seed(3)
    model = PolyTransformer((5, 7), 4, dim=16, depth=2, polynomial=poly, heads=2, max_len=9).double()
    tok = torch.stack([torch.randint(0, v, (3, 9)) for v in (5, 7)], dim=-1)
    fast = model(tok)
    g_fast = torch.autograd.grad(fast.square().sum(), list(model.parameters()))

    def full(m: PolyTransformer) -> torch.Tensor:  # every row of every block, then the last row
        h = m.embeds[0](tok[..., 0]) + m.embeds[1](tok[..., 1]) + m.pos.weight[:9]
        for blk in m.blocks:
            h = blk(h)
        return m.head(m.norm(h)[:, -1])

    slow = full(model)
    g_slow = torch.autograd.grad(slow.square().sum(), list(model.parameters()))
    assert torch.allclose(fast, slow, atol=1e-12)
    for a, b in zip(g_fast, g_slow):
        assert torch.allclose(a, b, atol=1e-10)


def test_transformer_errors() -> None:
    with pytest.raises(PolyAttentionError, match="readout"):
        PolyTransformer(5, 2, readout="first")
    with pytest.raises(PolyAttentionError, match="polynomials for depth"):
        PolyTransformer(5, 2, depth=2, polynomial=["x1*x2"])
    model = PolyTransformer((5, 5), 2, dim=8, max_len=4)
    with pytest.raises(PolyAttentionError, match="tokens must be"):
        model(torch.zeros(2, 3, 3, dtype=torch.long))
    with pytest.raises(PolyAttentionError, match="max_len"):
        model(torch.zeros(2, 6, 2, dtype=torch.long))


def test_state_dict_round_trip() -> None:
    torch.manual_seed(6)
    kw = dict(dim=16, depth=2, polynomial="x1*x2 + x2*x3", heads=2)
    a = PolyTransformer((4, 4), 3, **kw)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = PolyTransformer((4, 4), 3, **kw)
    b.load_state_dict(torch.load(buf, weights_only=True))
    tok = torch.randint(0, 4, (2, 6, 2))
    torch.testing.assert_close(a(tok), b(tok), rtol=0, atol=0)


@pytest.mark.slow
def test_torch_compile_tiny_model() -> None:
    """torch.compile of a 1-layer tree model gives the eager result (compile takes ~10-40 s on CPU)."""
    torch.manual_seed(7)
    model = PolyTransformer(6, 3, dim=8, depth=1, polynomial="x1*x2 + x2*x3", heads=1, mlp_ratio=1.0)
    tok = torch.randint(0, 6, (2, 5))
    eager = model(tok)
    t0 = time.perf_counter()
    compiled = torch.compile(model)
    out = compiled(tok)
    print(f"torch.compile first call: {time.perf_counter() - t0:.1f} s")
    torch.testing.assert_close(out, eager, rtol=1e-4, atol=1e-5)


def test_valueless_variables() -> None:
    torch.manual_seed(8)
    layer = PolyAttention(16, "x1*x2 + x2*x3", heads=2, valueless=(2,)).double()
    assert len(layer.to_v) == 1 and "valueless=[2]" in repr(layer)
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    q = [layer._split(lin(x), 8) for lin in layer.to_q]
    o = polyattn.poly_attention("x1*x2 + x2*x3", q, [None, layer._split(layer.to_v[0](x), 8)], method="reference")
    torch.testing.assert_close(layer(x), layer.to_out(o.transpose(1, 2).reshape(2, 5, 16)))
    with pytest.raises(PolyAttentionError, match="non-query variables 2..3"):
        PolyAttention(16, "x1*x2 + x2*x3", heads=2, valueless=(1,))
    with pytest.raises(PolyAttentionError, match="at least one variable must carry a value"):
        PolyAttention(16, "x1*x2 + x2*x3", heads=2, valueless=(2, 3))
    model = PolyTransformer(5, 2, dim=16, polynomial="x1*x2 + x2*x3", valueless=[2])
    assert model(torch.randint(0, 5, (2, 4))).shape == (2, 2)


def test_layer_validates_method_and_causal_at_construction() -> None:
    with pytest.raises(PolyAttentionError, match="unknown method 'nope'"):
        PolyAttention(16, "x1*x2 + x2*x3", heads=2, method="nope")
    with pytest.raises(PolyAttentionError, match="causal must be one of"):
        PolyAttention(16, "x1*x2 + x2*x3", heads=2, causal="sideways")
    with pytest.raises(polyattn.MethodError, match="method='sdpa' computes exactly x1\\*x2"):
        PolyAttention(16, "x1*x2 + x2*x3", heads=2, method="sdpa")
    with pytest.raises(PolyAttentionError, match="causal='tree' needs a tree polynomial"):
        PolyAttention(16, "x1*x2 + x2*x3 + x1*x3", heads=2, causal="tree")
    assert PolyAttention(16, "x1*x2 + x2*x3", heads=2, method="exact").method == "exact"


def test_token_mask_rule_is_one_rule_for_every_entry_point() -> None:
    """PolyAttention, PolyTransformer.forward and generate (cached and not) check ``token_mask``
    with the same rule and message."""
    torch.manual_seed(0)
    layer = PolyAttention(8, "x1*x2 + x2*x3", heads=2)
    x = torch.randn(2, 5, 8)
    model = PolyTransformer(7, 7, dim=8, heads=2, max_len=16, causal="tree", readout="all").eval()
    tok = torch.randint(0, 7, (2, 5))
    bad = torch.ones(2, 5)  # float, not bool
    pat = r"token_mask must be a bool tensor \[batch=2, (n|seq)=5\] \(True = real token, False = padding\), got torch.float32"
    for call in (lambda: layer(x, token_mask=bad), lambda: model(tok, token_mask=bad),
                 lambda: model.generate(tok, 2, token_mask=bad), lambda: model.generate(tok, 2, token_mask=bad, use_cache=False)):
        with pytest.raises(PolyAttentionError, match=pat):
            call()
    with pytest.raises(PolyAttentionError, match=r"\[batch=2, n=5\].*got torch.bool \[2, 4\]"):
        layer(x, token_mask=torch.ones(2, 4, dtype=torch.bool))
    ok = torch.ones(2, 5, dtype=torch.bool)
    torch.testing.assert_close(layer(x, token_mask=ok), layer(x))
