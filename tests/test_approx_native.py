"""The native kernel of the approx top-degree split (ops/approx_native.py, ops/csrc/approx_native.cpp).

It is an exact rewrite of :class:`SplitProducts` (same sums, other order, float32 only): tested
operation by operation against the torch split in float64 on property-generated shapes (value
widths across the kernel's register blocks, row counts off the lane tile, strided and transposed
views, broadcast batch dims, 1-3 threads), end to end against the exact method, for the NaN rule,
under autograd (the torch GEMMs run), and for what the plan prints and how the library is built.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import polyattn
import polyattn.ops.approx_native as native_mod
import polyattn.planning.approx_split as split_mod
from polyattn.ops.approx import approx_attention
from polyattn.ops.approx_native import NativeProducts, library, status
from polyattn.ops.approx_split import SplitProducts
from polyattn.ops.inputs import prepare
from polyattn.planning.approx import feature_rank
from polyattn.planning.approx_split import SplitTop

F32, F64 = torch.float32, torch.float64
CPU = torch.device("cpu")
HAS_CXX = any(shutil.which(c) for c in ("c++", "g++", "clang++"))
PATH = "x1*x2 + x2*x3"


@pytest.fixture
def fresh_build(monkeypatch):
    """Forget the process's build before and after the test (it may change the environment)."""
    native_mod._build.cache_clear()
    yield monkeypatch
    monkeypatch.undo()
    native_mod._build.cache_clear()


def test_native_library_builds_where_a_compiler_is():
    if not HAS_CXX:
        pytest.skip("no C++ compiler on this machine: the torch GEMMs run (the plan says so)")
    assert library() is not None, status()
    assert status().startswith("built with")
    assert library().pa_tile_lanes() % 4 == 0


def _split(d: int, p: int, threads: int) -> SplitTop:
    return SplitTop(d, p, math.comb(d + p - 1, p - 1), split_mod._segments(d, p), 64, threads)


@pytest.mark.skipif(not HAS_CXX, reason="no C++ compiler")
@settings(max_examples=60)
@given(d=st.integers(2, 7), p=st.integers(2, 4), z=st.sampled_from([1, 2, 5, 9, 10, 19]),
       rows=st.integers(1, 150), threads=st.integers(1, 3),
       batch=st.sampled_from([((), ()), ((2,), (2,)), ((2, 1), (3,)), ((), (2,))]),
       view=st.sampled_from(["plain", "sliced", "transposed"]), seed=st.integers(0, 2**16))
def test_native_products_equal_the_torch_split(d, p, z, rows, threads, batch, view, seed):
    """apply / summarize / accumulate of the native kernel against the torch split in float64."""
    g = torch.Generator().manual_seed(seed)
    batch_a, batch_q = batch
    nat = NativeProducts(_split(d, p, threads), 1.0, z, CPU, F32)
    ref = SplitProducts(_split(d, p, 0), 1.0, z, CPU, F64)
    r = feature_rank(d, p)
    if view == "sliced":  # coordinate rows further apart than the chunk (a chunk of a longer sequence)
        qt = (torch.rand(*batch_q, d, rows + 7, generator=g) - 0.5)[..., 3 : 3 + rows]
    elif view == "transposed":  # lanes not contiguous: q itself, transposed
        qt = (torch.rand(*batch_q, rows, d, generator=g) - 0.5).transpose(-1, -2)
    else:
        qt = torch.rand(*batch_q, d, rows, generator=g) - 0.5
    a = torch.randn(*batch_a, z, r, generator=g)
    m = torch.randn(*batch_a, rows, z, generator=g).transpose(-1, -2)  # messages are transposed views
    with torch.no_grad():
        ch_n, ch_r = nat.chunk(qt), ref.chunk(qt.double())
        got = nat.apply(nat.prepare(a), ch_n)
        want = ref.apply(ref.prepare(a.double()), ch_r)
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4 * (1 + want.abs().max().item()))
        acc = nat.summarize(m, ch_n, None)
        acc = nat.summarize(2 * m, ch_n, acc)  # accumulates in place
        want_s = 3 * ref.finish(ref.summarize(m.double(), ch_r, None))
        got_s = nat.finish(acc).double()
        torch.testing.assert_close(got_s, want_s, rtol=1e-4, atol=1e-4 * (1 + want_s.abs().max().item()))


