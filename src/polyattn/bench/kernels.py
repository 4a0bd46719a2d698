"""The ``kernels`` suite (``polyattn bench kernels``): exact poly-attention against SDPA, the
reference, naive all-tuple attention, a FLOP-matched matmul, the pre-custom-backward fused kernels
and peer packages. This module is the command line; the parts are

* :mod:`.config` — named mechanisms, sweeps, the TOML loader;
* :mod:`.baselines` — the implementations timed on the same tensors;
* :mod:`.runner` — timing (round-robin, median) and memory phases, JSON + plot;
* :mod:`.report` — same-run ratios, exponents, text/markdown tables.

Anything not run is recorded with ``status = "skipped: <reason>"`` and the reason is printed; only
out-of-memory and :class:`polyattn.MethodError` failures become ``"error: ..."`` rows.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
from typing import Any

import torch

from polyattn.errors import PolyAttentionError

from .baselines import Impl, implementations, make_inputs, naive_einsum
from .config import DEFAULT_CONFIG, IMPLS, MECHANISMS, MODES, KernelsConfig, Sweep, load_config, polynomial_of
from .report import format_markdown, format_summary, summarize
from .runner import cases, expected_failure, run_kernels

__all__ = [
    "MECHANISMS", "IMPLS", "MODES", "DEFAULT_CONFIG", "Sweep", "KernelsConfig", "load_config", "polynomial_of",
    "Impl", "implementations", "make_inputs", "naive_einsum", "cases", "expected_failure", "run_kernels",
    "summarize", "format_summary", "format_markdown", "add_arguments", "config_from_args", "main", "add_suite",
]


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
    p.add_argument("--memory-budget", type=int, metavar="BYTES", help="memory_budget passed to poly_attention")
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
        for a, k in (("n", "n"), ("d", "d"), ("batch_heads", "batch_heads"), ("modes", "modes"), ("impls", "impls"),
                     ("memory_budget", "memory_budget")):
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
        raise PolyAttentionError("--repeats must be >= 1 (5 or more for a reported median)")
    return cfg


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

