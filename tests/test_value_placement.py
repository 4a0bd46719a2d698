"""value_placement='root': the authors' convention, against a float64 oracle of its formula.

The oracle enumerates every tuple in float64 and multiplies each value either at its own position
(the paper) or at the query position (root placement). The oracle is itself checked against a
re-implementation (written here, not imported) of the forward of the authors' released code,
``kozmath/tree_attention``: ``TreeAttention_Simple`` (src/tree_simple.py: per-edge scale
1/(2 sqrt(d)), logits clamped to +-20) and ``TreeAttention_General`` (src/tree_general.py: per-edge
scale 1/sqrt(d), clamp +-20, recursion over a children list).
"""

from __future__ import annotations

import math

import pytest
import torch

import polyattn
from polyattn import PolyAttentionError
from polyattn.nn import PolyAttention, PolyTransformer
from polyattn.planning.placement import root_placed_variables

F64 = torch.float64


def oracle(monomials, q, v, *, scale, place=(), causal=None, mask=None):
    """Brute force over all tuples. ``place``: root-placed variables (1-based); ``causal``:
    ``{child: parent}`` constraints ``l_child <= l_parent``; ``mask``: ``{(a, b): bool[n_a, n_b]}``."""
    t = len(q)
    ns = [x.shape[-2] for x in q]
    logits = torch.zeros(ns, dtype=F64)
    for mono in monomials:
        # sum_c prod_a Q_a[l_a, c], broadcast over the whole tuple grid
        term = torch.ones([*ns, q[0].shape[-1]], dtype=F64)
        for a in mono:
            shape = [1] * t + [q[0].shape[-1]]
            shape[a - 1] = ns[a - 1]
            term = term * q[a - 1].reshape(shape)
        logits = logits + term.sum(-1)
    logits = logits * scale
    allowed = torch.ones(ns, dtype=torch.bool)
    for c, u in (causal or {}).items():
        shape = [1] * t
        shape[u - 1], shape[c - 1] = ns[u - 1], ns[c - 1]
        tri = torch.ones(ns[u - 1], ns[c - 1], dtype=torch.bool).tril()  # l_c <= l_u
        allowed = allowed & (tri if u < c else tri.T).reshape(shape)
    for (a, b), m in (mask or {}).items():
        shape = [1] * t
        shape[a - 1], shape[b - 1] = ns[a - 1], ns[b - 1]
        allowed = allowed & (m if a < b else m.T).reshape(shape)
    logits = logits.masked_fill(~allowed, -math.inf)
    flat = logits.reshape(ns[0], -1)
    w = torch.softmax(flat, -1).nan_to_num(0.0).reshape(ns)
    dv = next(x.shape[-1] for x in v if x is not None)
    prod = torch.ones([*ns, dv], dtype=F64)
    for j in range(2, t + 1):
        vj = v[j - 2]
        if vj is None:
            continue
        shape = [1] * t + [dv]
        if j in place:
            shape[0] = ns[0]  # read at the query position l1
        else:
            shape[j - 1] = ns[j - 1]
        prod = prod * vj.reshape(shape)
    out = (w.unsqueeze(-1) * prod).reshape(ns[0], -1, dv).sum(1)
    return out


# -- the authors' forward, re-implemented from their code (no import of their repository) -------------


def authors_simple(q1, q2, q3, v2, v3, d_h):
    """tree_simple.py TreeAttention_Simple (mask=None, eval mode: dropout is the identity)."""
    s12 = (q1 @ q2.transpose(-2, -1) / (2 * math.sqrt(d_h))).clamp(max=20, min=-20)
    s23 = (q2 @ q3.transpose(-2, -1) / (2 * math.sqrt(d_h))).clamp(max=20, min=-20)
    e12, e23 = torch.exp(s12), torch.exp(s23)
    r = torch.max(e12 @ e23.sum(-1, keepdim=True), torch.tensor(1e-9, dtype=e12.dtype))
    e23v3 = (e23 @ v3).transpose(-2, -1).unsqueeze(-1)  # [.., d, n, 1]
    v2t = v2.transpose(-2, -1).unsqueeze(-1)  # [.., d, n, 1]
    p23 = ((e12.unsqueeze(-3) * v2t) @ e23v3).squeeze(-1).transpose(-2, -1)
    return p23 / r


