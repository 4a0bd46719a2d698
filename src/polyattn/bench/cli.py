"""``polyattn bench [SUITE] ...``: benchmark suites as sub-subcommands.

``kernels`` (exact kernels: time, memory, exponents; :mod:`polyattn.bench.kernels`) and the other
suites in :data:`SUITES` (each exposes ``add_suite(subparsers)``; imported statically). Plain
``polyattn bench`` runs the default kernels suite.
"""

from __future__ import annotations

import argparse

from . import approx, decode, kernels

__all__ = ["add_parser", "SUITES"]

#: every suite: module with ``add_suite(subparsers)``
SUITES = (kernels, approx, decode)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "bench",
        help="benchmark suites (default: kernels)",
        description="Benchmarks. Without a suite, runs the kernels suite with its default config.",
    )
    suites = p.add_subparsers(dest="suite", metavar="SUITE")
    for mod in SUITES:
        mod.add_suite(suites)
    kernels.add_arguments(p)
    p.set_defaults(handler=kernels.main)
    return p
