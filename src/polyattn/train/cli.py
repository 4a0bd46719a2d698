"""``polyattn train``: train mechanisms on a polyadic task over several seeds.

Examples::

    polyattn train --config configs/composition_m25.toml
    polyattn train --config configs/composition_m25.toml --set optim.steps=500 --set seeds=[0]
    polyattn train --config configs/composition_m25.toml --resume        # continue a killed run
    torchrun --nproc_per_node 2 -m polyattn.cli train --config …          # data-parallel (DDP)
"""

from __future__ import annotations

import argparse
import json
from typing import Any

__all__ = ["add_parser", "main", "format_table"]


def format_table(summary: dict[str, Any]) -> str:
    """A plain-text accuracy table from a ``summary.json`` payload."""
    lines = [f"{'mechanism':<24} {'polynomial':<26} {'L':>2} {'H':>2}  {'test acc (mean ± std)':<22} "
             f"{'per seed':<24} {'ms/step':>8}"]
    for name, m in summary["mechanisms"].items():
        acc = m["test_acc"]
        per = " ".join(f"{s['test_acc']:.3f}" for s in m["seeds"].values())
        lines.append(f"{name:<24} {m['polynomial']:<26} {m['depth']:>2} {m['heads']:>2}  "
                     f"{acc['mean']:.3f} ± {acc['std']:.3f}{'':<9} {per:<24} {m['step_ms']['mean']:>8.1f}")
    return "\n".join(lines)


def _handler(args: argparse.Namespace) -> int:
    from .config import load_config
    from .runner import run

    overrides = list(args.set or [])
    if args.out:
        overrides.append(f"out_dir={json.dumps(args.out)}")
    if args.no_progress:
        overrides.append("progress=false")
    cfg = load_config(args.config, overrides)
    summary = run(cfg, resume=args.resume, only=args.only, train=not args.summary_only)
    if summary:
        print(format_table(summary))
        print(f"summary: {cfg.out_dir}/summary.json   plots: {cfg.out_dir}/curves_steps.png, "
              f"{cfg.out_dir}/curves_seconds.png")
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train",
        help="train poly-attention models on a polyadic task (several seeds, resumable, DDP)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", "-c", help="TOML config file (default: built-in defaults)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config key (dotted, TOML value), e.g. optim.lr=3e-4; repeatable")
    p.add_argument("--out", help="output directory (same as --set out_dir=...)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoints in out_dir")
    p.add_argument("--only", action="append", metavar="MECHANISM",
                   help="train only this mechanism (repeatable); summary includes finished others")
    p.add_argument("--no-progress", action="store_true", help="disable the progress bar")
    p.add_argument("--summary-only", action="store_true",
                   help="train nothing: collect the finished cells in out_dir into summary.json and plots")
    p.set_defaults(handler=_handler)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="polyattn-train")
    sub = parser.add_subparsers()
    add_parser(sub)
    args = parser.parse_args(["train", *(argv or [])])
    return int(args.handler(args))
