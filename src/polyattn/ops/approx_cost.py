"""Measure the :class:`~polyattn.planning.approx_cost.CostModel` on the running machine.

Three kinds of measurement, all cached for the life of the process (keyed by dtype, thread count
and shape), all with their own inputs (no global RNG, no autograd), timed best-of-a-few with the
process CPU time when torch runs one thread on the CPU (robust on a shared machine) and with the
wall clock otherwise:

* :func:`kernel_constants` — the approx kernel's own constants: throughput of the transposed
  feature-space products (``[dv+1, r] @ [r, rows]`` and ``[dv+1, rows] @ [rows, r]`` on a
  cache-sized chunk, as the kernel runs them), the rate of the feature construction and the fixed
  cost of one torch op (two chunk sizes separate the two), and the per-row and per-call costs of
  everything else (whole degree-0 calls at two sizes). About 0.1 s.
* :func:`native_constants` — the native split kernel's product rate (construction included), when
  the plan runs it: one apply and one summary over a full no-grad chunk. About 0.03 s.
* :func:`exact_probe` — the exact plan (``make_plan(spec, "auto")``) of a scaled-down copy of the
  problem (same polynomial, d, dv, batch, causality; lengths shrunk until the plan costs at most
  :data:`PROBE_FLOPS`) is run; its seconds per plan-FLOP scale to the full problem by the FLOP
  count. Best of two runs, after one warm-up when cheap.
* :func:`approx_probe` — the approximation itself (same degree, rank and chunking) on a
  scaled-down copy, about :data:`PROBE_SECONDS` long: the factor by which the model is off at
  this shape.

The planner combines them (:mod:`polyattn.planning.approx_cost`); nothing here decides anything.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from functools import lru_cache

import torch

from ..errors import PolyAttentionError
from ..planning import ProblemSpec
from ..planning.approx import ApproxPlan, CostModel, chunk_rows, plan_approx
from ..planning.strategy import make_plan
from .approx_features import Features
from .inputs import prepare

__all__ = ["kernel_constants", "native_constants", "exact_probe", "approx_probe", "cost_model", "PROBE_FLOPS", "PROBE_SECONDS",
           "clear_cache"]

#: Largest plan-FLOP count of the exact probe (about 30 ms at the tree kernel's ~30 GFLOP/s).
PROBE_FLOPS = 1e9

#: Target duration of the approx probe (its rows are chosen from the model's estimate).
PROBE_SECONDS = 0.03

_EXACT_CACHE: dict[tuple, tuple[float, str]] = {}
_APPROX_CACHE: dict[tuple, tuple[float, str]] = {}
CPU = torch.device("cpu")


def clear_cache() -> None:
    """Forget every measurement (the next approx call re-measures)."""
    kernel_constants.cache_clear()
    native_constants.cache_clear()
    _EXACT_CACHE.clear()
    _APPROX_CACHE.clear()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _clock(device: torch.device):  # noqa: ANN202
    """Process CPU time when torch runs one thread on the CPU (immune to other jobs taking the core;
    equal to wall time on an idle machine), else wall time."""
    if device.type == "cpu" and torch.get_num_threads() == 1:
        return time.process_time
    return time.perf_counter


def _best(fn, reps: int, device: torch.device = CPU) -> float:  # noqa: ANN001
    clock = _clock(device)
    best = math.inf
    for _ in range(reps):
        _sync(device)
        t0 = clock()
        fn()
        _sync(device)
        best = min(best, clock() - t0)
    return best


@lru_cache(maxsize=64)
def kernel_constants(dtype: torch.dtype, threads: int, dv1: int,
                     device: torch.device = CPU) -> tuple[float, float, float, float, float]:
    """``(product FLOP/s, feature entries/s, seconds per op, seconds per row, seconds per call)``
    of the approx kernel on this machine (the last two from whole degree-0 calls at two sizes)."""
    del threads  # part of the cache key: the measurement runs at the current thread count
    d, p = 16, 4
    feats = Features(d, p, 1.0, device, dtype)
    r = feats.rank
    g = torch.Generator().manual_seed(0)
    spec = ProblemSpec.build("x1*x2", seq_len=1 << 16, head_dim=d, value_dim=max(1, dv1 - 1),
                             itemsize=torch.tensor([], dtype=dtype).element_size())
    rows = chunk_rows(spec, r, 1 << 40)
    small = 8  # rows of a chunk whose construction is almost pure per-op dispatch
    with torch.no_grad():
        qt_big = (torch.rand(d, rows, generator=g, dtype=dtype) - 0.5).to(device)
        qt_small = (torch.rand(d, small, generator=g, dtype=dtype) - 0.5).to(device)
        a = torch.randn(dv1, r, generator=g, dtype=dtype).to(device)
        e = torch.randn(dv1, rows, generator=g, dtype=dtype).to(device)
        reps = 4

        def builds(qt: torch.Tensor) -> float:
            return _best(lambda: [feats.cols(qt) for _ in range(reps)], 3, device) / reps

        def chunk() -> None:
            ft = feats.cols(qt_big)
            (a @ ft).mul_(e)
            e @ ft.transpose(-1, -2)

        def chunks() -> None:
            for _ in range(reps):
                chunk()

        t_small, t_big = builds(qt_small), builds(qt_big)
        t_chunk = _best(chunks, 3, device) / reps
    ops = 1 + d * (p - 1)
    # t(rows) = ops * t_op + rows * r / rate; the small chunk is (nearly) all dispatch
    t_op = max(t_small / ops, 1e-7)
    per_entry = max((t_big - t_small) / (r * (rows - small)), t_big / (r * rows) * 0.1, 1e-12)
    t_prod = max(t_chunk - t_big, 1e-9)
    t_row, t_call = _call_overheads(dtype, dv1, device)
    return 2 * 2 * dv1 * r * rows / t_prod, 1.0 / per_entry, t_op, t_row, t_call


def _call_overheads(dtype: torch.dtype, dv1: int, device: torch.device) -> tuple[float, float]:
    """``(seconds per row, seconds per call)`` of whole approx calls with degree 0 (features and
    products negligible): statistics, values, normalisation, planning."""
    from .approx import approx_attention, approx_hook

    g = torch.Generator().manual_seed(1)
    times = {}
    for n in (256, 4096):
        q = [(torch.rand(n, 16, generator=g, dtype=dtype) - 0.5).to(device) for _ in range(3)]
        v = [torch.randn(n, dv1 - 1, generator=g, dtype=dtype).to(device) if dv1 > 1 else None for _ in range(2)]
        prob = prepare("x1*x2 + x2*x3", q, v)
        opts = {"degree": 0, "allow_slower": True}
        structure = make_plan(prob.spec, "approx", 1 << 40)

        def call() -> None:
            approx_attention(prob, approx_hook(prob, structure, opts))  # noqa: B023

        with torch.no_grad():
            call()
            times[n] = _best(call, 3, device)
    per_row = max((times[4096] - times[256]) / (3 * (4096 - 256)), 0.0)
    return per_row, max(times[256] - 3 * 256 * per_row, 0.0)


def _probe_spec(spec: ProblemSpec, budget: int) -> ProblemSpec:
    """``spec`` with all lengths scaled by one factor so that its exact plan costs <= PROBE_FLOPS."""
    full = make_plan(spec, "auto", budget)
    if full.flops <= PROBE_FLOPS:
        return spec
    lo, hi = 0.0, 1.0
    for _ in range(30):
        mid = (lo + hi) / 2
        lens = tuple(max(1, int(n * mid)) for n in spec.seq_lens)
        if make_plan(replace(spec, seq_lens=lens), "auto", budget).flops <= PROBE_FLOPS:
            lo = mid
        else:
            hi = mid
    return replace(spec, seq_lens=tuple(max(1, int(n * lo)) for n in spec.seq_lens))


def exact_probe(spec: ProblemSpec, budget: int, dtype: torch.dtype,
                device: torch.device = CPU) -> tuple[float, str]:
    """``(seconds per plan-FLOP, description)`` of the exact plan of ``spec``, measured on a scaled copy."""
    key = (replace(spec, seq_lens=()), tuple(spec.seq_lens), budget, dtype, device, torch.get_num_threads())
    hit = _EXACT_CACHE.get(key)
    if hit is not None:
        return hit
    from .dispatch import run

    small = _probe_spec(spec, budget)
    plan = make_plan(small, "auto", budget)
    prob = _random_problem(small, dtype, device)
    with torch.no_grad():
        first = _best(lambda: run(prob, plan), 1, device)
        t = min(first, _best(lambda: run(prob, plan), 2 if first < 0.1 else 1, device))
    lens = "/".join(map(str, sorted(set(small.seq_lens))))
    out = (t / max(plan.flops, 1.0), f"probe of {plan.method!r} at n={lens} ({fmt_ms(t)}), scaled by FLOPs")
    _EXACT_CACHE[key] = out
    return out


def fmt_ms(t: float) -> str:
    return f"{t * 1e3:.3g} ms"


def cost_model(spec: ProblemSpec, budget: int, dtype: torch.dtype,
               device: torch.device = CPU, native: int = 0) -> CostModel:
    """The measured :class:`CostModel` for one approx call (kernel constants + exact probe; with
    ``native`` threads, the native split kernel's rate too)."""
    threads = torch.get_num_threads()
    prod, build, op, row, call = kernel_constants(dtype, threads, spec.value_dim + 1, device)
    per_flop, probe = exact_probe(spec, budget, dtype, device)
    rate = native_constants(native, spec.value_dim + 1) if native else 0.0
    kernel = f"; native kernel {rate / 1e9:.3g} GFLOP/s" if rate else ""
    return CostModel(prod, build, op, row, call, per_flop, probe, native_flops=rate,
                     source=f"measured on this machine ({threads} thread{'s' if threads > 1 else ''}{kernel})")


@lru_cache(maxsize=16)
def native_constants(threads: int, dv1: int) -> float:
    """Product FLOP/s of the native split kernel (construction included) on this machine: one
    apply and one summary over a full no-grad chunk at d = 16, p = 4 (float32, CPU). ~30 ms."""
    from ..planning.approx_split import split_top
    from .approx_native import NativeProducts

    d, p = 16, 4
    rank = math.comb(d + p, p)
    spec = ProblemSpec.build("x1*x2", seq_len=1 << 20, head_dim=d, value_dim=max(1, dv1 - 1))
    split = split_top(spec, rank, p, 1 << 40, (threads, ""))  # as the planner makes it for a long sequence
    assert split is not None
    rows = split.native_rows
    prods = NativeProducts(split, 1.0, dv1, CPU, torch.float32)
    g = torch.Generator().manual_seed(2)
    qt = torch.rand(d, rows, generator=g) - 0.5
    a = prods.prepare(torch.randn(dv1, rank, generator=g))
    m = torch.randn(dv1, rows, generator=g)

    def both() -> None:
        ch = prods.chunk(qt)
        prods.apply(a, ch)
        prods.summarize(m, ch, None)

    with torch.no_grad():
        both()
        t = _best(both, 3)
    return 2 * 2 * dv1 * rank * rows / t


def _random_problem(spec: ProblemSpec, dtype: torch.dtype, device: torch.device, amp: float = 0.5):  # noqa: ANN202
    """Inputs of ``spec``'s shape: queries uniform in [-amp, amp], Gaussian values."""
    g = torch.Generator().manual_seed(0)
    batch = (spec.batch,) if spec.batch > 1 else ()
    q = [(amp * (2 * torch.rand(*batch, n, spec.head_dim, generator=g, dtype=dtype) - 1)).to(device)
         for n in spec.seq_lens]
    v = [torch.randn(*batch, n, spec.value_dim, generator=g, dtype=dtype).to(device) if hv else None
         for n, hv in zip(spec.seq_lens[1:], spec.has_values)]
    return prepare(spec.polynomial, q, v, causal=spec.causal or False)


def approx_probe(plan: ApproxPlan, model: CostModel, dtype: torch.dtype,
                 device: torch.device = CPU) -> tuple[float, str]:
    """``(measured / modelled seconds, description)`` of the approx kernel on a scaled-down copy of
    ``plan``'s problem (same degree, rank and chunk rows; about :data:`PROBE_SECONDS` long)."""
    spec = plan.spec
    key = (replace(spec, seq_lens=()), plan.degree, plan.basis, plan.chunk_rows, plan.memory_budget, dtype,
           device, torch.get_num_threads(), plan.split.native if plan.split is not None else 0)
    hit = _APPROX_CACHE.get(key)
    if hit is not None:
        return hit
    from .approx import approx_attention, approx_hook

    est = plan.seconds if plan.seconds else PROBE_SECONDS
    frac = min(1.0, PROBE_SECONDS / max(est, 1e-9))
    chunk = max(1, plan.chunk_rows)
    lens = tuple(min(n, max(4 * chunk, int(n * frac))) for n in spec.seq_lens)
    small = replace(spec, seq_lens=lens)
    # small entries: every forced degree has a certified bound, and the kernel's time does not
    # depend on the values of the entries
    prob = _random_problem(small, dtype, device, amp=0.05)
    opts = {"degree": plan.degree, "basis": plan.basis, "allow_slower": True}
    structure = make_plan(small, "approx", plan.memory_budget)

    def call() -> None:
        approx_attention(prob, approx_hook(prob, structure, opts))

    try:
        native = (plan.split.native, "") if plan.split is not None else (0, "")  # model the kernel that runs
        modelled = plan_approx(small, entry_bound=0.05, degree=plan.degree, basis=plan.basis,
                               memory_budget=plan.memory_budget, cost_model=model, allow_slower=True,
                               native=native).seconds
        with torch.no_grad():
            t = _best(call, 2, device)
    except PolyAttentionError:  # a probe that cannot be planned leaves the model as it is
        return 1.0, "no probe of the approx kernel (could not plan it)"
    scale = t / max(modelled or 0.0, 1e-12)
    out = (scale, f"probe of approx at n={'/'.join(map(str, sorted(set(lens))))} ({fmt_ms(t)}; "
                  f"{scale:.2g}x the model)")
    _APPROX_CACHE[key] = out
    return out
