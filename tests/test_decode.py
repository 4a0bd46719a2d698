"""Incremental decoding with DecodeCache: token by token equals the full causal forward.

In the style of streaming-attention suites: several polynomials (path, star, branching tree,
forest, isolated variable), several prefill lengths, chunked extension, batch > 1 with left and
right padding, gradients (equal to the full forward's; none reach future tokens), state_dict round
trip through ``torch.load(weights_only=True)``, generation with and without the cache, errors.
"""

from __future__ import annotations

import io

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import polyattn
from polyattn import DecodeCache, PolyAttentionError
from polyattn.errors import MethodError
from polyattn.nn import PolyAttention, PolyTransformer
from polyattn.planning.decode import decode_support, plan_decode

F64 = torch.float64
TOL = dict(rtol=0.0, atol=1e-10)

POLYS = [
    "x1*x2",  # ordinary KV cache
    "x1*x2 + x2*x3",  # path
    "x1*x2 + x1*x3",  # star
    "x1*x2 + x2*x3 + x2*x4 + x1*x5",  # branching tree
    "x1*x2 + x2*x3 + x3*x4",  # path of depth 3
    "x1*x2 + x3*x4",  # forest: x3 hangs under x1 by a zero edge
    "x1*x3",  # x2 in no monomial: mean of its values over earlier positions
]


def _layer(poly: str, seed: int = 0, **kw) -> PolyAttention:
    torch.manual_seed(seed)
    return PolyAttention(12, poly, heads=3, causal=kw.pop("causal", "tree"), **kw).double()


def _decode(layer: PolyAttention, x: torch.Tensor, prefill: int, chunks=None, token_mask=None) -> torch.Tensor:
    cache = DecodeCache()
    n = x.shape[1]
    sizes = [prefill] + (chunks or [1] * (n - prefill))
    outs, t = [], 0
    for s in sizes:
        if s == 0:
            continue
        tm = None if token_mask is None else token_mask[:, t:t + s]
        outs.append(layer(x[:, t:t + s], cache=cache, token_mask=tm))
        t += s
    assert t == n and len(cache) == n
    return torch.cat(outs, 1)


@pytest.mark.parametrize("poly", POLYS)
@pytest.mark.parametrize("prefill", [1, 4, 9])
def test_token_by_token_equals_full_causal_forward(poly: str, prefill: int) -> None:
    layer = _layer(poly)
    x = torch.randn(2, 11, 12, dtype=F64, generator=torch.Generator().manual_seed(1))
    full = layer(x)
    with torch.no_grad():
        inc = _decode(layer, x, prefill)
    torch.testing.assert_close(inc, full.detach(), **TOL)


@pytest.mark.parametrize("poly", ["x1*x2 + x2*x3", "x1*x2 + x2*x3 + x2*x4 + x1*x5"])
def test_chunked_extension_and_empty_start(poly: str) -> None:
    layer = _layer(poly, seed=2)
    x = torch.randn(3, 13, 12, dtype=F64, generator=torch.Generator().manual_seed(2))
    full = layer(x).detach()
    with torch.no_grad():
        torch.testing.assert_close(_decode(layer, x, 4, chunks=[3, 1, 5]), full, **TOL)
        torch.testing.assert_close(_decode(layer, x, 0, chunks=[1, 6, 2, 4]), full, **TOL)


@pytest.mark.parametrize("poly", ["x1*x2", "x1*x2 + x2*x3", "x1*x2 + x1*x3"])
def test_prefix_causal_star_is_cached_like_tree(poly: str) -> None:
    layer = _layer(poly, causal="prefix")
    x = torch.randn(2, 8, 12, dtype=F64, generator=torch.Generator().manual_seed(3))
    if not decode_support(poly, "prefix"):
        with pytest.raises(PolyAttentionError, match="each new query couples with all earlier tuples"):
            layer(x[:, :3], cache=DecodeCache())
        return
    with torch.no_grad():
        torch.testing.assert_close(_decode(layer, x, 3), layer(x), **TOL)


