"""Fused tree-edge kernel (ops/flash.py, ops/edge.py): gradients, masks, causality, dtypes, memory."""

from __future__ import annotations

import pytest
import torch

import polyattn
from polyattn.ops import edge as edge_mod
from polyattn.ops.edge import edge_attention
from polyattn.ops.flash import BIAS_FLOOR, flash_edge
from polyattn.planning import EdgeCausal, EdgeImpl, EdgePlan

F64 = torch.float64


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rand(*shape, seed=0, dtype=F64, scale=1.0, grad=True):
    x = scale * torch.randn(*shape, generator=_g(seed), dtype=dtype)
    return x.requires_grad_(grad)


@pytest.fixture
def fused_only(monkeypatch):
    """Fail loudly if the tree kernel takes the materialised edge path."""

    def boom(*a, **k):
        raise AssertionError("materialised edge path used")

    monkeypatch.setattr(edge_mod, "_materialised_edge", boom)


# --------------------------------------------------------------------------- the autograd Function
@pytest.mark.parametrize(
    "d,dv,with_bias,causal,with_mask,with_v",
    [
        (3, 2, True, False, False, True),
        (3, 3, True, True, False, True),  # dv == d: backward widens by one column
        (2, 5, True, False, True, True),  # dv > d + 1: q, k padded
        (3, 4, False, False, False, True),  # dv == d + 1 without bias: no spare column
        (3, 1, True, True, True, False),  # value-less: only lse
        # bias without a pair mask: the forward passes it as a broadcast additive mask
        (2, 5, True, False, False, True),  # dv > d: q, k padded, augmented only in the backward
        (3, 1, True, False, False, False),  # value-less, bias as mask
    ],
)
def test_flash_edge_gradcheck(d, dv, with_bias, causal, with_mask, with_v):
    B, Lq, Lk = 2, 4, 5
    q, k = _rand(B, 1, Lq, d, seed=1), _rand(B, 1, Lk, d, seed=2)
    v = _rand(B, 1, Lk, dv, seed=3) if with_v else None
    bias = _rand(B, 1, Lk, seed=4) if with_bias else None
    mask = None
    if with_mask:
        keep = torch.rand(Lq, Lk, generator=_g(5)) < 0.7
        keep[:, 0] = True
        mask = torch.zeros(Lq, Lk, dtype=F64).masked_fill(~keep, float("-inf"))

    def fn(q, k, *rest):
        it = iter(rest)
        vv = next(it) if with_v else None
        bb = next(it) if with_bias else None
        out, lse = flash_edge(q, k, vv, bb, attn_mask=mask, is_causal=causal, scale=0.7)
        return (out, lse) if out is not None else lse

    args = [q, k] + ([v] if with_v else []) + ([bias] if with_bias else [])
    assert torch.autograd.gradcheck(fn, args)
    if with_v:  # lse unused: the backward takes its g_lse=None branch
        assert torch.autograd.gradcheck(lambda *a: fn(*a)[0], args)


def test_flash_edge_broadcast_bias_matches_dense():
    """A bias broadcast over the batch (stride 0) as the forward's additive mask: values and grads."""
    q, k, v = _rand(3, 1, 4, 2, seed=1), _rand(3, 1, 5, 2, seed=2), _rand(3, 1, 5, 2, seed=3)
    b0 = _rand(1, 1, 5, seed=4)
    out, lse = flash_edge(q, k, v, b0.expand(3, 1, 5), attn_mask=None, is_causal=False, scale=0.5)
    (out.sum() + 2 * lse.sum()).backward()
    grads = [t.grad.clone() for t in (q, k, v, b0)]
    for t in (q, k, v, b0):
        t.grad = None
    S = 0.5 * q @ k.transpose(-1, -2) + b0.unsqueeze(-2)
    ref_out, ref_lse = torch.softmax(S, -1) @ v, torch.logsumexp(S, -1)
    assert torch.allclose(out, ref_out) and torch.allclose(lse, ref_lse)
    (ref_out.sum() + 2 * ref_lse.sum()).backward()
    for got, t in zip(grads, (q, k, v, b0)):
        assert torch.allclose(got, t.grad)


