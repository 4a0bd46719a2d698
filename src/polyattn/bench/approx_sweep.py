"""Benchmarks of ``method="approx"`` against the exact method on ordinary data (issue 16).

* ``sweep``      — path ``x1*x2 + x2*x3``, queries uniform in [-0.5, 0.5], values (dv = 8) from three
  distributions (``uniform`` in [-0.5, 0.5], ``gaussian`` N(0, 1), ``heavy`` Student t with 2 dof),
  d in {8, 16, 32}, n in ``--sizes`` (default 4096, 16384, 65536), accuracy ``tolerance=1e-3``
  (absolute) and ``rtol=1e-3`` (relative to the value radius R). Per case, in one process: the
  plan's decision and its predicted times, the measured approx and exact times (their ratio is
  the speedup), the observed max error against the exact output and the stated bound. Cases the
  planner refuses as *slower than exact* are still run (``allow_slower=True``) when the prediction
  is below ``--max-seconds``, to check the prediction; cases it refuses as *unreachable* (rank or
  degree limit) are reported as such.
* ``throughput`` — the high-rank kernel (r ~ 5k-20k) against FLOP-matched ``torch.matmul``: the
  feature-space products' FLOPs divided by the whole call's time (the kernel the plan names: the
  native one where it builds), vs one square matmul of the same FLOPs, in one round-robin with the
  torch split GEMMs (whole call, and their products alone on a precomputed chunk: the torch path's
  ceiling if the features were free) and the materialised products.
* ``calibrate``  — the measured cost-model constants (:mod:`polyattn.ops.approx_cost`) and the
  exact probe of the target problem: the numbers behind ``DEFAULT_COST_MODEL``.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from polyattn.ops.approx import approx_attention
from polyattn.ops.approx_cost import cost_model, kernel_constants, native_constants
from polyattn.ops.approx_features import Features
from polyattn.ops.approx_native import native_threads
from polyattn.ops.approx_split import products_for
from polyattn.ops.inputs import prepare
from polyattn.planning import ProblemSpec
from polyattn.planning.approx import ApproximationRangeError, ApproxPlan, chunk_rows, feature_rank
from polyattn.planning.approx_cost import NATIVE_GAIN

from ..functional import plan_for, poly_attention
from ..planning import plan as make_structure_plan
from ..timing import median, time_interleaved

__all__ = ["suite_sweep", "suite_throughput", "suite_calibrate", "DISTRIBUTIONS", "values"]

PATH = "x1*x2 + x2*x3"
CPU = torch.device("cpu")
DISTRIBUTIONS = ("uniform", "gaussian", "heavy")


def values(dist: str, n: int, dv: int, g: torch.Generator) -> torch.Tensor:
    """Value rows: ``uniform`` in [-0.5, 0.5], ``gaussian`` N(0, 1), ``heavy`` Student t (2 dof)."""
    if dist == "uniform":
        return torch.rand(n, dv, generator=g) - 0.5
    z = torch.randn(n, dv, generator=g, dtype=torch.float64)
    if dist == "heavy":
        chi2 = torch.randn(n, dv, 2, generator=g, dtype=torch.float64).pow(2).sum(-1)
        z = z / (chi2 / 2).sqrt()
    elif dist != "gaussian":
        raise ValueError(f"unknown value distribution {dist!r}; choose from {DISTRIBUTIONS}")
    return z.float()


def _queries(n: int, d: int, g: torch.Generator) -> list[torch.Tensor]:
    return [torch.rand(n, d, generator=g) - 0.5 for _ in range(3)]


def _best(fn, reps: int):  # noqa: ANN001, ANN202
    from .approx import clock

    best, out = math.inf, None
    for _ in range(max(1, reps)):
        t0 = clock()
        out = fn()
        best = min(best, clock() - t0)
    return best, out


# ------------------------------------------------------------------------------- sweep
def _plan_or_reason(q, v, acc: dict):  # noqa: ANN001, ANN202
    """``(plan, decision)``: the measured plan, also when refused as slower (then the decision says so)."""
    from polyattn.ops.approx import measure, measured_plan, plan_options
    from polyattn.ops.inputs import prepare
    from polyattn.planning.approx import plan_approx

    prob = prepare(PATH, q, v)
    structure = make_structure_plan(PATH, seq_len=tuple(prob.spec.seq_lens), head_dim=prob.spec.head_dim,
                              value_dim=prob.spec.value_dim, method="approx")
    kw = plan_options(structure, acc)
    stats = measure(prob)
    try:
        first = plan_approx(prob.spec, stats=stats, scale=prob.scale, allow_slower=True, **kw)
    except ApproximationRangeError as e:
        return None, "unreachable: " + str(e).split(";")[0]
    plan = measured_plan(prob, first, stats, kw, allow_slower=True)
    return plan, "approx" if plan.faster_than_exact else "exact (approx refused as slower)"


def _sweep_case(q, v, ref, t_ex: float, acc: dict, args: argparse.Namespace) -> dict:  # noqa: ANN001
    plan, decision = _plan_or_reason(q, v, acc)
    row: dict = {"decision": decision}
    if plan is None:
        return row
    row.update(degree=plan.degree, rank=plan.rank, target=plan.target, stated_bound=plan.error_bound,
               value_radius=plan.value_radius, logit_bound=max(plan.logit_bound),
               predicted_approx_seconds=plan.seconds, predicted_exact_seconds=plan.exact_seconds,
               predicted_speedup=plan.exact_seconds / plan.seconds)
    if plan.seconds > args.max_seconds:
        row["skipped"] = f"predicted {plan.seconds:.3g} s > --max-seconds"
        return row
    t_apx, out = _best(lambda: poly_attention(PATH, q, v, method="approx", allow_slower=True, **acc),
                       args.reps)
    err = (out.double() - ref.double()).abs().max().item()
    row.update(approx_seconds=t_apx, speedup=t_ex / t_apx, observed_error=err,
               bound_holds=err <= plan.error_bound)
    return row


def suite_sweep(args: argparse.Namespace) -> dict:
    sizes = args.sizes or [4096, 16384, 65536]
    dims = args.dims or [8, 16, 32]
    dv = 8
    accs = [{"tolerance": 1e-3}, {"rtol": 1e-3}]
    rows = []
    _warm_up()
    for n in sizes:
        for d in dims:
            g = torch.Generator().manual_seed(1000 * d + n % 997)
            q = _queries(n, d, g)
            for dist in DISTRIBUTIONS:
                v = [values(dist, n, dv, g) for _ in range(2)]
                t_ex, ref = _best(lambda q=q, v=v: poly_attention(PATH, q, v), args.exact_reps)
                for acc in accs:
                    row = {"n": n, "d": d, "dv": dv, "values": dist, **{"accuracy": acc}, "exact_seconds": t_ex}
                    row.update(_sweep_case(q, v, ref, t_ex, acc, args))
                    rows.append(row)
                    _print_row(row)
    _plot_sweep(rows, args)
    return {"polynomial": PATH, "queries": "uniform [-0.5, 0.5]", "dv": dv, "sizes": sizes, "dims": dims,
            "distributions": {"uniform": "uniform [-0.5, 0.5]", "gaussian": "N(0, 1)",
                              "heavy": "Student t, 2 degrees of freedom"}, "rows": rows}


def _warm_up() -> None:
    """The first exact call of a process pays a one-time initialisation (~1 s): not part of any timing."""
    g = torch.Generator().manual_seed(0)
    q = _queries(256, 16, g)
    poly_attention(PATH, q, [values("gaussian", 256, 8, g) for _ in range(2)])


def _print_row(r: dict) -> None:
    (k, val), = r["accuracy"].items()
    head = f"n={r['n']:6d} d={r['d']:2d} {r['values']:8s} {k}={val:g}: "
    if r.get("degree") is None:
        print(head + r["decision"], flush=True)
        return
    s = (f"p={r['degree']} r={r['rank']:6d} exact {r['exact_seconds']:.3f}s predicted {r['predicted_speedup']:.3g}x "
         f"[{r['decision']}]")
    if "approx_seconds" in r:
        s += (f" measured approx {r['approx_seconds']:.3f}s = {r['speedup']:.3g}x, err {r['observed_error']:.2g} "
              f"<= bound {r['stated_bound']:.2g}: {r['bound_holds']}")
    else:
        s += " " + r.get("skipped", "")
    print(head + s, flush=True)


def _plot_sweep(rows: list[dict], args: argparse.Namespace) -> None:
    from .approx import _plt, _save_fig

    plt = _plt()
    nmax = max(r["n"] for r in rows)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ax = axes[0]
    dists = list(DISTRIBUTIONS)
    dims = sorted({r["d"] for r in rows})
    width = 0.8 / (len(dims) * 2)
    for j, d in enumerate(dims):
        for m, key in enumerate(("tolerance", "rtol")):
            xs, ys, refused = [], [], []
            for i, dist in enumerate(dists):
                x = i + (j * 2 + m - len(dims) + 0.5) * width
                r = next((r for r in rows if r["n"] == nmax and r["d"] == d and r["values"] == dist
                          and key in r["accuracy"]), None)
                if r is not None and "speedup" in r:
                    xs.append(x)
                    ys.append(r["speedup"])
                elif r is not None:
                    refused.append(x)
            hatch = "//" if key == "rtol" else ""
            label = f"d={d}, {key}=1e-3"
            bars = ax.bar(xs, ys, width, color=f"C{j}", hatch=hatch, edgecolor="k", lw=0.4,
                          label=label if xs else None)
            for bar, y in zip(bars, ys):
                if y < 1:
                    bar.set_alpha(0.35)
            ax.plot(refused, [1.0] * len(refused), "x", color=f"C{j}", ms=8,
                    label=None if xs or not refused else label + " (refused)")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_yscale("log")
    ax.set_xticks(range(len(dists)))
    ax.set_xticklabels(dists)
    ax.set_ylabel("exact time / approx time (same run)")
    ax.set_title(f"{PATH}, n={nmax}: speedup (pale: slower, refused unless allow_slower=True;\n"
                 "x: accuracy unreachable within the rank limit, refused)", fontsize=8)
    ax.legend(fontsize=6, ncol=2)
    ax = axes[1]
    done = [r for r in rows if "observed_error" in r]
    for dist, mk in zip(dists, "o^s"):
        rs = [r for r in done if r["values"] == dist]
        ax.loglog([r["stated_bound"] for r in rs], [max(r["observed_error"], 1e-12) for r in rs], mk, ms=4,
                  label=dist, alpha=0.7)
    if done:
        lo = min(r["stated_bound"] for r in done)
        hi = max(r["stated_bound"] for r in done)
        ax.loglog([lo, hi], [lo, hi], "k-", lw=0.8, label="observed = stated")
    ax.set_xlabel("stated a-priori bound")
    ax.set_ylabel("observed max |approx - exact|")
    ax.set_title("error: observed vs stated (all sizes)", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[2]
    for dist, mk in zip(dists, "o^s"):
        rs = [r for r in done if r["values"] == dist]
        ax.loglog([r["predicted_speedup"] for r in rs], [r["speedup"] for r in rs], mk, ms=4, label=dist, alpha=0.7)
    if done:
        xs = [r["predicted_speedup"] for r in done] + [r["speedup"] for r in done]
        ax.loglog([min(xs), max(xs)], [min(xs), max(xs)], "k-", lw=0.8, label="measured = predicted")
    ax.axhline(1.0, color="r", lw=0.6, ls=":")
    ax.axvline(1.0, color="r", lw=0.6, ls=":")
    ax.set_xlabel("predicted speedup (plan's cost model)")
    ax.set_ylabel("measured speedup")
    ax.set_title("the plan's time estimates vs measurement", fontsize=9)
    ax.legend(fontsize=7)
    _save_fig(fig, args.out / "approx_sweep.png")


# ------------------------------------------------------------------------------- throughput
#: (d, p) pairs with feature rank r ~ 5k-20k
THROUGHPUT_CONFIGS = ((16, 4), (32, 3), (20, 4), (16, 5))


def _aligned_square(flops: float) -> int:
    """Side of the FLOP-matched square matmul, rounded to a multiple of 64: MKL runs odd sizes
    (e.g. m = 2253) at ~70 % of its speed at aligned ones, which would flatter every ratio."""
    return max(64, round((flops / 2) ** (1 / 3) / 64) * 64)


def _products_alone(plan: ApproxPlan, q: torch.Tensor, dv1: int, n: int) -> tuple[Callable[[], None], Callable[[], None]]:
    """(products, construction) of the call on one precomputed chunk, repeated to cover its rows:
    the path's two edges = two summaries and two applications over n rows, three feature builds."""
    g = torch.Generator().manual_seed(0)
    qt = q.t().contiguous()
    feats = Features(plan.spec.head_dim, plan.degree, 1.0, q.device, q.dtype)  # type: ignore[arg-type]
    prods = products_for(plan, feats, dv1)
    rows = prods.chunk_rows(grad=False)
    ch = prods.chunk(qt[:, :rows])
    ch = tuple(x.clone() for x in ch) if isinstance(ch, tuple) else ch.clone()
    a = prods.prepare(torch.randn(dv1, plan.rank, generator=g))
    m = torch.randn(dv1, rows, generator=g)
    k = math.ceil(n / rows)

    def products() -> None:
        with torch.no_grad():
            acc = None
            for _ in range(2 * k):
                prods.apply(a, ch)
                acc = prods.summarize(m, ch, acc)

    def build() -> None:
        for _ in range(3):
            for r0 in range(0, n, rows):
                prods.chunk(qt[:, r0 : r0 + rows])

    return products, build


