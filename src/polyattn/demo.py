"""``polyattn demo`` (what ``make demo`` runs).

Part 1 shows the library on the named mechanisms: parse, plan, compute, compare with the float64
reference and time against SDPA. Part 2, when the training harness is present, trains 1-layer
tree-attention and self-attention on 2-fold function composition and prints the result table.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time

import torch
import torch.nn.functional as F

from .functional import plan_for, poly_attention
from .polynomial import NAMED
from .theory import analyze

__all__ = ["add_parser", "run_demo", "show_mechanisms", "show_theory"]


def _median_time(fn, repeats: int = 5) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def show_mechanisms(n_check: int = 24, n_time: int = 256, d: int = 32, batch: int = 2, seed: int = 0) -> list[dict]:
    """Plan, compute and check every named mechanism; returns the rows of the printed table."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for name, poly in NAMED.items():
        t = poly.num_variables
        q64 = [torch.randn(batch, n_check, d, generator=g, dtype=torch.float64) for _ in range(t)]
        v64 = [torch.randn(batch, n_check, d, generator=g, dtype=torch.float64) for _ in range(t - 1)]
        ref = poly_attention(poly, q64, v64, method="reference")
        out = poly_attention(poly, [x.float() for x in q64], [x.float() for x in v64])
        err32 = (out.double() - ref).abs().max().item()
        err64 = (poly_attention(poly, q64, v64) - ref).abs().max().item()
        qt = [torch.randn(1, batch, n_time, d, generator=g) for _ in range(t)]  # [B, H, N, D]
        vt = [torch.randn(1, batch, n_time, d, generator=g) for _ in range(t - 1)]
        pl = plan_for(poly, qt, vt)
        sec = _median_time(lambda poly=poly, qt=qt, vt=vt: poly_attention(poly, qt, vt))
        sdpa = _median_time(lambda qt=qt, vt=vt: F.scaled_dot_product_attention(qt[0], qt[1], vt[0]))
        print(f"\n== {name}: {poly}")
        print(pl)
        rows.append(dict(name=name, poly=str(poly), method=pl.method, complexity=pl.complexity,
                         err32=err32, err64=err64, ms=sec * 1e3, ratio=sec / sdpa))
    print(f"\nAccuracy vs the float64 reference (n={n_check}) and time at n={n_time}, d={d}, batch={batch}:")
    print(f"{'mechanism':<16} {'method':<12} {'cost':<16} {'max err f32':>11} {'max err f64':>11} {'ms':>9} {'x SDPA':>7}")
    for r in rows:
        print(f"{r['name']:<16} {r['method']:<12} {r['complexity']:<16} {r['err32']:>11.2e} {r['err64']:>11.2e} "
              f"{r['ms']:>9.2f} {r['ratio']:>7.1f}")
    return rows


def show_theory() -> list[dict]:
    """One line of ``polyattn.analyze`` per named mechanism (what the theory predicts)."""
    rows = []
    print(f"{'mechanism':<16} {'polynomial':<24} {'exact time':<11} {'lower bound':<14} "
          f"{'approx iff B=o((log n)^x)':<26} {'composes':<9} {'Match3':<7}")
    for name, poly in NAMED.items():
        d = analyze(poly).to_dict()

        def fmt(x: object) -> str:
            return "unknown" if x is None else ("yes" if x is True else "no" if x is False else str(x))

        lower = d["exact_lower_bound"]
        lower = lower.get("value", lower) if isinstance(lower, dict) else lower
        print(f"{name:<16} {str(poly):<24} {'n^' + str(d['exact_upper_exponent']):<11} {fmt(lower):<14} "
              f"{'x = ' + format(d['approx_bound_exponent'], '.3g'):<26} {fmt(d['composition_depth']):<9} "
              f"{fmt(d['match3']):<7}")
        rows.append(d)
    return rows


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # the parent package is absent
        return False


def run_demo(args: argparse.Namespace | None = None) -> int:
    torch.manual_seed(0)
    print("polyattn demo — part 1: the named mechanisms, planned, computed and checked\n")
    show_mechanisms()
    print("\nWhat the theory says about them (polyattn analyze; one layer, one head):\n")
    show_theory()
    if _has_module("polyattn.train.demo_job") and not getattr(args, "quick", False):
        from .train.demo_job import run_training_demo

        print("\npolyattn demo — part 2: what one layer can learn (2-fold function composition)\n")
        run_training_demo()
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="show the named mechanisms and (if available) a short training run")
    p.add_argument("--quick", action="store_true", help="only part 1 (no training)")
    p.set_defaults(handler=run_demo)