def test_flash_edge_floor_bias_is_exact_zero_weight():
    q, k, v = _rand(1, 1, 3, 2, seed=1), _rand(1, 1, 4, 2, seed=2), _rand(1, 1, 4, 2, seed=3)
    bias = torch.tensor([[[0.3, BIAS_FLOOR, -0.2, BIAS_FLOOR]]], dtype=F64, requires_grad=True)
    out, lse = flash_edge(q, k, v, bias, attn_mask=None, is_causal=False, scale=1.0)
    S = q @ k.transpose(-1, -2) + bias.unsqueeze(-2)
    keep = torch.tensor([True, False, True, False])
    ref_lse = torch.logsumexp(S[..., keep], -1)
    ref_out = torch.softmax(S[..., keep], -1) @ v[..., keep, :]
    assert torch.allclose(lse, ref_lse) and torch.allclose(out, ref_out)
    (out.sum() + lse.sum()).backward()
    assert torch.isfinite(q.grad).all() and torch.isfinite(k.grad).all()
    assert bias.grad[0, 0, 1] == 0 and bias.grad[0, 0, 3] == 0


# ---------------------------------------------------------------------- one edge, every variant
def _edge_plans(causal, masked, nu, nc):
    """The flash and the materialised EdgePlan of one edge (causal handling as the planner picks it)."""
    if causal is None:
        via = EdgeCausal.NONE
    elif not masked and causal == "child<=parent":
        via = EdgeCausal.KERNEL
    elif not masked and nu == nc:
        via = EdgeCausal.FLIPPED
    else:
        via = EdgeCausal.MASK
    flash = EdgePlan(1, 2, True, True, masked, causal, EdgeImpl.FLASH, via)
    dense = EdgePlan(1, 2, True, True, masked, causal, EdgeImpl.MATERIALISED,
                     EdgeCausal.MASK if causal else EdgeCausal.NONE, row_chunk=max(1, nu // 2))
    return flash, dense


@pytest.mark.parametrize("causal", [None, "child<=parent", "parent<=child"])
@pytest.mark.parametrize("lens", [(5, 5), (4, 6), (6, 3)])
@pytest.mark.parametrize("masked", [False, True])
def test_fused_edge_matches_materialised(causal, lens, masked):
    nu, nc = lens
    q_u, q_c = _rand(2, nu, 3, seed=1), _rand(3, 2, nc, 3, seed=2)  # broadcast batch dims
    v_c = _rand(1, nc, 2, seed=3)
    bias = _rand(3, 1, nc, seed=4).detach()
    bias[0, 0, : nc // 2] = float("-inf")  # child rows without mass
    bias[1, 0, :] = float("-inf")  # a whole batch entry without mass
    bias.requires_grad_(True)
    mask = (torch.rand(nu, nc, generator=_g(7)) < 0.6) if masked else None
    if masked:
        mask[0] = False  # a fully masked parent row
    kw = dict(q_u=q_u, q_c=q_c, v_c=v_c, bias_c=bias, mask=mask, scale=0.8, n_parent=nu)
    flash, dense = _edge_plans(causal, masked, nu, nc)
    out, lse = edge_attention(flash, **kw)
    r_out, r_lse = edge_attention(dense, **kw)
    assert torch.equal(torch.isinf(lse), torch.isinf(r_lse))
    fin = torch.isfinite(r_lse)
    assert torch.allclose(lse[fin], r_lse[fin], atol=1e-12)
    assert torch.allclose(out, r_out, atol=1e-12) and not out.isnan().any()
    w1, w2 = torch.randn(out.shape, dtype=F64, generator=_g(9)), torch.randn(lse.shape, dtype=F64, generator=_g(10))
    ins = (q_u, q_c, v_c, bias)

    def loss(o, lse_):
        return (o * w1).sum() + (torch.where(torch.isfinite(lse_), lse_, torch.zeros_like(lse_)) * w2).sum()

    g = torch.autograd.grad(loss(out, lse), ins)
    rg = torch.autograd.grad(loss(r_out, r_lse), ins)
    for a, b in zip(g, rg):
        assert torch.isfinite(a).all()
        assert torch.allclose(a, b, atol=1e-10)


# ------------------------------------------------------------------------ whole trees vs reference
TREES = [
    ("x1*x2 + x2*x3", [True, True]),
    ("x1*x2 + x2*x3 + x2*x4 + x1*x5", [True, False, True, True]),  # branching, a value-less leaf
    ("x1*x3 + x3*x2", [False, True]),  # value-less inner node
]


def _tree_inputs(spec, has_v, n=6, d=4, dv=3, seed=0, dtype=F64):
    t = polyattn.parse(spec).num_variables
    qs = [_rand(2, n, d, seed=seed + j, dtype=dtype, scale=1.5) for j in range(t)]
    vs = [(_rand(2, n, dv, seed=100 + j, dtype=dtype) if h else None) for j, h in enumerate(has_v)]
    return qs, vs


def _check_vs_reference(spec, qs, vs, atol=1e-10, method="tree", **kw):
    leaves = qs + [v for v in vs if v is not None]
    out = polyattn.poly_attention(spec, qs, vs, method=method, **kw)
    ref = polyattn.poly_attention(spec, qs, vs, method="reference", **kw)
    assert not out.isnan().any()
    assert torch.allclose(out.double(), ref, atol=atol), (out.double() - ref).abs().max()
    w = torch.randn(ref.shape, dtype=F64, generator=_g(3))
    g = torch.autograd.grad((out.double() * w).sum(), leaves, allow_unused=True)
    rg = torch.autograd.grad((ref * w).sum(), leaves, allow_unused=True)
    for a, b in zip(g, rg):
        a = torch.zeros_like(b) if a is None else a
        b = torch.zeros_like(a) if b is None else b
        assert torch.isfinite(a).all()
        assert torch.allclose(a.double(), b.double(), atol=atol * 10), (a.double() - b.double()).abs().max()


@pytest.mark.parametrize("spec,has_v", TREES)
@pytest.mark.parametrize("causal", [False, "tree"])
def test_fused_tree_matches_reference(fused_only, spec, has_v, causal):
    qs, vs = _tree_inputs(spec, has_v)
    _check_vs_reference(spec, qs, vs, causal=causal)


@pytest.mark.parametrize("causal", [False, "tree"])
def test_forest_matches_reference(causal):
    # x3-x4 hangs under x1 by a zero edge (no logits: materialised by design); x3->x4 is fused
    qs, vs = _tree_inputs("x1*x2 + x3*x4", [True, True, True])
    _check_vs_reference("x1*x2 + x3*x4", qs, vs, causal=causal)


def test_fused_tree_masks_and_fully_masked_rows(fused_only):
    spec = "x1*x2 + x2*x3"
    qs, vs = _tree_inputs(spec, [True, True], n=7)
    m12 = torch.rand(7, 7, generator=_g(1)) < 0.6
    m23 = torch.rand(7, 7, generator=_g(2)) < 0.6
    m12[2] = False  # query row 2 sees no x2
    m23[:, 4] = True
    m23[3] = False  # x2 row 3 has no admissible x3: its log-mass is -inf
    m12[5] = False
    m12[5, 3] = True  # query row 5 only reaches x2 row 3 -> empty as well
    _check_vs_reference(spec, qs, vs, mask={(1, 2): m12, (2, 3): m23})
    out = polyattn.poly_attention(spec, qs, vs, method="tree", mask={(1, 2): m12, (2, 3): m23})
    assert (out[:, 2] == 0).all() and (out[:, 5] == 0).all()
    _check_vs_reference(spec, qs, vs, mask={(2, 1): m12.T.contiguous()}, causal="tree")


def test_fused_tree_large_logits_finite(fused_only):
    qs, vs = _tree_inputs("x1*x2 + x2*x3", [True, True], n=8)
    qs = [(q.detach() * 30).requires_grad_(True) for q in qs]  # logits ~ 1e3
    _check_vs_reference("x1*x2 + x2*x3", qs, vs, atol=1e-8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_fused_tree_low_precision_inputs(fused_only, dtype):
    spec = "x1*x2 + x2*x3 + x2*x4"
    qs, vs = _tree_inputs(spec, [True, True, True], n=16, d=8, dv=4, dtype=dtype)
    out = polyattn.poly_attention(spec, qs, vs, method="tree", causal="tree")
    assert out.dtype == dtype
    # reference on the same (rounded) inputs; accumulation is float32 so only output rounding differs
    ref = polyattn.poly_attention(spec, qs, vs, method="reference", causal="tree")
    tol = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}[dtype]
    assert torch.allclose(out.double(), ref.double(), atol=tol), (out.double() - ref.double()).abs().max()
    out.float().sum().backward()
    assert all(torch.isfinite(q.grad.float()).all() for q in qs)


# ---------------------------------------------------------------------------------- O(n d) memory
def _rss_peak_growth(fn) -> int:
    def status(key):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
        raise KeyError(key)

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak-RSS watermark
    base = status("VmRSS:")
    fn()
    return status("VmHWM:") - base


def test_fused_tree_memory_is_linear():
    try:
        open("/proc/self/clear_refs", "w").close()
    except OSError:
        pytest.skip("needs Linux /proc/self/clear_refs to read the peak RSS")
    n, d = 4096, 32
    g = _g(0)
    qs = [torch.randn(1, n, d, generator=g, requires_grad=True) for _ in range(3)]
    vs = [torch.randn(1, n, d, generator=g, requires_grad=True) for _ in range(2)]

    def run():
        out = polyattn.poly_attention("x1*x2 + x2*x3", qs, vs, method="tree", causal="tree")
        out.sum().backward()

    run()  # warm up allocator and plan cache
    grow = _rss_peak_growth(run)
    assert grow < n * n * 4 // 4, f"peak grew by {grow / 2**20:.1f} MB; one n x n float buffer is 64 MB"


# --------------------------------------------------------------- fused cubic kernels (ops/cubic.py)
CUBIC = ["x1*x2 + x1*x3 + x2*x3", "x1*x2*x3"]
KINDS = ["fused-triangle", "fused-triangle-rowwise", "fused-tensor3"]


@pytest.fixture
def dense_limit(monkeypatch):
    """Set the planner's row-wise triangle limit; plans are cached, so clear them around the test."""
    from polyattn.planning import make_plan, plan_cubic

    def set_limit(tuples: int) -> None:
        monkeypatch.setattr(plan_cubic, "DENSE_TRIANGLE_TUPLES", tuples)
        make_plan.cache_clear()

    yield set_limit
    monkeypatch.undo()
    make_plan.cache_clear()


def _cubic_inputs(spec, has_v, lens=(5, 7, 6), d=4, dv=3, seed=0, dtype=F64):
    """Broadcast batch dims: x1 is [3, 2, n, d], the others [2, n, .] and [n, dv]."""
    g = _g(seed)
    qs = [torch.randn(*(2,) if j else (3, 2), lens[j], d, generator=g, dtype=dtype).requires_grad_(True) for j in range(3)]
    vs = [torch.randn(lens[j], dv, generator=g, dtype=dtype).requires_grad_(True) if h else None
          for j, h in zip((1, 2), has_v)]
    return qs, vs


def _check_plan_vs_reference(pl, spec, qs, vs, atol=1e-10):
    leaves = qs + [v for v in vs if v is not None]
    out = polyattn.poly_attention(pl, qs, vs)
    ref = polyattn.poly_attention(spec, qs, vs, method="reference")
    assert torch.allclose(out, ref, atol=atol), (out - ref).abs().max()
    w = torch.randn(ref.shape, dtype=F64, generator=_g(3))
    g = torch.autograd.grad((out * w).sum(), leaves)
    rg = torch.autograd.grad((ref * w).sum(), leaves)
    for a, b in zip(g, rg):
        assert torch.allclose(a, b, atol=atol * 10), (a - b).abs().max()


def _fused_plan(spec, qs, vs, kind, dense_limit, **kw):
    dense_limit(2**24 if kind == "fused-triangle-rowwise" else 0)
    pl = polyattn.plan_for(spec, qs, vs, method="elimination", **kw)
    assert pl.detail.fused is not None and str(pl.detail.fused.kind) == kind, str(pl)
    return pl


def _cubic_cases():
    for kind in KINDS:
        spec = CUBIC[1] if kind == "fused-tensor3" else CUBIC[0]
        for has_v in [(True, True), (False, True), (True, False), (False, False)]:
            yield spec, kind, has_v


def _small_budget(spec, qs, vs, kind, dense_limit):
    """A memory_budget that forces several blocks: the plan's own forward + backward figure for
    2 value columns per GEMM (separable triangle) or blocks of 1 query row x 3 x2 rows (row-wise)."""
    from dataclasses import replace

    from polyattn.planning.plan_cubic import fused_cost

    pl = _fused_plan(spec, qs, vs, kind, dense_limit)
    small = replace(pl.detail.fused, col_chunk=2) if kind == "fused-triangle" else replace(
        pl.detail.fused, row_chunk=1, key_chunk=3)
    return int(fused_cost(pl.spec, small)[1])


@pytest.mark.parametrize("spec,kind,has_v", list(_cubic_cases()))
@pytest.mark.parametrize("chunked", [False, True])
def test_fast_cubic_matches_reference(dense_limit, spec, kind, has_v, chunked):
    """Forward and gradients equal the float64 reference (broadcast batch dims, value-less
    variables); a small memory_budget forces several blocks / column chunks, and the backward runs
    exactly the blocks the plan states."""
    from polyattn.ops import trace

    qs, vs = _cubic_inputs(spec, has_v)
    budget = _small_budget(spec, qs, vs, kind, dense_limit) if chunked else polyattn.planning.DEFAULT_MEMORY_BUDGET
    pl = _fused_plan(spec, qs, vs, kind, dense_limit, memory_budget=budget)
    f = pl.detail.fused
    assert pl.peak_bytes <= budget
    if chunked:
        assert (f.col_chunk <= 2) if kind == "fused-triangle" else (f.row_chunk * f.key_chunk <= 3), str(pl)
    with trace.record() as events:
        _check_plan_vs_reference(pl, spec, qs, vs)
    fwd = [e for e in events if e[1].get("kind") == kind]
    bwd = [e for e in events if e[1].get("kind") == kind + "-backward"]
    assert fwd
    if kind == "fused-triangle":  # the backward's gradient families run over the same column chunks
        assert [e[1]["cols"] for e in bwd] == [e[1]["cols"] for e in fwd]
    else:  # same blocks as the forward
        assert [(e[1]["rows"], e[1]["keys"]) for e in bwd] == [(e[1]["rows"], e[1]["keys"]) for e in fwd]


@pytest.mark.parametrize("spec,kind", [(CUBIC[0], "fused-triangle"), (CUBIC[0], "fused-triangle-rowwise"),
                                       (CUBIC[1], "fused-tensor3")])
def test_fast_cubic_gradcheck(dense_limit, spec, kind):
    qs, vs = _cubic_inputs(spec, (True, True), lens=(3, 4, 5), d=3, dv=2, seed=1)
    pl = _fused_plan(spec, qs, vs, kind, dense_limit, memory_budget=_small_budget(spec, qs, vs, kind, dense_limit))
    f = pl.detail.fused
    assert (f.col_chunk <= 2) if kind == "fused-triangle" else (f.row_chunk * f.key_chunk <= 3), str(pl)
    assert torch.autograd.gradcheck(lambda *xs: polyattn.poly_attention(pl, list(xs[:3]), list(xs[3:])),
                                    (*qs, *vs), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("spec,kind", [(CUBIC[0], "fused-triangle"), (CUBIC[0], "fused-triangle-rowwise"),
                                       (CUBIC[1], "fused-tensor3")])
@pytest.mark.parametrize("layout", ["transposed", "sliced_last", "sliced_seq", "expand_last", "expand_batch",
                                    "permuted_batch"])
def test_fast_cubic_input_views(dense_limit, spec, kind, layout):
    """Strided views (transposed storage, slices, stride-0 expansions) give the reference's values
    and gradients; gradients reach the base tensors through the view."""
    from strategies import as_layout

    qs, vs = _cubic_inputs(spec, (True, True), lens=(6, 5, 7), seed=2)
    qv = [as_layout(q, layout) for q in qs]
    vv = [as_layout(v, layout) for v in vs]
    budget = _small_budget(spec, qv, vv, kind, dense_limit)
    _fused_plan(spec, qv, vv, kind, dense_limit, memory_budget=budget)
    leaves = qs + vs
    out = polyattn.poly_attention(spec, qv, vv, method="elimination", memory_budget=budget)
    ref = polyattn.poly_attention(spec, qv, vv, method="reference")
    assert torch.allclose(out, ref, atol=1e-10)
    w = torch.randn(ref.shape, dtype=F64, generator=_g(3))
    g = torch.autograd.grad((out * w).sum(), leaves)
    rg = torch.autograd.grad((ref * w).sum(), leaves)
    for a, b in zip(g, rg):
        assert torch.allclose(a, b, atol=1e-9), (a - b).abs().max()


@pytest.mark.parametrize("spec", CUBIC)
def test_fast_cubic_float32_training_sizes(spec):
    """float32 at the sizes the planner really uses for each kernel, against the float64 reference."""
    g = _g(4)
    n = 40 if spec == CUBIC[1] else 80  # the triangle at n = 80 runs separable, x1*x2*x3 row-wise
    qs = [torch.randn(2, n, 8, generator=g).requires_grad_(True) for _ in range(3)]
    vs = [torch.randn(2, n, 8, generator=g).requires_grad_(True) for _ in range(2)]
    pl = polyattn.plan_for(spec, qs, vs)
    assert pl.fused, str(pl)
    out = polyattn.poly_attention(spec, qs, vs)
    ref = polyattn.poly_attention(spec, [q.double() for q in qs], [v.double() for v in vs], method="reference")
    assert torch.allclose(out.double(), ref, atol=2e-5)
    w = torch.randn(ref.shape, dtype=F64, generator=_g(5))
    leaves = qs + vs
    ga = torch.autograd.grad((out.double() * w).sum(), leaves)
    d_leaves = [x.detach().double().requires_grad_(True) for x in leaves]
    ref = polyattn.poly_attention(spec, d_leaves[:3], d_leaves[3:], method="reference")
    gb = torch.autograd.grad((ref * w).sum(), d_leaves)
    for a, b in zip(ga, gb):
        assert torch.allclose(a.double(), b, atol=1e-4), (a.double() - b).abs().max()


@pytest.mark.parametrize("spec", CUBIC)
@pytest.mark.parametrize("batch,has_v", [(1, (True, True)), (3, (True, False)), (2, (False, True))])
def test_fast_cubic_worker_parts_match_reference(monkeypatch, spec, batch, has_v):
    """The parts the worker threads run (heads, query-row ranges, row blocks of the triangle's
    factors and GEMMs) give the reference's values and gradients."""
    from polyattn.ops import threads
    from polyattn.planning import plan_cubic

    monkeypatch.setattr(threads, "workers", lambda: 2)  # as on a 2-thread machine, whatever this one has
    monkeypatch.setattr(plan_cubic, "PARALLEL_MIN_TUPLES", 0)
    g = _g(9)
    lens = (70, 66, 68)
    qs = [torch.randn(batch, lens[j], 4, generator=g, dtype=F64).requires_grad_(True) for j in range(3)]
    vs = [torch.randn(batch, lens[j], 3, generator=g, dtype=F64).requires_grad_(True) if h else None
          for j, h in zip((1, 2), has_v)]
    pl = polyattn.plan_for(spec, qs, vs, method="elimination")
    assert pl.fused, str(pl)
    if pl.detail.fused.kind != "fused-triangle":  # the row-wise kernels: the plan names the parts
        assert pl.detail.fused.parts == 2 and "2 worker parts" in str(pl)
    _check_plan_vs_reference(pl, spec, qs, vs)


def test_fast_cubic_kernel_runs_the_planned_parts(monkeypatch):
    """The row-wise kernel splits over threads exactly as the plan's ``FusedCubic.parts`` says
    (it decides nothing itself): a plan with one part runs one part even with two workers."""
    from dataclasses import replace

    from polyattn.ops import cubic_rowwise, threads

    monkeypatch.setattr(threads, "workers", lambda: 2)
    seen = []
    run = threads.run_parts
    monkeypatch.setattr(threads, "run_parts", lambda fn, parts: (seen.append(len(parts)), run(fn, parts))[1])
    g = _g(11)
    qs = [torch.randn(1, n, 4, generator=g, dtype=F64) for n in (40, 36, 38)]
    vs = [torch.randn(1, n, 3, generator=g, dtype=F64) for n in (36, 38)]
    pl = polyattn.plan_for("x1*x2*x3", qs, vs, method="elimination")
    fused = pl.detail.fused
    assert fused is not None and fused.kind == "fused-tensor3", str(pl)
    for parts in (1, 2):
        seen.clear()
        detail = replace(pl.detail, fused=replace(fused, parts=parts, row_chunk=8))
        out = polyattn.poly_attention(replace(pl, detail=detail), qs, vs)
        assert seen == [parts]
        ref = polyattn.poly_attention("x1*x2*x3", qs, vs, method="reference")
        torch.testing.assert_close(out, ref)
    assert cubic_rowwise._parts(3, 40, 8, 2)[0][1] == (0, 40)  # three heads: split by heads


def test_fast_cubic_double_backward_refused(dense_limit):
    qs, vs = _cubic_inputs(CUBIC[1], (True, True))
    out = polyattn.poly_attention(CUBIC[1], qs, vs, method="elimination")
    (g,) = torch.autograd.grad(out.sum(), qs[0], create_graph=True)
    with pytest.raises(polyattn.PolyAttentionError, match="double backward through a fused cubic kernel"):
        g.sum().backward()


@pytest.mark.parametrize("spec", CUBIC)
def test_fast_cubic_vmap_and_func_grad(spec):
    """torch.func: vmap over a leading dim and grad through the custom backward."""
    qs, vs = _cubic_inputs(spec, (True, True), seed=6)
    qs = [q.detach() for q in qs]
    vs = [v.detach() for v in vs]
    q1 = torch.randn(4, 5, 4, dtype=F64, generator=_g(7))  # vmapped over dim 0

    def f(x):
        return polyattn.poly_attention(spec, [x, qs[1], qs[2]], vs)

    out = torch.func.vmap(f)(q1)
    want = torch.stack([polyattn.poly_attention(spec, [x, qs[1], qs[2]], vs, method="reference") for x in q1])
    assert torch.allclose(out, want, atol=1e-10)
    gq = torch.func.grad(lambda x: f(x).square().sum())(q1[0])
    x = q1[0].clone().requires_grad_(True)
    (want,) = torch.autograd.grad(polyattn.poly_attention(spec, [x, qs[1], qs[2]], vs, method="reference")
                                  .square().sum(), x)
    assert torch.allclose(gq, want, atol=1e-10)


def test_fast_triangle_underflow_falls_back_exactly(monkeypatch, dense_limit):
    # Logits ~1e3 with opposing signs: the separable shifts overshoot the joint max by far more
    # than float32's range, so the separable-shift kernel must hand over to the generic elimination.
    from polyattn.ops import cubic

    g = _g(3)
    used = []
    orig = cubic.separable_triangle
    dense_limit(0)
    monkeypatch.setattr(cubic, "separable_triangle", lambda *a, **k: used.append(orig(*a, **k)) or used[-1])
    qs = [(40 * torch.randn(2, 6, 4, generator=g)).requires_grad_(True) for _ in range(3)]
    vs = [torch.randn(2, 6, 3, generator=g) for _ in range(2)]
    out = polyattn.poly_attention(CUBIC[0], qs, vs, method="elimination")
    ref = polyattn.poly_attention(CUBIC[0], qs, vs, method="reference")
    assert torch.isfinite(out).all()
    assert torch.allclose(out.double(), ref.double(), atol=1e-4)
    assert len(used) == 1  # the separable kernel ran and declined; the generic steps computed the result
    den = used[0][..., -1]
    assert bool((den < torch.finfo(torch.float32).tiny ** 0.5).any())
    out.sum().backward()  # the generic steps' gradients (the declined kernel's graph is unused)
    assert all(torch.isfinite(q.grad).all() for q in qs)


def test_rowwise_triangle_large_logits_exact_without_fallback(monkeypatch):
    from polyattn.ops import cubic

    monkeypatch.setattr(cubic, "separable_triangle", lambda *a, **k: pytest.fail("separable kernel used"))
    g = _g(3)
    qs = [(40 * torch.randn(2, 6, 4, generator=g)).requires_grad_(True) for _ in range(3)]
    vs = [torch.randn(2, 6, 3, generator=g) for _ in range(2)]
    out = polyattn.poly_attention(CUBIC[0], qs, vs, method="elimination")
    ref = polyattn.poly_attention(CUBIC[0], qs, vs, method="reference")
    assert torch.isfinite(out).all()
    assert torch.allclose(out.double(), ref.double(), atol=1e-4)


_TRAINING_PEAK = """
import json, sys, torch, polyattn
from polyattn.bench.measure import peak_memory_growth
spec, n, d = sys.argv[1], 256, 16
g = torch.Generator().manual_seed(8)
qs = [torch.randn(1, n, d, generator=g, requires_grad=True) for _ in range(3)]
vs = [torch.randn(1, n, d, generator=g, requires_grad=True) for _ in range(2)]
pl = polyattn.plan_for(spec, qs, vs)
def train():
    polyattn.poly_attention(pl, qs, vs).sum().backward()
    for x in qs + vs:
        x.grad = None
peak_memory_growth(train)  # warm-up under the measurement's allocator settings
print(json.dumps(min(peak_memory_growth(train) for _ in range(3))))
"""


@pytest.mark.parametrize("spec", CUBIC)
def test_fast_cubic_training_memory_within_plan(spec):
    """Forward + backward grows the peak resident set by less than the plan's stated figure, and
    far less than what autograd through the forward would store: the n^3 probabilities (x1*x2*x3),
    the n^2 * (dv + 1) GEMM operands and results (triangle).

    Measured in a fresh interpreter: the resident set of a process that already ran hundreds of
    tests depends on its allocator history (observed +1-7 MB at random), not on this kernel. The
    minimum of 3 runs: the resident set also counts file pages (library code) that a loaded
    machine may have evicted and the run faults in again."""
    import json
    import subprocess
    import sys

    from polyattn.bench.measure import memory_supported

    if not memory_supported():
        pytest.skip("needs Linux /proc/self/clear_refs to read the peak RSS")
    n, d = 256, 16
    g = _g(8)
    qs = [torch.randn(1, n, d, generator=g, requires_grad=True) for _ in range(3)]
    vs = [torch.randn(1, n, d, generator=g, requires_grad=True) for _ in range(2)]
    pl = polyattn.plan_for(spec, qs, vs)
    assert pl.fused, str(pl)
    run = subprocess.run([sys.executable, "-c", _TRAINING_PEAK, spec], capture_output=True, text=True, check=True)
    grow = json.loads(run.stdout.strip().splitlines()[-1])
    assert grow < pl.peak_bytes, (grow / 2**20, pl.peak_bytes / 2**20)
    if spec == CUBIC[1]:
        assert grow < n**3 * 4 / 4, grow / 2**20
    else:  # the backward adds O(n^2) to the forward's figure, not O(n^2 * dv)
        from polyattn.planning.plan_cubic import fused_forward_bytes

        fwd = fused_forward_bytes(pl.spec, pl.detail.fused)
        assert pl.peak_bytes < fwd + 4 * n * n * 4 * 1.15 and grow < fwd + 4 * n * n * 4, (grow / 2**20, fwd / 2**20)