def _throughput_case(d: int, p: int, n: int, dv: int, reps: int) -> dict:
    r = feature_rank(d, p)
    g = torch.Generator().manual_seed(d * 100 + p)
    q = [x * 0.2 for x in _queries(n, d, g)]
    v = [values("gaussian", n, dv, g) for _ in range(2)]
    plan: ApproxPlan = plan_for(PATH, q, v, method="approx", degree=p, allow_slower=True)  # type: ignore[assignment]
    prob = prepare(PATH, q, v)
    split = plan.split
    torch_split = replace(plan, split=replace(split, native=0)) if split is not None and split.native else None
    materialised = replace(plan, split=None)
    # 4 products of 2 n r (dv+1) FLOPs: F3^T V3, F2 @ A3, F2^T m2, F1 @ A2
    flops = 4 * 2.0 * n * r * (dv + 1)
    m = _aligned_square(flops)
    x, y = torch.randn(m, m, generator=g), torch.randn(m, m, generator=g)
    products, build = _products_alone(torch_split or plan, q[0], dv + 1, n)
    from .approx import clock

    fns: dict[str, Callable[[], Any]] = {
        "call": lambda: poly_attention(PATH, q, v, method="approx", degree=p, allow_slower=True),
        "materialised": lambda: approx_attention(prob, materialised),
        "square": lambda: x @ y,
        "products": products,
        "build": build,
    }
    if torch_split is not None:
        fns["torch_split"] = lambda: approx_attention(prob, torch_split)
    with torch.no_grad():
        ts = time_interleaved(fns, repeats=max(1, reps), clock=clock)
    best = {k: min(t) for k, t in ts.items()}
    t, t_sq = best["call"], best["square"]
    rate_sq = 2.0 * m**3 / t_sq
    kernel = "materialised" if split is None else ("native" if split.native else "split")
    row: dict[str, Any] = {"d": d, "degree": p, "rank": r, "n": n, "dv": dv, "products_form": kernel,
           "chunk_rows": split.rows if split is not None else plan.chunk_rows,
           "native_chunk_rows": split.native_rows if split is not None and split.native else None,
           "low_rank": split.low_rank if split is not None else None,
           "gemms_per_product": len(split.segments) if split is not None else 1,
           "padding": split.padding() if split is not None else 1.0,
           "product_flops": flops, "approx_seconds": t, "approx_seconds_median": median(ts["call"]),
           "achieved_flops_per_s": flops / t,
           "square_matmul": {"m": m, "seconds": t_sq, "flops_per_s": rate_sq},
           "ratio_vs_square_matmul": flops / t / rate_sq,
           "ratio_vs_square_matmul_medians": (flops / median(ts["call"])) / (2.0 * m**3 / median(ts["square"])),
           "materialised_seconds": best["materialised"], "speedup_vs_materialised": best["materialised"] / t,
           "torch_split_seconds": best.get("torch_split"),
           "torch_split_ratio_vs_square_matmul": flops / best["torch_split"] / rate_sq if "torch_split" in best else None,
           "speedup_vs_torch_split": best["torch_split"] / t if "torch_split" in best else None,
           "torch_products_alone_seconds": best["products"],
           "torch_products_alone_ratio_vs_square": flops / best["products"] / rate_sq,
           "torch_feature_build_seconds": best["build"]}
    vs_split = (f"torch split GEMMs {100 * row['torch_split_ratio_vs_square_matmul']:.0f}% "
                f"({row['speedup_vs_torch_split']:.2f}x slower); " if "torch_split" in best else "")
    rows_text = f"rows={row['native_chunk_rows']}" if kernel == "native" else f"rows={row['chunk_rows']}"
    print(f"d={d} p={p} r={r:6d} ({kernel}, {rows_text}): call {t:.3f}s = "
          f"{flops / t / 1e9:.1f} GFLOP/s of products; square matmul (m={m}) {rate_sq / 1e9:.1f} GFLOP/s -> "
          f"{100 * row['ratio_vs_square_matmul']:.0f}% (medians {100 * row['ratio_vs_square_matmul_medians']:.0f}%); "
          f"{vs_split}materialised {best['materialised']:.3f}s ({row['speedup_vs_materialised']:.2f}x slower)",
          flush=True)
    return row


