"""The approx tree kernel's top-degree split products (planning/approx_split.py, ops/approx_split.py).

The split is an exact rewrite of the materialised products (same sums, other order): it is tested
against :class:`DenseProducts` operation by operation, end to end on random tree problems (views,
broadcast batch dims, causal="tree", forward and backward) and against the exact methods.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from strategies import poly_problems

import polyattn
import polyattn.planning.approx_split as split_mod
from polyattn.errors import MethodError
from polyattn.ops.approx_features import Features
from polyattn.ops.approx_split import DenseProducts, SplitProducts
from polyattn.planning import ProblemSpec
from polyattn.planning.approx import feature_rank, plan_approx
from polyattn.planning.approx_split import SplitTop, slot_table, split_top

F64 = torch.float64
CASES = [(2, 2), (3, 3), (5, 2), (4, 4), (16, 3)]


def _split(d: int, p: int, rows: int = 64) -> SplitTop:
    return SplitTop(d, p, math.comb(d + p - 1, p - 1), split_mod._segments(d, p), rows)


@pytest.mark.parametrize("d,p", CASES)
def test_slots_cover_every_feature_once(d, p):
    r1, t0, slots = slot_table(d, p)
    r = feature_rank(d, p)
    covered = []
    for a, e, off in slots:
        assert 0 <= a < e <= r1
        covered += list(range(off, off + e - a))
    assert sorted(covered) == list(range(r))
    assert slots[0] == (0, r1, 0) and all(a == t0 for a, _, _ in slots[1:])


@pytest.mark.parametrize("d,p", CASES)
def test_segments_tile_the_low_rows_and_cover_active_slots(d, p):
    sp = _split(d, p)
    r1, t0, slots = slot_table(d, p)
    assert sp.segments[0][0] == 0 and sp.segments[-1][1] == r1
    for (_, b, _), (a2, _, _) in zip(sp.segments, sp.segments[1:]):
        assert b == a2
    for a, b, k in sp.segments:
        # every slot whose rows meet [a, b) is among the first k (the kernel multiplies only those)
        need = [s for s, (lo, hi, _) in enumerate(slots) if lo < b and hi > a]
        assert need and max(need) < k
    assert sp.padding() >= 1.0
    if feature_rank(d, p) >= split_mod.SPLIT_MIN_RANK:  # where the planner uses it, little zero padding
        assert sp.padding() < 1.25


def test_split_is_planned_only_where_it_pays():
    spec = ProblemSpec.build("x1*x2 + x2*x3", seq_len=65536, head_dim=16, value_dim=8)
    assert split_top(spec, feature_rank(16, 3), 3, 2**30) is None  # rank 969 < SPLIT_MIN_RANK
    sp = split_top(spec, feature_rank(16, 5), 5, 2**30)
    assert sp is not None and sp.low_rank == 4845 and sp.slots == 17
    plan = plan_approx(spec, entry_bound=0.1, degree=5, allow_slower=True)
    assert plan.split == sp
    text = str(plan)
    assert "top degree split: features built to degree 4 (rank 4,845)" in text
    assert f"row chunks of {sp.rows}" in text
    small = split_top(spec, feature_rank(16, 5), 5, 2**20)  # a tight budget shrinks the chunks
    assert small is not None and small.rows < sp.rows
    causal = ProblemSpec.build("x1*x2 + x2*x3", seq_len=4096, head_dim=16, value_dim=8, causal="tree")
    assert plan_approx(causal, entry_bound=0.1, degree=5, allow_slower=True).split is None  # all edges causal


def _ops(d, p, batch_a, batch_q, rows, grad):
    g = torch.Generator().manual_seed(d * 10 + p)
    z = 3
    sp = _split(d, p, rows)
    split = SplitProducts(sp, 1.0, z, torch.device("cpu"), F64)
    dense = DenseProducts(Features(d, p, 1.0, torch.device("cpu"), F64))
    qt = (torch.rand(*batch_q, d, rows, generator=g, dtype=F64) - 0.5).requires_grad_(grad)
    a = torch.randn(*batch_a, z, feature_rank(d, p), generator=g, dtype=F64).requires_grad_(grad)
    m = torch.randn(*batch_a, z, rows, generator=g, dtype=F64).requires_grad_(grad)
    return split, dense, qt, a, m


@pytest.mark.parametrize("d,p", CASES)
@pytest.mark.parametrize("batch_a,batch_q", [((), ()), ((2,), (2,)), ((2, 1), (3,))])
def test_split_products_equal_materialised(d, p, batch_a, batch_q):
    split, dense, qt, a, m = _ops(d, p, batch_a, batch_q, rows=37, grad=False)
    with torch.no_grad():
        ch_s, ch_d = split.chunk(qt), dense.chunk(qt)
        ch_d = ch_d.clone()  # reused buffer: keep this chunk's copy
        torch.testing.assert_close(split.finish(split.prepare(a)), a, rtol=0, atol=0)
        torch.testing.assert_close(split.apply(split.prepare(a), ch_s), dense.apply(a, ch_d), rtol=1e-12, atol=1e-12)
        got = split.finish(split.summarize(m, ch_s, None))
        torch.testing.assert_close(got, dense.summarize(m, ch_d, None), rtol=1e-12, atol=1e-12)
        acc = split.summarize(m, ch_s, None)
        acc = split.summarize(2 * m, ch_s, acc)  # accumulates in place
        torch.testing.assert_close(split.finish(acc), 3 * dense.summarize(m, ch_d, None), rtol=1e-12, atol=1e-11)


@pytest.mark.parametrize("d,p", [(3, 3), (4, 2)])
def test_split_products_gradients(d, p):
    def run(prods, qt, a, m):
        ch = prods.chunk(qt)
        e = prods.apply(prods.prepare(a), ch)
        s = prods.finish(prods.summarize(m * e[..., :1, :], ch, None))
        return (e * torch.linspace(0, 1, e.shape[-1], dtype=F64)).sum() + (s**2).sum()

    split, dense, qt, a, m = _ops(d, p, (2,), (2,), rows=11, grad=True)
    gs = torch.autograd.grad(run(split, qt, a, m), (qt, a, m))
    gd = torch.autograd.grad(run(dense, qt, a, m), (qt, a, m))
    for x, y in zip(gs, gd):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-10)
    torch.autograd.gradcheck(lambda q_, a_, m_: run(split, q_, a_, m_), (qt, a, m))


def _approx(p, q, v, kw, degree, min_rank):
    old = split_mod.SPLIT_MIN_RANK
    split_mod.SPLIT_MIN_RANK = min_rank
    try:
        plan = polyattn.plan_for(p, q, v, method="approx", degree=degree, allow_slower=True, **kw)
        out = polyattn.poly_attention(p, q, v, method="approx", degree=degree, allow_slower=True, **kw)
    finally:
        split_mod.SPLIT_MIN_RANK = old
    return plan, out


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prob=poly_problems(max_degree=2, max_len=6), degree=st.integers(2, 4))
def test_split_equals_materialised_on_random_tree_problems(prob, degree):
    """Random forests of pairs (views, broadcast batch dims, unequal lengths, causal modes, value-less
    variables): the split kernel and the materialised one give the same outputs and gradients."""
    p, queries, values, kw, view = prob
    assume(not kw["mask"])
    kw = {k: w for k, w in kw.items() if k != "mask"}
    qs = [(0.3 * x).requires_grad_() for x in queries]
    vs = [None if x is None else x.clone().requires_grad_() for x in values]
    leaves = [x for x in qs + vs if x is not None]
    try:
        plan_s, out_s = _approx(p, *view(qs, vs), kw, degree, 0)
    except MethodError:
        assume(False)
    plan_d, out_d = _approx(p, *view(qs, vs), kw, degree, 10**12)
    assert plan_d.split is None
    torch.testing.assert_close(out_s, out_d, rtol=1e-9, atol=1e-11)
    w = torch.randn(out_s.shape, dtype=F64, generator=torch.Generator().manual_seed(1))
    gs = torch.autograd.grad((out_s * w).sum(), leaves, allow_unused=True)
    gd = torch.autograd.grad((out_d * w).sum(), leaves, allow_unused=True)
    for x, y in zip(gs, gd):
        if x is None or y is None:
            assert x is None and y is None or (x if x is not None else y).abs().max() == 0
            continue
        torch.testing.assert_close(x, y, rtol=1e-8, atol=1e-10)


def test_split_against_exact_with_views_and_nan():
    """d = 16, degree 4 (rank 4845: the split is the planner's own choice), transposed and sliced
    views, float32; then the NaN rule: a NaN query row spoils only its row, a NaN leaf key its batch."""
    g = torch.Generator().manual_seed(3)
    n, d = 200, 16
    base = [(torch.rand(2, d, n, generator=g) - 0.5) * 0.5 for _ in range(3)]
    q = [x.transpose(-1, -2) for x in base]
    v = [torch.randn(2, n, 6, generator=g)[..., ::2] for _ in range(2)]
    kw = dict(method="approx", degree=4, allow_slower=True)
    plan = polyattn.plan_for("x1*x2 + x2*x3", q, v, **kw)
    assert plan.split is not None
    out = polyattn.poly_attention("x1*x2 + x2*x3", q, v, **kw)
    exact = polyattn.poly_attention("x1*x2 + x2*x3", [x.double() for x in q], [x.double() for x in v])
    assert (out.double() - exact).abs().max() <= plan.error_bound + 1e-5
    q = [x.contiguous() for x in q]
    q[0][1, 7, 0] = float("nan")
    out = polyattn.poly_attention("x1*x2 + x2*x3", q, v, **kw)
    assert out[1, 7].isnan().all() and torch.isfinite(out[1, :7]).all() and torch.isfinite(out[0]).all()
    q[2][0, 5, 1] = float("nan")
    out = polyattn.poly_attention("x1*x2 + x2*x3", q, v, **kw)
    assert out[0].isnan().all() and torch.isfinite(out[1, :7]).all()


def test_gemm_operands_get_aligned_non_power_of_two_strides():
    from polyattn.ops.approx_features import aligned_empty, padded_stride

    assert [padded_stride(n) for n in (1, 15, 16, 240, 512, 561, 969, 1024)] == [32, 32, 32, 240, 528, 576, 976, 1040]
    x = aligned_empty(2, 3, 969, dtype=torch.float32, device=torch.device("cpu"), zero=True)
    assert x.shape == (2, 3, 969) and x.stride() == (3 * 976, 976, 1) and not x.any()
    sp = SplitProducts(SplitTop(16, 4, 969, split_mod._segments(16, 4), 64), 1.0, 9, torch.device("cpu"),
                       torch.float32)
    prepared = sp.prepare(torch.randn(9, feature_rank(16, 4)))
    assert prepared.stride(-2) == 976
    torch.testing.assert_close(sp.finish(prepared), sp.finish(prepared.contiguous()))