def authors_general(children, qs, vs, d_h, node=0):
    """tree_general.py TreeAttention_General: returns (P [.., d, n, 1], R [.., n, 1])."""
    ps, rs = [], []
    for j in children[node]:
        s = (qs[node] @ qs[j].transpose(-2, -1) / math.sqrt(d_h)).clamp(max=20, min=-20).exp()
        if not children[j]:
            r_i = s.sum(-1, keepdim=True)
            p_i = (s @ vs[j - 1]).transpose(-2, -1).unsqueeze(-1)
        else:
            p_j, r_j = authors_general(children, qs, vs, d_h, j)
            v_j = vs[j - 1].transpose(-2, -1).unsqueeze(-1)
            r_i = s @ r_j
            p_i = (s.unsqueeze(-3) * v_j) @ p_j
        ps.append(p_i)
        rs.append(r_i)
    p, r = torch.ones_like(ps[0]), torch.ones_like(rs[0])
    for p_i, r_i in zip(ps, rs):
        p, r = p * p_i, r * r_i
    return p, r


def _rand(n, d, *, t, dv=None, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = [scale * torch.randn(n, d, generator=g, dtype=F64) for _ in range(t)]
    v = [torch.randn(n, dv or d, generator=g, dtype=F64) for _ in range(t - 1)]
    return q, v


def test_oracle_matches_the_authors_simple_forward() -> None:
    d = 8
    q, v = _rand(6, d, t=3)
    ours = oracle([(1, 2), (2, 3)], q, v, scale=1 / (2 * math.sqrt(d)), place=(2,))
    theirs = authors_simple(*q, *v, d_h=d)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    # and it is NOT the paper's formula (the value of x2 is read at l1, not l2)
    paper = oracle([(1, 2), (2, 3)], q, v, scale=1 / (2 * math.sqrt(d)))
    assert (paper - theirs).abs().max() > 1e-2


def test_oracle_matches_the_authors_general_forward() -> None:
    """Node i is x(i+1). Children of the root that have children are root-placed; leaves are not."""
    d = 4
    # x1 - x2 - x3 and x1 - x4 - x5 and the leaf x1 - x6 (two internal neighbours of x1)
    children = [[1, 3, 5], [2], [], [4], [], []]
    monos = [(1, 2), (2, 3), (1, 4), (4, 5), (1, 6)]
    q, v = _rand(5, d, t=6, seed=1)
    p, r = authors_general(children, q, v, d)
    theirs = p.squeeze(-1).transpose(-2, -1) / r
    place = root_placed_variables(polyattn.parse("x1*x2 + x2*x3 + x1*x4 + x4*x5 + x1*x6"), "root")
    assert place == (2, 4)
    ours = oracle(monos, q, v, scale=1 / math.sqrt(d), place=place)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


def test_authors_logits_are_clipped_at_20() -> None:
    """Their clamp changes the function once a scaled logit exceeds 20; polyattn stays exact."""
    d = 4
    q, v = _rand(5, d, t=3, scale=6.0, seed=2)
    s = 1 / (2 * math.sqrt(d))
    assert (q[0] @ q[1].T * s).abs().max() > 20
    exact = oracle([(1, 2), (2, 3)], q, v, scale=s, place=(2,))
    ours = polyattn.poly_attention("x1*x2 + x2*x3", q, v, scale=s, value_placement="root")
    torch.testing.assert_close(ours, exact, rtol=1e-10, atol=1e-10)
    theirs = authors_simple(*q, *v, d_h=d)
    assert (theirs - exact).abs().max() > 1e-3


@pytest.mark.parametrize("method", ["auto", "tree", "elimination", "reference"])
@pytest.mark.parametrize("causal", [False, "tree"])
def test_root_placement_equals_oracle_path(method: str, causal) -> None:
    q, v = _rand(7, 5, t=3, dv=3, seed=3)
    q = [x.expand(2, 7, 5) for x in q]
    out = polyattn.poly_attention("x1*x2 + x2*x3", q, v, value_placement="root", method=method, causal=causal)
    ref = oracle([(1, 2), (2, 3)], [x[0] for x in q], v, scale=1 / math.sqrt(5), place=(2,),
                 causal={2: 1, 3: 2} if causal else None)
    assert out.shape == (2, 7, 3)
    torch.testing.assert_close(out[0], ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out[1], ref, rtol=1e-10, atol=1e-10)


def test_mapping_placement_on_a_cycle_with_mask_and_gradients() -> None:
    """Any polynomial: Strassen with x3 root-placed and a pair mask; gradients match the oracle's."""
    n, d = 5, 3
    q, v = _rand(n, d, t=3, seed=4)
    mask = {(1, 3): torch.rand(n, n, generator=torch.Generator().manual_seed(0)) > 0.3}
    mask[(1, 3)][0] = False  # query row 0 has no admissible tuple: zeros
    leaves = [x.clone().requires_grad_() for x in q + v]
    out = polyattn.poly_attention("x1*x2 + x2*x3 + x1*x3", leaves[:3], leaves[3:], mask=mask,
                                  value_placement={3: "root", 2: "own"})
    leaves2 = [x.clone().requires_grad_() for x in q + v]
    ref = oracle([(1, 2), (2, 3), (1, 3)], leaves2[:3], leaves2[3:], scale=1 / math.sqrt(d), place=(3,), mask=mask)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    assert out[0].abs().max() == 0
    g = torch.randn_like(out)
    gs = torch.autograd.grad(out, leaves, g)
    gr = torch.autograd.grad(ref, leaves2, g)
    for a, b in zip(gs, gr):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_root_placement_float32_and_valueless_rest() -> None:
    q, v = _rand(6, 4, t=3, seed=5)
    out = polyattn.poly_attention("x1*x2 + x2*x3", [x.float() for x in q], [v[0].float(), None],
                                  value_placement="root")
    assert out.dtype == torch.float32 and out.shape == (6, 4)
    ref = v[0] * 1.0  # x3 value-less, x2 at the query: every weight sums to 1
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


def test_placement_errors() -> None:
    q, v = _rand(4, 3, t=3)
    f = polyattn.poly_attention
    with pytest.raises(PolyAttentionError, match="value_placement must be 'own'"):
        f("x1*x2 + x2*x3", q, v, value_placement="middle")
    with pytest.raises(PolyAttentionError, match=r"value_placement key 1: expected a non-query variable 2\.\.3"):
        f("x1*x2 + x2*x3", q, v, value_placement={1: "root"})
    with pytest.raises(PolyAttentionError, match=r"value_placement\[2\] = 'top': expected 'own' or 'root'"):
        f("x1*x2 + x2*x3", q, v, value_placement={2: "top"})
    with pytest.raises(PolyAttentionError, match="connected tree polynomial rooted at x1"):
        f("x1*x2 + x2*x3 + x1*x3", q, v, value_placement="root")
    q4, v4 = _rand(4, 3, t=4)
    with pytest.raises(PolyAttentionError, match=r"at its parent's position \(x3 \(parent x2\)\)"):
        f("x1*x2 + x2*x3 + x3*x4", q4, v4, value_placement="root")
    with pytest.raises(PolyAttentionError, match="x2 is root-placed but has no value"):
        f("x1*x2 + x2*x3", q, [None, v[1]], value_placement="root")
    q_short = [q[0], q[1][:3], q[2]]
    with pytest.raises(PolyAttentionError, match="range over the query's tokens, but values\\[0\\] has 3 rows"):
        f("x1*x2 + x2*x3", q_short, [v[0][:3], v[1]], value_placement="root")
    with pytest.raises(PolyAttentionError, match="valueless= declares value-less"):
        PolyAttention(8, "x1*x2 + x2*x3", heads=2, valueless=[2], value_placement="root")
    from polyattn.train.config import ConfigError, config_from_dict
    with pytest.raises(ConfigError, match="value_placement must be 'own' or 'root'"):
        config_from_dict({"mechanisms": [{"name": "a", "value_placement": "leaf"}]})


def test_star_and_single_edge_have_nothing_to_move() -> None:
    for poly in ("x1*x2", "x1*x2 + x1*x3"):
        assert root_placed_variables(polyattn.parse(poly), "root") == ()
    assert root_placed_variables(polyattn.parse("x1*x2 + x2*x3"), "own") == ()


def test_layer_root_placement_is_the_factored_formula() -> None:
    torch.manual_seed(0)
    layer = PolyAttention(12, "x1*x2 + x2*x3", heads=3, value_placement="root", causal="tree").double()
    x = torch.randn(2, 6, 12, dtype=F64)
    b, n, h, dh = 2, 6, 3, 4

    def split(y):
        return y.view(b, n, h, dh).transpose(1, 2)

    qs = [split(lin(x)) for lin in layer.to_q]
    v2, v3 = (split(lin(x)) for lin in layer.to_v)
    core = polyattn.poly_attention("x1*x2 + x2*x3", qs, [None, v3], causal="tree", method="reference")
    want = layer.to_out((v2 * core).transpose(1, 2).reshape(b, n, h * dh))
    torch.testing.assert_close(layer(x), want, rtol=1e-10, atol=1e-10)
    assert "value_placement='root'" in repr(layer)


def test_transformer_last_row_readout_with_root_placement() -> None:
    torch.manual_seed(0)
    kw = dict(dim=16, heads=2, polynomial="x1*x2 + x2*x3", value_placement="root")
    last = PolyTransformer([7, 5], 7, **kw).double()
    full = PolyTransformer([7, 5], 7, readout="all", **kw).double()
    full.load_state_dict(last.state_dict())
    tok = torch.randint(0, 5, (3, 9, 2))
    torch.testing.assert_close(last(tok), full(tok)[:, -1], rtol=1e-10, atol=1e-10)