def suite_throughput(args: argparse.Namespace) -> dict:
    n = args.n or 65536
    rows_out = [_throughput_case(d, p, n, 8, args.reps) for d, p in THROUGHPUT_CONFIGS]
    _plot_throughput(rows_out, args)
    return {"polynomial": PATH, "rows": rows_out,
            "note": "ratio_vs_square_matmul = (product FLOPs / call time) / (square matmul FLOP/s), best of the "
                    "round-robin repeats of one run; the square side is rounded to a multiple of 64"}


def _plot_throughput(rows: list[dict], args: argparse.Namespace) -> None:
    from .approx import _plt, _save_fig

    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.4))
    labels = [f"d={r['d']}, p={r['degree']}\nr={r['rank']:,}" for r in rows]
    xs = range(len(rows))
    w = 0.2
    ax.bar([x - 1.5 * w for x in xs], [r["achieved_flops_per_s"] / 1e9 for r in rows], w,
           label=f"approx call, {rows[0]['products_form']} kernel (products' FLOPs / call time)")
    ax.bar([x - 0.5 * w for x in xs], [r["square_matmul"]["flops_per_s"] / 1e9 for r in rows], w, color="0.5",
           label="square torch.matmul, same FLOPs")
    ax.bar([x + 0.5 * w for x in xs], [r["product_flops"] / (r["torch_split_seconds"] or math.inf) / 1e9 for r in rows],
           w, color="C2", label="torch split GEMMs (the autograd path)")
    ax.bar([x + 1.5 * w for x in xs], [r["product_flops"] / r["materialised_seconds"] / 1e9 for r in rows], w,
           color="C3", label="materialised features (top degree built)")
    for x, r in zip(xs, rows):
        ax.annotate(f"{100 * r['ratio_vs_square_matmul']:.0f}%", (x - 1.5 * w, r["achieved_flops_per_s"] / 1e9),
                    ha="center", va="bottom", fontsize=7)
    ax.set_xticks(list(xs))
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_ylabel("GFLOP/s (1 thread)")
    ax.set_title(f"{PATH}, n={rows[0]['n']}, dv={rows[0]['dv']}: high-rank throughput", fontsize=9)
    top = max(max(r["achieved_flops_per_s"], r["square_matmul"]["flops_per_s"]) for r in rows) / 1e9
    ax.set_ylim(0, top * 1.5)  # room for the legend above the bars
    ax.legend(fontsize=7, ncol=2, loc="upper center")
    _save_fig(fig, args.out / "approx_throughput.png")