def _problem(n: int, d: int, batch: tuple[int, ...], seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    base = [(torch.rand(*batch, d, n, generator=g) - 0.5) * 0.5 for _ in range(3)]
    q = [x.transpose(-1, -2) for x in base]  # transposed views, as a model's projections often are
    v = [torch.randn(*batch, n, 12, generator=g)[..., ::2] for _ in range(2)]  # sliced
    return q, v


@pytest.mark.skipif(not HAS_CXX, reason="no C++ compiler")
@pytest.mark.parametrize("batch,native_rows", [((), 4800), ((2,), 4800), ((), 100)])
def test_native_call_matches_torch_split_and_exact(batch, native_rows, monkeypatch):
    """d = 16, degree 4 (rank 4845: the planner's own choice of the split), n off the lane tile;
    one chunk, or chunks of 100 rows (partial lane tiles inside the sequence)."""
    monkeypatch.setattr(split_mod, "NATIVE_CHUNK_ROWS", native_rows)
    q, v = _problem(300, 16, batch)
    kw = dict(method="approx", degree=4, allow_slower=True)
    plan = polyattn.plan_for(PATH, q, v, **kw)
    assert plan.split is not None and plan.split.native == torch.get_num_threads()
    assert plan.split.native_rows == min(native_rows, 300)
    out = polyattn.poly_attention(PATH, q, v, **kw)
    torch_split = replace(plan, split=replace(plan.split, native=0))
    out_t = approx_attention(prepare(PATH, q, v), torch_split)
    torch.testing.assert_close(out, out_t, rtol=1e-4, atol=1e-5)
    exact = polyattn.poly_attention(PATH, [x.double() for x in q], [x.double() for x in v])
    assert (out.double() - exact).abs().max() <= plan.error_bound + 1e-5


@pytest.mark.skipif(not HAS_CXX, reason="no C++ compiler")
def test_native_kernel_follows_the_nan_rule():
    """A NaN query row spoils only its own output row; a NaN leaf key spoils every row (its sums)."""
    q, v = _problem(130, 16, ())
    q = [x.contiguous() for x in q]
    kw = dict(method="approx", degree=4, allow_slower=True)
    assert polyattn.plan_for(PATH, q, v, **kw).split.native
    q[0][7, 0] = float("nan")
    out = polyattn.poly_attention(PATH, q, v, **kw)
    assert out[7].isnan().all() and torch.isfinite(out[:7]).all() and torch.isfinite(out[8:]).all()
    q[2][5, 1] = float("nan")
    assert polyattn.poly_attention(PATH, q, v, **kw).isnan().all()


@pytest.mark.skipif(not HAS_CXX, reason="no C++ compiler")
def test_under_autograd_the_torch_gemms_run_with_the_same_values(monkeypatch):
    q, v = _problem(100, 16, ())
    kw = dict(method="approx", degree=4, allow_slower=True)
    with torch.no_grad():
        out_ng = polyattn.poly_attention(PATH, q, v, **kw)
    leaves = [x.detach().clone().requires_grad_() for x in q + v]
    calls = []
    lib = library()
    monkeypatch.setattr(NativeProducts, "lib", property(lambda self: calls.append(1) or lib, lambda s, x: None),
                        raising=False)
    out = polyattn.poly_attention(PATH, leaves[:3], leaves[3:], **kw)
    assert not calls  # the native kernel does not run under autograd
    torch.testing.assert_close(out, out_ng, rtol=1e-4, atol=1e-5)
    grads = torch.autograd.grad(out.square().sum(), leaves)
    leaves64 = [x.detach().double().requires_grad_() for x in leaves]
    ref = polyattn.poly_attention(PATH, leaves64[:3], leaves64[3:], **kw)
    for x, y in zip(grads, torch.autograd.grad(ref.square().sum(), leaves64)):
        torch.testing.assert_close(x.double(), y, rtol=2e-3, atol=2e-4)


@pytest.mark.skipif(not HAS_CXX, reason="no C++ compiler")
def test_native_threads_are_the_plans_and_agree():
    q, v = _problem(200, 16, ())
    kw = dict(method="approx", degree=4, allow_slower=True)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        plan1 = polyattn.plan_for(PATH, q, v, **kw)
        out1 = polyattn.poly_attention(PATH, q, v, **kw)
        torch.set_num_threads(2)
        plan2 = polyattn.plan_for(PATH, q, v, **kw)
        out2 = polyattn.poly_attention(PATH, q, v, **kw)
    finally:
        torch.set_num_threads(old)
    assert (plan1.split.native, plan2.split.native) == (1, 2)
    assert "native kernel, construction fused in (2 threads" in str(plan2)
    torch.testing.assert_close(out1, out2, rtol=1e-5, atol=1e-6)


def test_plan_says_which_products_run_and_why(fresh_build):
    q, v = _problem(64, 16, ())
    kw = dict(method="approx", degree=4, allow_slower=True)
    text64 = str(polyattn.plan_for(PATH, [x.double() for x in q], [x.double() for x in v], **kw))
    assert "17 slots in 8 GEMMs" in text64 and "native kernel: float32 only (inputs are float64)" in text64
    fresh_build.setenv("POLYATTN_NATIVE", "0")
    off = polyattn.plan_for(PATH, q, v, **kw)
    assert off.split.native == 0 and "turned off by POLYATTN_NATIVE=0" in str(off)
    out_off = polyattn.poly_attention(PATH, q, v, **kw)
    fresh_build.delenv("POLYATTN_NATIVE")
    native_mod._build.cache_clear()
    fresh_build.setattr(native_mod.shutil, "which", lambda name: None)
    none = polyattn.plan_for(PATH, q, v, **kw)
    assert none.split.native == 0
    assert "native kernel unavailable: no C++ compiler found" in str(none)
    torch.testing.assert_close(polyattn.poly_attention(PATH, q, v, **kw), out_off)


@pytest.mark.skipif(not HAS_CXX, reason="no C++ compiler")
def test_build_is_cached_atomically_and_a_damaged_entry_is_rebuilt(fresh_build, tmp_path):
    fresh, damaged = tmp_path / "fresh", tmp_path / "damaged"
    fresh_build.setenv("POLYATTN_CACHE_DIR", str(fresh))
    assert library() is not None, status()
    built = sorted(fresh.iterdir())
    assert len(built) == 1 and built[0].name.startswith("approx_native-") and built[0].suffix == ".so"
    assert str(built[0]) in status()
    native_mod._build.cache_clear()
    assert library() is not None and sorted(fresh.iterdir()) == built  # reused, not rebuilt
    # a damaged entry (never loaded by this process: a loaded library must not be overwritten)
    damaged.mkdir()
    (damaged / built[0].name).write_bytes(b"not a library")
    fresh_build.setenv("POLYATTN_CACHE_DIR", str(damaged))
    native_mod._build.cache_clear()
    assert library() is not None, status()  # rebuilt in place
    assert [x.name for x in damaged.iterdir()] == [built[0].name]
    assert (damaged / built[0].name).stat().st_size > 1000


def test_no_split_no_native_check(monkeypatch):
    """Below the split's rank nothing asks for the native library (no build on a small call)."""
    import polyattn.ops.approx as approx_mod

    def boom(*a, **k):
        raise AssertionError("native_threads called without a split")

    monkeypatch.setattr(approx_mod, "native_threads", boom)
    q, v = _problem(64, 4, ())
    plan = polyattn.plan_for(PATH, q, v, method="approx", degree=3, allow_slower=True)
    assert plan.split is None
    polyattn.poly_attention(PATH, q, v, method="approx", degree=3, allow_slower=True)


def test_cost_model_times_native_products_at_the_native_rate():
    from polyattn.planning import ProblemSpec
    from polyattn.planning.approx import plan_approx
    from polyattn.planning.approx_cost import DEFAULT_COST_MODEL, NATIVE_GAIN, approx_seconds, approx_work

    spec = ProblemSpec.build(PATH, seq_len=65536, head_dim=16, value_dim=8)
    torch_plan = plan_approx(spec, entry_bound=0.1, degree=4, allow_slower=True)
    native_plan = plan_approx(spec, entry_bound=0.1, degree=4, allow_slower=True, native=(1, ""))
    # 3600 rows: whole lane tiles with 9 x rows below torch's parallel grain (its workers stay asleep)
    assert native_plan.split.native == 1 and native_plan.split.native_rows == 3600
    assert split_mod.native_chunk_rows(1, 2, 10**6) == split_mod.NATIVE_CHUNK_ROWS  # capped
    assert split_mod.native_chunk_rows(8, 65, 10**6) == split_mod.NATIVE_MIN_ROWS  # floored
    assert split_mod.native_chunk_rows(1, 9, 100) == 100  # at most the sequence

    def work(plan):
        from polyattn.planning.approx import structure

        strategy, parent, _ = structure(spec)
        return approx_work(spec, strategy, parent, plan.rank, plan.degree, plan.chunk_rows, plan.flops, plan.split)

    w_t, w_n = work(torch_plan), work(native_plan)
    assert w_t[4] == 0 and w_n[4] == pytest.approx(native_plan.flops)  # every product is a plain edge's
    assert w_n[0] == 0 and w_n[1] == 0  # no GEMM FLOPs, no separate construction
    fast = replace(DEFAULT_COST_MODEL, native_flops=2 * DEFAULT_COST_MODEL.product_flops * NATIVE_GAIN)
    assert approx_seconds(w_n, fast) < approx_seconds(w_n, DEFAULT_COST_MODEL) < approx_seconds(w_t, DEFAULT_COST_MODEL)
    assert DEFAULT_COST_MODEL.native_rate() == DEFAULT_COST_MODEL.product_flops * NATIVE_GAIN


@pytest.mark.skipif(not HAS_CXX, reason="no C++ compiler")
def test_no_code_is_loaded_from_a_folder_others_can_write(fresh_build, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    fresh_build.setenv("POLYATTN_CACHE_DIR", str(shared))
    assert library() is None
    assert "writable by other users: not loading code from it" in status()
    assert not list(shared.iterdir())  # nothing was built there either
    q, v = _problem(64, 16, ())
    plan = polyattn.plan_for(PATH, q, v, method="approx", degree=4, allow_slower=True)
    assert plan.split.native == 0 and "writable by other users" in str(plan)


@pytest.mark.skipif(not HAS_CXX, reason="no C++ compiler")
def test_a_summary_prepared_for_the_kernel_serves_a_query_that_needs_grad():
    """Only x1's queries need grad: the summary from x2 is prepared in the kernel's layout (no grad),
    x1's products fall back to the torch split and get it back in the split's layout."""
    q, v = _problem(90, 16, ())
    kw = dict(method="approx", degree=4, allow_slower=True)
    q1 = q[0].detach().clone().requires_grad_()
    out = polyattn.poly_attention(PATH, [q1, q[1], q[2]], v, **kw)
    (g,) = torch.autograd.grad(out.square().sum(), q1)
    q64 = q1.detach().double().requires_grad_()
    ref = polyattn.poly_attention(PATH, [q64, q[1].double(), q[2].double()], [x.double() for x in v], **kw)
    (g64,) = torch.autograd.grad(ref.square().sum(), q64)
    torch.testing.assert_close(g.double(), g64, rtol=2e-3, atol=2e-4)
    with torch.no_grad():
        torch.testing.assert_close(out, polyattn.poly_attention(PATH, q, v, **kw), rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not HAS_CXX, reason="no C++ compiler")
@pytest.mark.parametrize("extra,lanes", [(("-mno-avx512f",), 8), (("-mno-avx512f", "-mno-avx2", "-mno-avx"), 4)],
                         ids=["avx2", "sse"])
def test_the_narrower_vector_paths_compute_the_same(extra, lanes, tmp_path, monkeypatch):
    """The kernel's AVX2 (8 lanes, 1 vector) and generic (4 lanes) register blocks, built from the same
    source with AVX-512 switched off, against the torch split in float64 (this machine's own build
    runs the AVX-512 path everywhere else)."""
    import ctypes

    cxx = native_mod._compiler()
    target = tmp_path / "narrow.so"
    assert native_mod._compile(cxx, target, native_mod.FLAGS + extra) == ""
    lib = native_mod._declare(ctypes.CDLL(str(target)))
    if "avx" not in native_mod._cpu_flags():
        pytest.skip("this CPU has no AVX: -march=native already builds the generic path")
    assert lib.pa_tile_lanes() == lanes
    monkeypatch.setattr(native_mod, "library", lambda: lib)
    g = torch.Generator().manual_seed(5)
    for d, p, z, rows, threads in [(5, 3, 9, 37, 1), (4, 4, 11, 130, 2), (16, 3, 3, 50, 3)]:
        nat = NativeProducts(_split(d, p, threads), 1.0, z, CPU, F32)
        ref = SplitProducts(_split(d, p, 0), 1.0, z, CPU, F64)
        qt = torch.rand(d, rows, generator=g) - 0.5
        a = torch.randn(z, feature_rank(d, p), generator=g)
        m = torch.randn(rows, z, generator=g).t()
        with torch.no_grad():
            got = nat.apply(nat.prepare(a), nat.chunk(qt)).double()
            want = ref.apply(ref.prepare(a.double()), ref.chunk(qt.double()))
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * (1 + want.abs().max().item()))
            got_s = nat.finish(nat.summarize(m, nat.chunk(qt), None)).double()
            want_s = ref.finish(ref.summarize(m.double(), ref.chunk(qt.double()), None))
            torch.testing.assert_close(got_s, want_s, rtol=1e-4, atol=1e-4 * (1 + want_s.abs().max().item()))
