"""`polyattn bench`: CLI wiring, JSON/plot outputs, skips with reasons, measurement helpers (no timing asserts)."""

from __future__ import annotations

import json
import os
import types

import pytest
import torch

import polyattn
from polyattn import PolyAttentionError
from polyattn.bench import kernels as K
from polyattn.bench import peers as P
from polyattn.bench.measure import fit_exponent, peak_memory_growth, time_interleaved, write_json_atomic
from polyattn.cli import build_parser, main

SMALL = ["--n", "8", "16", "--d", "4", "--batch-heads", "2", "--repeats", "1", "--warmup", "0", "--no-progress"]


def test_bench_kernels_cli_writes_json_and_plot(tmp_path, capsys):
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    rc = main(["bench", "kernels", "-m", "path2", "--poly", "x1*x2 + x2*x3 + x1*x3", *SMALL,
               "--out", str(out), "--plot", str(png)])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert png.stat().st_size > 1000
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]
    recs = doc["records"]
    assert {r["mechanism"] for r in recs} == {"path2", "x1*x2 + x2*x3 + x1*x3"}
    assert {r["mode"] for r in recs} == {"fwd", "fwdbwd"}
    ok = [r for r in recs if r["status"] == "ok"]
    pa = [r for r in ok if r["impl"] == "polyattn"]
    assert {r["method"] for r in pa} == {"tree", "elimination"}
    for r in ok:
        assert r["time_s"] > 0 and len(r["samples"]) == 1 and r["finite"]
    # baselines agree with polyattn on the same tensors
    for r in ok:
        if "max_abs_diff" in r:
            assert r["max_abs_diff"] < 1e-4, r
    assert any(r["impl"] == "einsum" for r in ok) and any(r["impl"] == "reference" for r in ok)
    assert any(r["impl"] == "matmul" and r["mechanism"] != "path2" for r in ok)
    ratios = doc["summary"]["ratios"]
    assert any("vs_edges_x_sdpa" in r for r in ratios)
    exps = doc["summary"]["exponents"]
    assert any(e["impl"] == "polyattn" and e["n_min"] == 8 and e["n_max"] == 16 for e in exps)
    text = capsys.readouterr().out
    assert "exponent" in text and str(out) in text


def test_plain_bench_runs_default_kernels_suite(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no benchmarks/default.toml here: built-in defaults + overrides
    args = build_parser().parse_args(["bench", "-m", "self", *SMALL, "--modes", "fwd", "--no-plot",
                                      "--out", "x.json"])
    assert args.handler is K.main and args.suite is None
    assert args.handler(args) == 0
    doc = json.loads((tmp_path / "x.json").read_text())
    assert {r["mechanism"] for r in doc["records"]} == {"self"}


def test_missing_peer_is_skipped_with_reason(tmp_path, monkeypatch, capsys):
    def broken(self):
        raise ImportError("No module named 'strassen_attention'")

    monkeypatch.setattr(P.Peer, "load", broken)
    rc = main(["bench", "kernels", "-m", "strassen", *SMALL, "--modes", "fwd", "--impls", "polyattn", "peers",
               "--no-plot", "--out", str(tmp_path / "p.json")])
    assert rc == 0
    doc = json.loads((tmp_path / "p.json").read_text())
    skipped = [r for r in doc["records"] if r["impl"] == "strassen-attention"]
    assert skipped and all(r["status"].startswith("skipped: strassen-attention not usable") for r in skipped)
    assert "strassen-attention not usable" in capsys.readouterr().err


def test_installed_peers_compute_the_same_function():
    n, d, bh = 6, 4, 2
    for peer in P.PEERS:
        if P.peer_status(peer) is not None:
            continue  # optional extra not installed here
        qs, vs = K.make_inputs(peer.polynomial, n, d, bh, seed=0, grad=False)
        want_q, want_v, kw = peer.polyattn_args(qs, vs)
        got = peer.load()(qs, vs)
        want = polyattn.poly_attention(peer.polynomial, want_q, want_v, **kw)
        assert torch.allclose(got, want, atol=1e-5), peer.name


def test_approx_suite_plugs_in():
    from polyattn.bench import approx

    args = build_parser().parse_args(["bench", "approx"])
    assert args.suite == "approx" and args.handler.__module__ == approx.__name__


def test_config_loading_and_errors(tmp_path):
    cfg = K.load_config(os.path.join(os.path.dirname(__file__), "..", "benchmarks", "default.toml"))
    assert cfg.repeats >= 5 and len(cfg.sweeps) >= 2
    targets = K.load_config(os.path.join(os.path.dirname(__file__), "..", "benchmarks", "targets.toml"))
    assert {s.name for s in targets.sweeps} >= {"path", "trees", "strassen", "tensor"}
    bad = tmp_path / "bad.toml"
    bad.write_text("[kernels]\nrepeat = 3\n")
    with pytest.raises(PolyAttentionError, match="unknown key 'repeat'"):
        K.load_config(str(bad))
    bad.write_text("[kernels]\n[[kernels.sweep]]\nmechanism = ['self']\n")
    with pytest.raises(PolyAttentionError, match="unknown key"):
        K.load_config(str(bad))
    bad.write_text("[kernels]\n[[kernels.sweep]]\nn = [8, 16]\nrepeats = [3]\n")
    with pytest.raises(PolyAttentionError, match="one per entry of n"):
        K.load_config(str(bad))
    cubic = K.load_config(os.path.join(os.path.dirname(__file__), "..", "benchmarks", "cubic_exponent.toml"))
    assert all(not s.measure_memory for s in cubic.sweeps)
    rc = main(["bench", "kernels", "--poly", "x1*x2 +", *SMALL, "--no-plot", "--out", str(tmp_path / "e.json")])
    assert rc == 2  # PolyAttentionError (with the column pointer) -> exit status 2


def test_naive_einsum_matches_reference():
    qs, vs = K.make_inputs("x1*x2 + x2*x3 + x1*x3", 5, 3, 2, seed=1, grad=False)
    qs, vs = [q.double() for q in qs], [v.double() for v in vs]
    a = K.naive_einsum("x1*x2 + x1*x3 + x2*x3", qs, vs)
    b = polyattn.poly_attention("x1*x2 + x1*x3 + x2*x3", qs, vs, method="reference")
    assert torch.allclose(a, b, atol=1e-12)


def test_measure_helpers(tmp_path):
    assert fit_exponent([100, 200, 400], [1.0, 4.0, 16.0]) == pytest.approx(2.0)
    assert fit_exponent([100], [1.0]) is None
    calls = []
    s = time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, warmup=1)
    assert calls == ["a", "b"] * 4 and len(s["a"]) == 3
    p = tmp_path / "sub" / "x.json"
    write_json_atomic(p, {"a": 1})
    write_json_atomic(p, {"a": 2})
    assert json.loads(p.read_text()) == {"a": 2} and os.listdir(p.parent) == ["x.json"]
    grow = peak_memory_growth(lambda: torch.ones(16 * 2**20).sum())  # touches 64 MB
    if grow is not None:
        assert grow > 48 * 2**20


