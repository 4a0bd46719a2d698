"""``polyattn analyze "<polynomial>" [--json] [--seq-len N] [--head-dim D] [--measure] [--plot PNG]``."""

from __future__ import annotations

import argparse
import json

from ..errors import PolyAttentionError
from .analyze import DEFAULT_HEAD_DIM, DEFAULT_SEQ_LEN, analyze

__all__ = ["add_parser", "run"]

DEFAULT_PLOT = "theory_measure.png"


def _sizes(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--sizes takes comma-separated integers such as 256,512,1024; got {text!r}"
        ) from None


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "analyze",
        help="complexity and expressivity of an attention polynomial",
        description=(
            "Classify an attention polynomial: structure, exact and approximate complexity with the "
            "hypothesis each bound rests on, expressivity (function composition, Match3) and the "
            "plan the library would run. Example: polyattn analyze \"x1*x2 + x2*x3\""
        ),
    )
    p.add_argument("polynomial", help='attention polynomial, e.g. "x1*x2 + x2*x3"')
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--seq-len", type=int, default=None, metavar="N",
                   help=f"sequence length of the reported plan (default {DEFAULT_SEQ_LEN})")
    p.add_argument("--head-dim", type=int, default=None, metavar="D",
                   help=f"head dimension of the reported plan (default {DEFAULT_HEAD_DIM})")
    p.add_argument("--measure", action="store_true",
                   help="time the planned exact algorithm over a range of n and fit the exponent")
    p.add_argument("--sizes", type=_sizes, default=None, metavar="N1,N2,...",
                   help="sequence lengths for --measure (default: chosen from the predicted exponent)")
    p.add_argument("--repeats", type=int, default=5, help="timing repeats per size (best is kept)")
    p.add_argument("--plot", nargs="?", const=DEFAULT_PLOT, default=None, metavar="PNG",
                   help=f"with --measure: write a log-log plot (default path {DEFAULT_PLOT})")
    p.set_defaults(handler=run)
    return p


def run(args: argparse.Namespace) -> int:
    if args.plot is not None and not args.measure:
        raise PolyAttentionError("--plot needs --measure (it plots the measured times)")
    if args.sizes is not None and not args.measure:
        raise PolyAttentionError("--sizes needs --measure")
    report = analyze(args.polynomial, seq_len=args.seq_len, head_dim=args.head_dim)
    result = None
    if args.measure:
        from .measure import measure, plot_measurement

        result = measure(report.polynomial, sizes=args.sizes, repeats=args.repeats)
    if args.json:
        d = report.to_dict()
        if result is not None:
            d["measurement"] = result.to_dict()
        print(json.dumps(d, indent=2))
    else:
        print(report)
        if result is not None:
            print(result)
    if result is not None and args.plot is not None:
        from .measure import plot_measurement

        path = plot_measurement([result], args.plot)
        if not args.json:
            print(f"plot written to {path}")
    return 0
