"""``polyattn`` command line: ``analyze``, ``bench``, ``train``, ``demo``.

Each subcommand lives next to the code it drives and exposes ``add_parser(subparsers)``; this
module imports them statically (an error in one is an error, never a vanished subcommand) and
only wires them up.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import demo
from .bench import cli as bench_cli
from .theory import cli as theory_cli
from .train import cli as train_cli

__all__ = ["main", "build_parser"]

# (subcommand, module providing add_parser)
_SUBCOMMANDS = [
    ("analyze", theory_cli),
    ("bench", bench_cli),
    ("train", train_cli),
    ("demo", demo),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="polyattn",
        description="Poly-attention: analyse, benchmark and train higher-order attention mechanisms.",
    )
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(n for n, _ in _SUBCOMMANDS) + "}")
    for _name, mod in _SUBCOMMANDS:
        mod.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from .errors import PolyAttentionError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except PolyAttentionError as e:
        print(f"polyattn: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