def test_sweep_repeats_per_n_and_memory_phase_off(tmp_path):
    cfg = K.KernelsConfig(
        sweeps=[K.Sweep(name="s", mechanisms=["path2"], n=[8, 16], d=[4], batch_heads=1, modes=["fwd"],
                        impls=["polyattn"], repeats=[2, 1], measure_memory=False)],
        out=str(tmp_path / "s.json"), plot=None,
    )
    doc = K.run_kernels(cfg, progress=False, log=lambda m: None)
    recs = {r["n"]: r for r in doc["records"]}
    assert len(recs[8]["samples"]) == 2 and len(recs[16]["samples"]) == 1
    assert all("peak_mb" not in r for r in recs.values())


def test_naive_einsum_is_the_reference_kernel_in_float32():
    from polyattn.ops import trace

    qs, vs = K.make_inputs("x1*x2*x3", 6, 3, 2, seed=2, grad=False)
    with trace.record() as events:
        a = K.naive_einsum("x1*x2*x3", qs, vs)
    assert events == [("reference", {})] and a.dtype == torch.float32
    b = polyattn.poly_attention("x1*x2*x3", qs, vs, method="reference")
    assert torch.allclose(a.double(), b.double(), atol=1e-5)


def test_autograd_baseline_matches_polyattn():
    from polyattn.bench.baselines import autograd_fused

    for poly in ("x1*x2*x3", "x1*x2 + x1*x3 + x2*x3"):
        qs, vs = K.make_inputs(poly, 70, 4, 2, seed=3, grad=True)
        a = autograd_fused(poly, qs, vs)
        b = polyattn.poly_attention(poly, qs, vs)
        assert torch.allclose(a, b, atol=1e-5)
        ga = torch.autograd.grad(a.sum(), qs)
        gb = torch.autograd.grad(b.sum(), qs)
        assert all(torch.allclose(x, y, atol=1e-4) for x, y in zip(ga, gb))


def test_only_out_of_memory_and_method_errors_become_rows(tmp_path, monkeypatch):
    from polyattn.bench import runner

    assert runner.expected_failure(MemoryError()) and runner.expected_failure(torch.OutOfMemoryError("x"))
    assert runner.expected_failure(RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate"
                                                " 1 GB; out of memory"))
    assert runner.expected_failure(polyattn.MethodError("refused"))
    assert not runner.expected_failure(ValueError("bug")) and not runner.expected_failure(AssertionError())
    assert not runner.expected_failure(RuntimeError("shape mismatch"))
    cfg = K.KernelsConfig(sweeps=[K.Sweep(name="s", mechanisms=["path2"], n=[8], d=[4], batch_heads=1,
                                          modes=["fwd"], impls=["polyattn", "sdpa"])], repeats=1,
                          out=str(tmp_path / "e.json"), plot=None)

    def oom(*a, **k):
        raise torch.OutOfMemoryError("CPU out of memory")

    from polyattn.bench import baselines

    monkeypatch.setattr(baselines, "F", types.SimpleNamespace(scaled_dot_product_attention=oom))
    doc = K.run_kernels(cfg, progress=False, log=lambda m: None)
    rows = {r["impl"]: r["status"] for r in doc["records"]}
    assert rows["polyattn"] == "ok" and rows["sdpa"].startswith("error: OutOfMemoryError")

    def bug(*a, **k):
        raise ValueError("a bug")

    monkeypatch.setattr(baselines, "F", types.SimpleNamespace(scaled_dot_product_attention=bug))
    with pytest.raises(ValueError, match="a bug"):
        K.run_kernels(cfg, progress=False, log=lambda m: None)


def test_fused_rows_record_the_plans_peak(tmp_path):
    cfg = K.KernelsConfig(sweeps=[K.Sweep(name="s", mechanisms=["tensor3"], n=[24], d=[4], batch_heads=1,
                                          modes=["fwdbwd"], impls=["polyattn", "autograd"])], repeats=1,
                          out=str(tmp_path / "f.json"), plot=None)
    doc = K.run_kernels(cfg, progress=False, log=lambda m: None)
    (row,) = doc["summary"]["ratios"]
    assert row["plan_peak_mb"] > 0 and "speedup_vs_autograd" in row
    if row.get("peak_mb") is not None:
        assert row["peak_within_plan"] == (row["peak_mb"] <= row["plan_peak_mb"])
    assert "plan peak [MB]" in K.format_markdown(doc)