# ------------------------------------------------------------------------------- calibrate
def suite_calibrate(args: argparse.Namespace) -> dict:
    consts = {}
    for dv1 in (2, 9, 17, 33):
        prod, build, op, row, call = kernel_constants(torch.float32, torch.get_num_threads(), dv1)
        native = native_constants(torch.get_num_threads(), dv1) if native_threads(CPU, torch.float32)[0] else 0.0
        consts[dv1] = {"product_flops": prod, "build_entries": build, "op_seconds": op, "row_seconds": row,
                       "call_seconds": call, "native_flops": native}
        print(f"dv+1={dv1:2d}: products {prod / 1e9:.1f} GFLOP/s, construction {build / 1e9:.2f} G entries/s, "
              f"{op * 1e6:.2f} us per op, {row * 1e9:.0f} ns per row, {call * 1e3:.2f} ms per call; native "
              f"kernel {native / 1e9:.1f} GFLOP/s ({native / prod if native else math.nan:.2f}x the products; "
              f"NATIVE_GAIN = {NATIVE_GAIN})", flush=True)
    n = args.n or 65536
    spec = ProblemSpec.build(PATH, seq_len=n, head_dim=16, value_dim=8)
    model = cost_model(spec, 256 * 2**20, torch.float32)
    per_flop = model.exact_seconds_per_flop or math.nan
    print(f"exact probe for {PATH}, n={n}, d=16, dv=8: {model.exact_probe}; "
          f"{1 / per_flop / 1e9:.1f} plan-GFLOP/s", flush=True)
    print(f"chunk rows at rank 4845: {chunk_rows(spec, 4845, 256 * 2**20)}")
    return {"kernel_constants": {str(k): v for k, v in consts.items()}, "target_model": model.to_dict()}
