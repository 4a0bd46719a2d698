"""The ``kernels`` suite: exact poly-attention against SDPA, the reference, naive einsum and peers.

A run is a list of *sweeps* (from a TOML config and/or the command line). Each sweep crosses
mechanisms (named, or any polynomial) x n x d x mode (``fwd`` under ``no_grad``, ``fwdbwd`` =
forward + ``sum().backward()``). For every case all implementations run on the *same* tensors,
timed round-robin (:func:`polyattn.bench.measure.time_interleaved`, median of ``repeats``), then
each once more for its peak-memory growth and output check. Implementations:

* ``polyattn``: :func:`polyattn.poly_attention` with ``method="auto"`` (the plan's method is recorded);
* ``sdpa``: one ``scaled_dot_product_attention`` on ``x1, x2`` at the same sizes (the unit that
  tree costs are compared with: a tree with ``e`` edges should cost about ``e`` SDPA calls);
* ``reference``: ``method="reference"`` (float64 brute force), small problems only;
* ``einsum``: naive float32 attention over all tuples (``n^t`` logits at once), small problems only;
* ``matmul``: one ``torch.matmul`` with the FLOP count of polyattn's plan (non-tree polynomials):
  the BLAS speed limit that the achieved GFLOP/s is compared with;
* ``peers``: installed peer packages that compute the same polynomial (:mod:`polyattn.bench.peers`).

Anything not run is recorded with ``status = "skipped: <reason>"`` and the reason is printed.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

import polyattn
from polyattn.ops.common import expand_to, letters
from polyattn.planning import REFERENCE_MAX_TUPLES

from .measure import (
    fit_exponent,
    median,
    memory_supported,
    peak_memory_growth,
    time_interleaved,
    write_json_atomic,
)
from .peers import peer_for, peer_status

__all__ = ["MECHANISMS", "Sweep", "KernelsConfig", "load_config", "run_kernels", "summarize", "add_suite", "main"]

MECHANISMS: dict[str, str] = {
    "self": "x1*x2",
    "path2": "x1*x2 + x2*x3",
    "path3": "x1*x2 + x2*x3 + x3*x4",
    "star3": "x1*x2 + x1*x3",
    "tree4": "x1*x2 + x1*x3 + x2*x4 + x2*x5",
    "strassen": "x1*x2 + x1*x3 + x2*x3",
    "tensor3": "x1*x2*x3",
}
IMPLS = ("polyattn", "sdpa", "reference", "einsum", "matmul", "peers")
MODES = ("fwd", "fwdbwd")


@dataclass
class Sweep:
    name: str = "default"
    mechanisms: list[str] = field(default_factory=lambda: ["self", "path2", "tree4"])
    n: list[int] = field(default_factory=lambda: [256, 512, 1024])
    d: list[int] = field(default_factory=lambda: [64])
    batch_heads: int = 4
    modes: list[str] = field(default_factory=lambda: ["fwd", "fwdbwd"])
    impls: list[str] = field(default_factory=lambda: list(IMPLS))
    input_scale: float = 1.0  # queries ~ input_scale * N(0, 1): large values probe overflow
    # overrides [kernels] repeats: one int, or one per entry of n (e.g. 1 for the minute-long cubic cases)
    repeats: int | list[int] | None = None
    measure_memory: bool = True  # False skips phase 2 (one more full call per case)


@dataclass
class KernelsConfig:
    sweeps: list[Sweep] = field(default_factory=lambda: [Sweep()])
    repeats: int = 5
    warmup: int = 1
    max_memory_gb: float = 4.0
    reference_max_tuples: int = min(REFERENCE_MAX_TUPLES, 2**24)
    einsum_max_elems: int = 2**27
    out: str = "benchmarks/results/kernels.json"
    plot: str | None = "docs/figures/bench_kernels.png"
    check: bool = True  # compare each implementation's output with polyattn's


def _polynomial(mech: str) -> tuple[str, str]:
    """(label, canonical polynomial) for a mechanism name or a polynomial spec."""
    if mech in MECHANISMS:
        return mech, str(polyattn.parse(MECHANISMS[mech]))
    return mech, str(polyattn.parse(mech))  # raises PolynomialSyntaxError with a column pointer


def load_config(path: str | None) -> KernelsConfig:
    cfg = KernelsConfig()
    if path is None:
        return cfg
    with open(path, "rb") as f:
        data = tomllib.load(f)
    sec = data.get("kernels", data)
    sweeps = sec.pop("sweep", None)
    for k, v in sec.items():
        if not hasattr(cfg, k) or k == "sweeps":
            raise polyattn.PolyAttentionError(
                f"{path}: unknown key {k!r} in [kernels]; known keys: "
                + ", ".join(f for f in KernelsConfig.__dataclass_fields__ if f != "sweeps")
            )
        setattr(cfg, k, v)
    if sweeps is not None:
        cfg.sweeps = []
        for i, s in enumerate(sweeps):
            unknown = set(s) - set(Sweep.__dataclass_fields__)
            if unknown:
                raise polyattn.PolyAttentionError(
                    f"{path}: unknown key(s) {sorted(unknown)} in [[kernels.sweep]] #{i + 1}; known: "
                    + ", ".join(Sweep.__dataclass_fields__)
                )
            sw = Sweep(**s)
            reps = sw.repeats if isinstance(sw.repeats, list) else [sw.repeats or 1]
            if (isinstance(sw.repeats, list) and len(sw.repeats) != len(sw.n)) or min(reps) < 1:
                raise polyattn.PolyAttentionError(
                    f"{path}: [[kernels.sweep]] #{i + 1}: repeats must be an int >= 1 or a list of them, "
                    f"one per entry of n ({len(sw.n)})"
                )
            cfg.sweeps.append(sw)
    return cfg


# ------------------------------------------------------------------------------- implementations
def _inputs(poly: str, n: int, d: int, bh: int, seed: int, grad: bool,
            input_scale: float = 1.0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    t = polyattn.parse(poly).num_variables
    g = torch.Generator().manual_seed(seed)
    qs = [(input_scale * torch.randn(1, bh, n, d, generator=g)).requires_grad_(grad) for _ in range(t)]
    vs = [torch.randn(1, bh, n, d, generator=g).requires_grad_(grad) for _ in range(t - 1)]
    return qs, vs


def naive_einsum(poly: str, qs: Sequence[torch.Tensor], vs: Sequence[torch.Tensor | None], scale: float | None = None) -> torch.Tensor:
    """All-tuple attention in the input dtype: ``n^t`` logits at once, one softmax, one einsum."""
    p = polyattn.parse(poly)
    t = p.num_variables
    allv = tuple(range(1, t + 1))
    s = scale if scale is not None else qs[0].shape[-1] ** -0.5
    logits = None
    for mono in p.monomials:
        spec = ",".join(f"...{letters((v,))}z" for v in mono) + f"->...{letters(mono)}"
        g = expand_to(torch.einsum(spec, *[qs[v - 1] for v in mono]) * s, mono, allv)
        logits = g if logits is None else logits + g
    assert logits is not None
    shape = logits.shape
    w = torch.softmax(logits.reshape(*shape[: len(shape) - t + 1], -1), dim=-1).reshape(shape)
    ops = [w] + [v for v in vs if v is not None]
    specs = ["..." + letters(allv)] + [f"...{letters((j,))}z" for j, v in enumerate(vs, 2) if v is not None]
    return torch.einsum(",".join(specs) + "->...az", *ops)


@dataclass
class _Impl:
    name: str
    fn: Callable[[], torch.Tensor] | None
    skip: str | None = None
    flops: float | None = None
    method: str | None = None
    note: str | None = None
    same: tuple | None = None  # (queries, values, kwargs) for which polyattn computes the same function
    leaves: tuple = ()  # extra tensors whose .grad the runner clears


def _impls(poly: str, qs, vs, sweep: Sweep, cfg: KernelsConfig) -> list[_Impl]:
    p = polyattn.parse(poly)
    t = p.num_variables
    n, d = qs[0].shape[-2], qs[0].shape[-1]
    bh = qs[0].shape[1]
    cap = cfg.max_memory_gb * 2**30
    tuples = bh * n**t
    out: list[_Impl] = []
    pl = polyattn.plan_for(poly, qs, vs)
    for name in sweep.impls:
        if name == "polyattn":
            out.append(_Impl(name, lambda: polyattn.poly_attention(poly, qs, vs), flops=pl.flops, method=pl.method))
        elif name == "sdpa":
            out.append(_Impl(name, lambda: F.scaled_dot_product_attention(qs[0], qs[1], vs[0])))
        elif name == "reference":
            if tuples > cfg.reference_max_tuples:
                out.append(_Impl(name, None, skip=f"{tuples:.2e} tuples > reference_max_tuples={cfg.reference_max_tuples:.2e}"))
            else:
                out.append(_Impl(name, lambda: polyattn.poly_attention(poly, qs, vs, method="reference")))
        elif name == "einsum":
            if tuples > cfg.einsum_max_elems or 3 * 4 * tuples > cap:
                out.append(_Impl(name, None, skip=f"{tuples:.2e} logits > einsum_max_elems={cfg.einsum_max_elems:.2e} or memory cap"))
            else:
                out.append(_Impl(name, lambda: naive_einsum(poly, qs, vs)))
        elif name == "matmul":
            if p.is_tree:
                continue  # trees are compared with SDPA, not with a flop-matched GEMM
            m = n
            k = max(1, round(pl.flops / (2.0 * bh * m * m * m)))
            grad = qs[0].requires_grad
            a = torch.randn(bh, m, m, requires_grad=grad)
            b = torch.randn(bh, m, m * k, requires_grad=grad)
            out.append(_Impl(name, lambda a=a, b=b: a @ b, flops=2.0 * bh * m * m * m * k,
                             note=f"[{bh},{m},{m}] @ [{bh},{m},{m * k}] (forward FLOPs)", leaves=(a, b)))
        elif name == "peers":
            for peer in peer_for(poly):
                reason = peer_status(peer)
                if reason is None:
                    est = {"strassen-attention": 4 * bh * n * n * d * 4, "simplicial-attention": 3 * bh * n**3 * 4,
                           "poly-attention": 6 * bh * n * n * 4}[peer.name]
                    if est > cap:
                        reason = f"{peer.name}: estimated {est / 2**30:.1f} GB > max_memory_gb={cfg.max_memory_gb}"
                if reason is not None:
                    out.append(_Impl(peer.name, None, skip=reason))
                    continue
                run = peer.load()
                pq, pv, pkw = peer.polyattn_args(qs, vs)
                out.append(_Impl(peer.name, lambda run=run: run(qs, vs), note=peer.note, same=(pq, pv, pkw)))
        else:
            raise polyattn.PolyAttentionError(f"unknown implementation {name!r}; choose from {', '.join(IMPLS)}")
    return out


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
    qs, vs = _inputs(poly, n, d, sweep.batch_heads, seed=n * 131 + d, grad=grad, input_scale=sweep.input_scale)
    impls = _impls(poly, qs, vs, sweep, cfg)
    p = polyattn.parse(poly)
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
        run = _runner(im.fn, mode, leaves + list(im.leaves))  # type: ignore[arg-type]
        try:
            run()  # first warm-up, alone: an implementation that fails is reported, not fatal
        except (RuntimeError, MemoryError, ValueError, AssertionError) as e:
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
        if im.flops:
            rec["gflops"] = im.flops / rec["time_s"] / 1e9
        if im.note:
            rec["note"] = im.note
        recs.append(rec)
    return recs


def _memory_case(label: str, poly: str, n: int, d: int, sweep: Sweep, mode: str, cfg: KernelsConfig,
                 recs: list[dict]) -> None:
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

        mem = peak_memory_growth(once)
        out = holder.pop("out")
        rec["peak_mb"] = None if mem is None else mem / 2**20
        rec["finite"] = bool(torch.isfinite(out).all())
        if cfg.check and im.name not in ("sdpa", "matmul"):
            if im.name == "polyattn":
                ref_out = out
            elif im.same is not None:
                with torch.no_grad():
                    want = polyattn.poly_attention(poly, im.same[0], im.same[1], **im.same[2])
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


# ------------------------------------------------------------------------------------ the runner
def _cases(cfg: KernelsConfig) -> list[tuple[Sweep, str, str, int, int, str]]:
    out = []
    for sw in cfg.sweeps:
        for mode in sw.modes:
            if mode not in MODES:
                raise polyattn.PolyAttentionError(f"sweep {sw.name!r}: unknown mode {mode!r}; choose from {MODES}")
        for mech in sw.mechanisms:
            label, poly = _polynomial(mech)
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
    cases = _cases(cfg)
    per_case = [
        _time_case(label, poly, n, d, sw, mode, cfg, _log)
        for sw, label, poly, n, d, mode in tqdm(cases, desc="bench kernels: time", disable=not progress, unit="case")
    ]
    for (sw, label, poly, n, d, mode), recs in tqdm(
        list(zip(cases, per_case)), desc="bench kernels: memory", disable=not progress, unit="case"
    ):
        _memory_case(label, poly, n, d, sw, mode, cfg, recs)
    records = [r for recs in per_case for r in recs]
    doc = {
        "suite": "kernels",
        "environment": _environment(),
        "config": {k: v for k, v in cfg.__dict__.items() if k != "sweeps"}
        | {"sweeps": [s.__dict__ for s in cfg.sweeps]},
        "records": records,
        "summary": summarize(records),
        "log": logs,
    }
    if cfg.out:
        write_json_atomic(cfg.out, doc)
    if cfg.plot:
        from .plot import plot_kernels

        plot_kernels(doc, cfg.plot)
    return doc


def _environment() -> dict:
    import platform

    return {
        "torch": torch.__version__,
        "polyattn": polyattn.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
    }


def summarize(records: list[dict]) -> dict:
    """Same-run ratios per case and fitted time exponents per (mechanism, impl, mode, d)."""
    ok = [r for r in records if r.get("status") == "ok"]
    key = lambda r: (r["sweep"], r["mechanism"], r["n"], r["d"], r["batch_heads"], r["mode"])  # noqa: E731
    groups: dict[tuple, dict[str, dict]] = {}
    for r in ok:
        groups.setdefault(key(r), {})[r["impl"]] = r
    ratios = []
    for k, g in groups.items():
        pa = g.get("polyattn")
        if pa is None:
            continue
        row: dict[str, Any] = dict(zip(("sweep", "mechanism", "n", "d", "batch_heads", "mode"), k))
        row["polyattn_s"] = pa["time_s"]
        row["method"] = pa.get("method")
        if "sdpa" in g:
            row["vs_sdpa"] = pa["time_s"] / g["sdpa"]["time_s"]
            if pa["is_tree"]:
                row["vs_edges_x_sdpa"] = pa["time_s"] / (pa["edges"] * g["sdpa"]["time_s"])
        if "matmul" in g and pa.get("gflops"):
            row["gflops"] = pa["gflops"]
            row["matmul_gflops"] = g["matmul"]["gflops"]
            row["gflops_fraction_of_matmul"] = pa["gflops"] / g["matmul"]["gflops"]
        if pa.get("peak_mb") is not None:
            row["peak_mb"] = pa["peak_mb"]
        for name, r in g.items():
            if name in ("polyattn", "sdpa", "matmul"):
                continue
            row[f"speedup_vs_{name}"] = r["time_s"] / pa["time_s"]
            if r.get("peak_mb") and pa.get("peak_mb"):
                row[f"memory_ratio_vs_{name}"] = r["peak_mb"] / max(pa["peak_mb"], 1e-3)
            row[f"{name}_finite"] = r.get("finite")
        ratios.append(row)
    fits: dict[tuple, list[tuple[int, float]]] = {}
    for r in ok:
        fits.setdefault((r["sweep"], r["mechanism"], r["impl"], r["mode"], r["d"], r["batch_heads"]), []).append(
            (r["n"], r["time_s"])
        )
    exponents = []
    for (sw, mech, impl, mode, d, bh), pts in sorted(fits.items()):
        e = fit_exponent([n for n, _ in pts], [t for _, t in pts])
        if e is not None:
            exponents.append(dict(sweep=sw, mechanism=mech, impl=impl, mode=mode, d=d, batch_heads=bh,
                                  n_min=min(n for n, _ in pts), n_max=max(n for n, _ in pts), exponent=e))
    return {"ratios": ratios, "exponents": exponents}


def format_summary(doc: dict) -> str:
    lines = []
    for r in doc["summary"]["ratios"]:
        extra = " ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in r.items()
            if k not in ("sweep", "mechanism", "n", "d", "batch_heads", "mode", "polyattn_s")
        )
        lines.append(f"{r['mechanism']:>10} n={r['n']:<6} d={r['d']:<3} bh={r['batch_heads']} {r['mode']:<6} "
                     f"polyattn={r['polyattn_s'] * 1e3:9.2f} ms  {extra}")
    for e in doc["summary"]["exponents"]:
        lines.append(f"exponent {e['mechanism']:>10} {e['impl']:<20} {e['mode']:<6} n={e['n_min']}..{e['n_max']}: "
                     f"{e['exponent']:.2f}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- the CLI
DEFAULT_CONFIG = os.path.join("benchmarks", "default.toml")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help=f"TOML config (default: {DEFAULT_CONFIG} if present, else built-in)")
    p.add_argument("--mechanism", "-m", action="append", metavar="NAME",
                   help=f"named mechanism ({', '.join(MECHANISMS)}); repeatable; replaces the config's")
    p.add_argument("--poly", action="append", metavar="SPEC", help="any polynomial, e.g. 'x1*x2 + x2*x3'; repeatable")
    p.add_argument("--n", type=int, nargs="+", help="sequence lengths")
    p.add_argument("--d", type=int, nargs="+", help="head dims")
    p.add_argument("--batch-heads", type=int, help="batch x heads")
    p.add_argument("--modes", nargs="+", choices=MODES)
    p.add_argument("--impls", nargs="+", choices=IMPLS)
    p.add_argument("--repeats", type=int, help="timed runs per implementation (median reported; >= 5 recommended)")
    p.add_argument("--warmup", type=int)
    p.add_argument("--max-memory-gb", type=float, help="skip baselines whose estimated memory exceeds this")
    p.add_argument("--out", help="JSON output path (written atomically)")
    p.add_argument("--plot", help="PNG plot path")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--threads", type=int, help="torch.set_num_threads")
    p.add_argument("--from-json", metavar="PATH",
                   help="do not run: re-summarise an earlier result file (markdown tables; --plot re-plots)")


def config_from_args(args: argparse.Namespace) -> KernelsConfig:
    path = getattr(args, "config", None)
    if path is None and os.path.exists(DEFAULT_CONFIG):
        path = DEFAULT_CONFIG
    cfg = load_config(path)
    mechs = list(getattr(args, "mechanism", None) or []) + list(getattr(args, "poly", None) or [])
    # Mechanisms on the command line make one sweep from the built-in defaults (all impls);
    # otherwise the config's sweeps run, each with the command line's overrides.
    sweeps = []
    for sw in [Sweep(name="cli", mechanisms=mechs)] if mechs else cfg.sweeps:
        over: dict[str, Any] = {}
        for a, k in (("n", "n"), ("d", "d"), ("batch_heads", "batch_heads"), ("modes", "modes"), ("impls", "impls")):
            v = getattr(args, a, None)
            if v is not None:
                over[k] = v
        sweeps.append(replace(sw, **over))
    cfg.sweeps = sweeps
    for a in ("repeats", "warmup", "max_memory_gb", "out", "plot"):
        v = getattr(args, a, None)
        if v is not None:
            setattr(cfg, a, v)
    if getattr(args, "no_plot", False):
        cfg.plot = None
    if cfg.repeats < 1:
        raise polyattn.PolyAttentionError("--repeats must be >= 1 (5 or more for a reported median)")
    return cfg


def format_markdown(doc: dict) -> str:
    """Markdown tables of the same-run ratios and the fitted exponents (for docs/benchmarks.md)."""
    out = [
        "| mechanism | n | d | b*h | mode | method | polyattn [ms] | peak [MB] | / SDPA | / (e x SDPA) "
        "| baseline | x faster | x less memory | baseline finite | GFLOP/s (of matmul) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def f(v: Any, spec: str = ".3g") -> str:
        return "" if v is None else format(v, spec)

    for r in doc["summary"]["ratios"]:
        peers = sorted({k[len("speedup_vs_"):] for k in r if k.startswith("speedup_vs_")})
        gf = ""
        if r.get("gflops") is not None:
            gf = f"{r['gflops']:.1f} ({100 * r['gflops_fraction_of_matmul']:.0f}% of {r['matmul_gflops']:.1f})"
        lead = (f"| {r['mechanism']} | {r['n']} | {r['d']} | {r['batch_heads']} | {r['mode']} | {r.get('method', '')} "
                f"| {1e3 * r['polyattn_s']:.1f} | {f(r.get('peak_mb'), '.1f')} | {f(r.get('vs_sdpa'))} "
                f"| {f(r.get('vs_edges_x_sdpa'))} ")
        if not peers:
            out.append(lead + f"|  |  |  |  | {gf} |")
        for name in peers:
            out.append(lead + f"| {name} | {f(r.get('speedup_vs_' + name))} | {f(r.get('memory_ratio_vs_' + name))} "
                       f"| {r.get(name + '_finite', '')} | {gf} |")
    out += ["", "| mechanism | impl | mode | d | b*h | n range | fitted time exponent |", "|---|---|---|---|---|---|---|"]
    for e in doc["summary"]["exponents"]:
        out.append(f"| {e['mechanism']} | {e['impl']} | {e['mode']} | {e['d']} | {e['batch_heads']} | "
                   f"{e['n_min']}..{e['n_max']} | {e['exponent']:.2f} |")
    skipped = [r for r in doc["records"] if str(r.get("status", "")).startswith(("skipped", "error"))]
    if skipped:
        out += ["", "Not run:", ""]
        for r in skipped:
            out.append(f"- {r['mechanism']} n={r['n']} {r['mode']} {r['impl']}: {r['status']}")
    return "\n".join(out)


def main(args: argparse.Namespace) -> int:
    src = getattr(args, "from_json", None)
    if src:
        import json

        with open(src) as f:
            doc = json.load(f)
        doc["summary"] = summarize(doc["records"])
        print(format_markdown(doc))
        if getattr(args, "plot", None) and not getattr(args, "no_plot", False):
            from .plot import plot_kernels

            plot_kernels(doc, args.plot)
            print(f"wrote {args.plot}")
        return 0
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    cfg = config_from_args(args)
    doc = run_kernels(cfg, progress=not getattr(args, "no_progress", False))
    print(format_summary(doc))
    if cfg.out:
        print(f"wrote {cfg.out}")
    if cfg.plot:
        print(f"wrote {cfg.plot}")
    return 0


def add_suite(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "kernels",
        help="time/memory of exact kernels vs SDPA, reference, naive einsum and peer packages",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    add_arguments(p)
    p.set_defaults(handler=main)
    return p

