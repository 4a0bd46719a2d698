"""Running the ``kernels`` suite: timing phase, memory phase, JSON and plot.

For every case (sweep x mechanism x n x d x mode) all implementations (:mod:`.baselines`) run on the
*same* tensors, timed round-robin (:func:`polyattn.timing.time_interleaved`, median of ``repeats``).
After all timings (the memory phase retunes the allocator), each runs ``memory_repeats`` (2) more
times for its peak memory growth (:func:`.measure.peak_memory_growth`, the minimum is kept: the
first call after the retuning may reuse heap memory of the timing phase) and its output is checked
against polyattn's.

Failures: only running out of memory (``MemoryError``, ``torch.OutOfMemoryError``, a
``RuntimeError`` that says "out of memory") and :class:`polyattn.MethodError` (a method that
refuses the input) are recorded as ``status = "error: ..."`` rows; every other exception is a bug
and propagates.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable
from typing import Any

import torch
from tqdm import tqdm

from polyattn.atomicio import atomic_write_json
from polyattn.errors import MethodError, PolyAttentionError
from polyattn.functional import poly_attention
from polyattn.polynomial import parse
from polyattn.timing import median, time_interleaved

from .baselines import implementations, make_inputs
from .config import MODES, KernelsConfig, Sweep, polynomial_of
from .measure import environment, memory_supported, peak_memory_growth
from .report import summarize

__all__ = ["run_kernels", "expected_failure", "cases"]


def expected_failure(e: BaseException) -> bool:
    """Whether a benchmark records ``e`` as a result (out of memory, a refused method) instead of raising."""
    if isinstance(e, (MemoryError, torch.OutOfMemoryError, MethodError)):
        return True
    return isinstance(e, RuntimeError) and "out of memory" in str(e).lower()


def _runner(fn: Callable[[], torch.Tensor], mode: str, leaves: list[torch.Tensor]) -> Callable[[], Any]:
    if mode == "fwd":
        def run_fwd():
            with torch.no_grad():
                return fn()
        return run_fwd

    def run_fb():
        out = fn()
        out.float().sum().backward()
        for x in leaves:
            x.grad = None
        return out.detach()
    return run_fb


def _setup(label: str, poly: str, n: int, d: int, sweep: Sweep, mode: str, cfg: KernelsConfig):
    grad = mode == "fwdbwd"
    qs, vs = make_inputs(poly, n, d, sweep.batch_heads, seed=n * 131 + d, grad=grad, input_scale=sweep.input_scale)
    impls = implementations(poly, qs, vs, sweep, cfg)
    p = parse(poly)
    base = dict(suite="kernels", sweep=sweep.name, mechanism=label, polynomial=poly, edges=len(p.monomials),
                is_tree=p.is_tree, degree=p.degree, n=n, d=d, batch_heads=sweep.batch_heads, mode=mode,
                input_scale=sweep.input_scale)
    return base, impls, qs + vs


def _time_case(label: str, poly: str, n: int, d: int, sweep: Sweep, mode: str, cfg: KernelsConfig,
               log: Callable[[str], None]) -> list[dict]:
    """Phase 1: round-robin timing of every implementation of one case (allocator untouched)."""
    base, impls, leaves = _setup(label, poly, n, d, sweep, mode, cfg)
    recs = []
    runnable = {}
    for im in impls:
        if im.skip:
            log(f"skip {label} n={n} d={d} {mode} {im.name}: {im.skip}")
            recs.append(dict(base, impl=im.name, status=f"skipped: {im.skip}"))
            continue
        assert im.fn is not None
        run = _runner(im.fn, mode, leaves + list(im.leaves))
        try:
            run()  # first warm-up, alone: running out of memory is a result, not a crash
        except Exception as e:
            if not expected_failure(e):
                raise
            log(f"error {label} n={n} d={d} {mode} {im.name}: {type(e).__name__}: {e}")
            recs.append(dict(base, impl=im.name, status=f"error: {type(e).__name__}: {e}"))
            continue
        runnable[im.name] = run
    repeats = cfg.repeats if sweep.repeats is None else sweep.repeats
    if isinstance(repeats, list):
        repeats = repeats[sweep.n.index(n)]
    samples = time_interleaved(runnable, repeats=repeats, warmup=max(0, cfg.warmup - 1))
    for im in impls:
        if im.name not in runnable:
            continue
        rec = dict(base, impl=im.name, status="ok", time_s=median(samples[im.name]), samples=samples[im.name])
        if im.method:
            rec["method"] = im.method
        if im.flops and mode == "fwd":  # FLOP counts are forward counts
            rec["gflops"] = im.flops / rec["time_s"] / 1e9
        if im.note:
            rec["note"] = im.note
        if im.plan_peak is not None:
            rec["plan_peak_mb"] = im.plan_peak / 2**20
        recs.append(rec)
    return recs


def _memory_case(label: str, poly: str, n: int, d: int, sweep: Sweep, mode: str, cfg: KernelsConfig,
                 recs: list[dict], log: Callable[[str], None]) -> None:
    """Phase 2 (after all timings, since it retunes the allocator): peak memory and output checks."""
    ok = {r["impl"]: r for r in recs if r["status"] == "ok"}
    if not ok or not sweep.measure_memory:
        return
    base, impls, leaves = _setup(label, poly, n, d, sweep, mode, cfg)
    ref_out = None
    gc.collect()  # once per case: slow with torch loaded, and the kernels free their buffers eagerly
    for im in impls:
        rec = ok.get(im.name)
        if rec is None or im.fn is None:
            continue
        run = _runner(im.fn, mode, leaves + list(im.leaves))
        holder: dict[str, torch.Tensor] = {}

        def once(run=run, holder=holder):
            holder["out"] = run()

        try:
            mems = [peak_memory_growth(once) for _ in range(max(1, cfg.memory_repeats))]
            mem = None if mems[0] is None else min(m for m in mems if m is not None)
        except Exception as e:
            if not expected_failure(e):
                raise
            log(f"error (memory phase) {label} n={n} d={d} {mode} {im.name}: {type(e).__name__}: {e}")
            rec["memory_status"] = f"error: {type(e).__name__}: {e}"
            continue
        out = holder.pop("out")
        rec["peak_mb"] = None if mem is None else mem / 2**20
        rec["finite"] = bool(torch.isfinite(out).all())
        if cfg.check and im.name not in ("sdpa", "matmul"):
            if im.name == "polyattn":
                ref_out = out
            elif im.same is not None:
                with torch.no_grad():
                    want = poly_attention(poly, im.same[0], im.same[1], **im.same[2])
                rec["max_abs_diff"] = _diff(out, want)
            elif ref_out is not None:
                rec["max_abs_diff"] = _diff(out, ref_out)
        del out


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    bad = ~(torch.isfinite(a) & torch.isfinite(b))
    if bool(bad.any()):
        return float("inf")
    return float((a - b).abs().max())


def cases(cfg: KernelsConfig) -> list[tuple[Sweep, str, str, int, int, str]]:
    """Every (sweep, label, polynomial, n, d, mode) of the config, in run order."""
    out = []
    for sw in cfg.sweeps:
        for mode in sw.modes:
            if mode not in MODES:
                raise PolyAttentionError(f"sweep {sw.name!r}: unknown mode {mode!r}; choose from {MODES}")
        for mech in sw.mechanisms:
            label, poly = polynomial_of(mech)
            for d in sw.d:
                for n in sw.n:
                    for mode in sw.modes:
                        out.append((sw, label, poly, n, d, mode))
    return out


def run_kernels(cfg: KernelsConfig, *, progress: bool = True, log: Callable[[str], None] | None = None) -> dict:
    """Run every case, write the JSON (atomically) and the plot; return the result document."""
    logs: list[str] = []

    def _log(msg: str) -> None:
        logs.append(msg)
        (log or (lambda m: tqdm.write(m, file=sys.stderr)))(msg)

    if not memory_supported():
        _log("peak memory not measured: /proc/self/clear_refs is unavailable on this system")
    todo = cases(cfg)
    per_case = [
        _time_case(label, poly, n, d, sw, mode, cfg, _log)
        for sw, label, poly, n, d, mode in tqdm(todo, desc="bench kernels: time", disable=not progress, unit="case")
    ]
    for (sw, label, poly, n, d, mode), recs in tqdm(
        list(zip(todo, per_case)), desc="bench kernels: memory", disable=not progress, unit="case"
    ):
        _memory_case(label, poly, n, d, sw, mode, cfg, recs, _log)
    records = [r for recs in per_case for r in recs]
    doc = {
        "suite": "kernels",
        "environment": environment(),
        "config": {k: v for k, v in cfg.__dict__.items() if k != "sweeps"}
        | {"sweeps": [s.__dict__ for s in cfg.sweeps]},
        "records": records,
        "summary": summarize(records),
        "log": logs,
    }
    if cfg.out:
        atomic_write_json(cfg.out, doc, indent=1)
    if cfg.plot:
        from .plot import plot_kernels

        plot_kernels(doc, cfg.plot)
    return doc