def _pad_mask_dict(poly, valid: torch.Tensor) -> dict:
    """Independent of polyattn.nn.decode: forbid a pad slot for every non-query variable."""
    p = polyattn.parse(poly)
    n = valid.shape[1]
    out = {}
    for j in range(2, p.num_variables + 1):
        for m in p.monomials:
            if j in m:
                w = min(v for v in m if v != j)
                break
        else:
            w = 1
        out[(w, j)] = valid[:, None, None, :].expand(-1, 1, n, n)
    return out


@pytest.mark.parametrize("poly", ["x1*x2", "x1*x2 + x2*x3", "x1*x2 + x2*x3 + x2*x4 + x1*x5"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch(poly: str, side: str) -> None:
    """Batch of 3 prompts with 0, 2 and 4 pad slots: each real row equals the sample run alone,
    and every row equals the full forward with key-padding pair masks."""
    layer = _layer(poly, seed=4)
    g = torch.Generator().manual_seed(4)
    lens = [9, 7, 5]
    n = max(lens)
    xs = [torch.randn(1, L, 12, dtype=F64, generator=g) for L in lens]
    x = torch.zeros(3, n, 12, dtype=F64)
    valid = torch.zeros(3, n, dtype=torch.bool)
    for i, (xi, L) in enumerate(zip(xs, lens)):
        sl = slice(n - L, n) if side == "left" else slice(0, L)
        x[i, sl] = xi[0]
        x[i, ~torch.isin(torch.arange(n), torch.arange(n)[sl])] = torch.randn(n - L, 12, dtype=F64, generator=g)
        valid[i, sl] = True
    full = layer(x, mask=_pad_mask_dict(poly, valid)).detach()
    with torch.no_grad():
        for prefill in (1, 4, n):
            inc = _decode(layer, x, prefill, token_mask=valid)
            torch.testing.assert_close(inc, full, **TOL)
        for i, xi in enumerate(xs):
            alone = layer(xi)[0]
            torch.testing.assert_close(inc[i][valid[i]], alone, **TOL)
    # token_mask without a cache is the same full forward
    torch.testing.assert_close(layer(x, token_mask=valid).detach(), full, **TOL)


def test_gradients_equal_full_forward_and_never_reach_future_tokens() -> None:
    layer = _layer("x1*x2 + x2*x3 + x2*x4 + x1*x5", seed=5)
    x0 = torch.randn(2, 9, 12, dtype=F64, generator=torch.Generator().manual_seed(5))
    weight = torch.randn(2, 9, 12, dtype=F64, generator=torch.Generator().manual_seed(6))
    cut = 6  # loss on outputs 0..5 only

    xf = x0.clone().requires_grad_()
    (layer(xf)[:, :cut] * weight[:, :cut]).sum().backward()
    assert xf.grad is not None and xf.grad[:, cut:].abs().max() == 0  # causal: nothing from the future
    assert xf.grad[:, :cut].abs().max() > 0
    full_pgrads = [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad()

    xi = x0.clone().requires_grad_()
    cache = DecodeCache()
    outs = [layer(xi[:, :3], cache=cache)] + [layer(xi[:, t:t + 1], cache=cache) for t in range(3, 9)]
    inc = torch.cat(outs, 1)
    (inc[:, :cut] * weight[:, :cut]).sum().backward()
    torch.testing.assert_close(xi.grad, xf.grad, **TOL)
    for a, p in zip(full_pgrads, layer.parameters()):
        torch.testing.assert_close(p.grad, a, rtol=1e-9, atol=1e-10)


def test_state_dict_round_trip_weights_only() -> None:
    layer = _layer("x1*x2 + x2*x3", seed=7)
    x = torch.randn(2, 10, 12, dtype=F64, generator=torch.Generator().manual_seed(7))
    valid = torch.ones(2, 10, dtype=torch.bool)
    valid[1, :2] = False
    with torch.no_grad():
        cache = DecodeCache()
        layer(x[:, :6], cache=cache, token_mask=valid[:, :6])
        buf = io.BytesIO()
        torch.save(cache.state_dict(), buf)
        buf.seek(0)
        state = torch.load(buf, weights_only=True)
        restored = DecodeCache.from_state_dict(state)
        assert len(restored) == 6 and restored.padded and restored.nbytes == cache.nbytes
        a = torch.cat([layer(x[:, t:t + 1], cache=cache) for t in range(6, 10)], 1)
        b = torch.cat([layer(x[:, t:t + 1], cache=restored) for t in range(6, 10)], 1)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(PolyAttentionError, match="not a DecodeCache state_dict"):
        DecodeCache.from_state_dict({"format": 99})
    with pytest.raises(PolyAttentionError, match="unexpected entry 'x2.bogus'"):
        DecodeCache.from_state_dict({**state, "x2.bogus": torch.zeros(1)})


def test_root_placement_and_valueless_with_cache() -> None:
    cases = [("x1*x2 + x2*x3", {"value_placement": "root"}), ("x1*x2 + x2*x3", {"valueless": [2]}),
             ("x1*x2 + x2*x3 + x2*x4", {"valueless": [2, 3], "value_placement": {4: "root"}})]
    for poly, kw in cases:
        layer = _layer(poly, seed=8, **kw)
        x = torch.randn(2, 8, 12, dtype=F64, generator=torch.Generator().manual_seed(8))
        with torch.no_grad():
            torch.testing.assert_close(_decode(layer, x, 3), layer(x), **TOL)


def test_float32_cache_matches() -> None:
    torch.manual_seed(9)
    layer = PolyAttention(32, "x1*x2 + x2*x3", heads=4, causal="tree")
    x = torch.randn(2, 40, 32)
    with torch.no_grad():
        inc = _decode(layer, x, 17)
        torch.testing.assert_close(inc, layer(x), rtol=1e-5, atol=1e-5)


def test_decode_support_and_plan() -> None:
    assert decode_support("x1*x2 + x2*x3", "tree")
    assert decode_support("x1*x2 + x1*x3", True)  # prefix == tree for a star
    no = decode_support("x1*x2 + x2*x3", "prefix")
    assert not no and "couples with all earlier tuples" in no.reason and "causal='tree'" in no.reason
    assert "not a tree polynomial" in decode_support("x1*x2 + x2*x3 + x1*x3", "prefix").reason
    assert "not a tree polynomial" in decode_support("x1*x2*x3", "prefix").reason
    assert "without causality" in decode_support("x1*x2", False).reason
    plan = plan_decode("x1*x2 + x2*x3", "tree")
    assert [(v.var, v.parent, v.key, v.message, v.logz) for v in plan.vars] == [
        (3, 2, True, True, False), (2, 1, True, True, True)]
    assert plan.cached_floats(8, 8) == 8 + 8 + 8 + 8 + 1
    assert plan_decode("x1*x2", "tree").cached_floats(8, 8) == 16  # the KV cache: keys + values
    assert "edge x1 <- x2" in str(plan)


def test_errors() -> None:
    x = torch.randn(2, 5, 12, dtype=F64)
    with pytest.raises(PolyAttentionError, match="cannot decode incrementally with a cache: without causality"):
        _layer("x1*x2", causal=False)(x, cache=DecodeCache())
    with pytest.raises(PolyAttentionError, match="not a tree polynomial"):
        _layer("x1*x2 + x2*x3 + x1*x3", causal="prefix")(x, cache=DecodeCache())
    layer = _layer("x1*x2 + x2*x3")
    with pytest.raises(PolyAttentionError, match="cannot be combined with contexts= or mask="):
        layer(x, cache=DecodeCache(), contexts={2: x})
    with pytest.raises(PolyAttentionError, match=r"token_mask must be a bool tensor \[batch=2, new tokens=5\]"):
        layer(x, cache=DecodeCache(), token_mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(MethodError, match="method='reference', which it does not reproduce"):
        _layer("x1*x2 + x2*x3", method="reference")(x, cache=DecodeCache())
    cache = DecodeCache()
    with torch.no_grad():
        layer(x, cache=cache)
        with pytest.raises(PolyAttentionError, match="filled by a different layer"):
            _layer("x1*x2")(x[:, :1], cache=cache)
        with pytest.raises(PolyAttentionError, match="batch size 1 does not match the cache's 2"):
            layer(x[:1, :1], cache=cache)
        assert len(cache) == 5  # failed calls leave the cache as it was
    with pytest.raises(PolyAttentionError, match="cache must be a polyattn.DecodeCache"):
        layer(x, cache={})  # type: ignore[arg-type]


def _model(**kw) -> PolyTransformer:
    torch.manual_seed(10)
    kw.setdefault("polynomial", "x1*x2 + x2*x3")
    return PolyTransformer(13, 13, dim=16, depth=2, heads=2, causal="tree", max_len=40, readout="all", **kw).double().eval()


@pytest.mark.parametrize("poly", ["x1*x2", "x1*x2 + x2*x3", "x1*x2 + x2*x3 + x2*x4 + x1*x5"])
def test_generate_with_cache_equals_full_forward(poly: str) -> None:
    model = _model(polynomial=poly)
    tok = torch.randint(0, 13, (3, 7), generator=torch.Generator().manual_seed(11))
    seq, lg = model.generate(tok, 9, return_logits=True)
    seq2, lg2 = model.generate(tok, 9, use_cache=False, return_logits=True)
    assert torch.equal(seq, seq2) and seq.shape == (3, 16)
    torch.testing.assert_close(lg, lg2, **TOL)
    with torch.no_grad():
        full = model(seq[:, :-1])  # readout "all": logits of every position
    torch.testing.assert_close(lg, full[:, 6:], **TOL)
    assert torch.equal(seq[:, 7:], full[:, 6:].argmax(-1))


@pytest.mark.parametrize("side", ["left", "right"])
def test_generate_padded_batch_equals_each_prompt_alone(side: str) -> None:
    model = _model()
    g = torch.Generator().manual_seed(12)
    prompts = [torch.randint(0, 13, (L,), generator=g) for L in (6, 3, 5)]
    n = 6
    tok = torch.zeros(3, n, dtype=torch.long)
    tm = torch.zeros(3, n, dtype=torch.bool)
    for i, p in enumerate(prompts):
        sl = slice(n - len(p), n) if side == "left" else slice(0, len(p))
        tok[i, sl], tm[i, sl] = p, True
    for use_cache in (True, False):
        seq, lg = model.generate(tok, 5, token_mask=tm, use_cache=use_cache, return_logits=True)
        for i, p in enumerate(prompts):
            alone, lga = model.generate(p[None], 5, return_logits=True)
            assert torch.equal(seq[i, n:], alone[0, len(p):])
            torch.testing.assert_close(lg[i], lga[0], **TOL)


def test_generate_sampling_and_errors() -> None:
    model = _model()
    tok = torch.randint(0, 13, (2, 4), generator=torch.Generator().manual_seed(13))
    a = model.generate(tok, 6, temperature=0.8, generator=torch.Generator().manual_seed(0))
    b = model.generate(tok, 6, temperature=0.8, generator=torch.Generator().manual_seed(0), use_cache=False)
    assert torch.equal(a, b)
    assert torch.equal(model.generate(tok, 0), tok)
    with pytest.raises(PolyAttentionError, match="beyond max_len=40"):
        model.generate(tok, 40)
    nc = PolyTransformer(13, 13, dim=16, heads=2, polynomial="x1*x2 + x2*x3", causal="prefix")
    with pytest.raises(PolyAttentionError, match="couples with all earlier tuples"):
        nc.generate(tok, 2)
    assert nc.generate(tok, 2, use_cache=False).shape == (2, 6)
    with pytest.raises(PolyAttentionError, match=r"num_classes \(5\) must equal the vocabulary size \(13\)"):
        PolyTransformer(13, 5, dim=16, causal="tree").generate(tok, 1)
    with pytest.raises(PolyAttentionError, match="single-channel tokens"):
        PolyTransformer([13, 4], 13, dim=16, causal="tree").generate(tok, 1)
    with pytest.raises(PolyAttentionError, match="at least one real token"):
        model.generate(tok, 1, token_mask=torch.tensor([[True] * 4, [False] * 4]))


def test_causal_self_attention_plans_sdpa_is_causal() -> None:
    """x1*x2 under causality runs SDPA's fused is_causal (no n x n mask) unless a pair mask is given."""
    q = torch.randn(2, 6, 4, dtype=F64)
    pl = polyattn.plan_for("x1*x2", [q, q], [q], causal="tree")
    assert pl.detail.is_causal and not pl.detail.masked
    m = {(1, 2): torch.rand(6, 6, generator=torch.Generator().manual_seed(0)) > 0.2}
    pm = polyattn.plan_for("x1*x2", [q, q], [q], causal=True, mask=m)
    assert pm.detail.masked and not pm.detail.is_causal
    for mask in (None, m):
        out = polyattn.poly_attention("x1*x2", [q, q], [q], causal=True, mask=mask)
        ref = polyattn.poly_attention("x1*x2", [q, q], [q], causal=True, mask=mask, method="reference")
        torch.testing.assert_close(out, ref, **TOL)


@settings(max_examples=8)
@given(
    parents=st.lists(st.integers(0, 100), min_size=1, max_size=5),
    edges_off=st.lists(st.booleans(), min_size=5, max_size=5),
    valueless=st.lists(st.booleans(), min_size=6, max_size=6),
    prefill=st.integers(0, 6),
    pad=st.lists(st.integers(0, 3), min_size=2, max_size=2),
    seed=st.integers(0, 2**16),
)
def test_random_forests_decode_like_the_full_forward(parents, edges_off, valueless, prefill, pad, seed) -> None:
    """Random forests (some parent links dropped: other components hang under x1 by zero edges;
    a variable may be in no monomial), random value-less variables, prefill and left padding."""
    t = len(parents) + 1
    monos = [(v, p % (v - 1) + 1) for v, p in zip(range(2, t + 1), parents) if not edges_off[v - 2]]
    monos = [(min(a, b), max(a, b)) for a, b in monos] or [(1, 2)]
    p = polyattn.AttentionPolynomial(monos, num_variables=t)
    vl = [j for j in range(2, t + 1) if valueless[j - 2]][: t - 2]
    torch.manual_seed(seed)
    layer = PolyAttention(8, p, heads=2, causal="tree", valueless=vl).double()
    n = 8
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, n, 8, dtype=F64, generator=g)
    valid = torch.ones(2, n, dtype=torch.bool)
    for b, k in enumerate(pad):
        valid[b, :k] = False
    full = layer(x, mask=_pad_mask_dict(p, valid))
    with torch.no_grad():
        inc = _decode(layer, x, min(prefill, n), token_mask=valid)
    torch.testing.assert_close(inc, full.detach(), **TOL)


def test_generate_refuses_numeric_embeddings_and_multichannel_tokens():
    tokens = torch.randint(0, 7, (2, 5))
    numeric = PolyTransformer(7, 7, dim=8, polynomial="x1*x2 + x2*x3", causal="tree", embedding="numeric")
    with pytest.raises(PolyAttentionError, match="generate needs embedding='lookup'.*'numeric'"):
        numeric.generate(tokens, 2)
    multi = PolyTransformer([7, 3], 7, dim=8, polynomial="x1*x2 + x2*x3", causal="tree")
    with pytest.raises(PolyAttentionError, match="single-channel tokens .*embeds 2 feature channels"):
        multi.generate(tokens, 2)
