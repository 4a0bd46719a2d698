"""``polyattn`` command line: ``analyze``, ``bench``, ``train``, ``demo``.

Each subcommand lives next to the code it drives and registers itself through a
``add_parser(subparsers)`` function returning the handler; this module only wires them up.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["main", "build_parser"]

# (subcommand, module providing add_parser)
_SUBCOMMANDS = [
    ("analyze", "polyattn.theory.cli"),
    ("bench", "polyattn.bench.cli"),
    ("train", "polyattn.train.cli"),
    ("demo", "polyattn.demo"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="polyattn",
        description="Poly-attention: analyse, benchmark and train higher-order attention mechanisms.",
    )
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(n for n, _ in _SUBCOMMANDS) + "}")
    for _name, module in _SUBCOMMANDS:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name and e.name.startswith(module.rsplit(".", 1)[0]):
                continue  # subcommand not built yet
            raise
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
