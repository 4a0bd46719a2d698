"""``polyattn bench [SUITE] ...``: benchmark suites as sub-subcommands.

``kernels`` (exact kernels: time, memory, exponents; :mod:`polyattn.bench.kernels`) is always
there; other suites plug in by exposing ``add_suite(subparsers)`` in a module listed in
:data:`SUITES` (e.g. ``approx``). Plain ``polyattn bench`` runs the default kernels suite.
"""

from __future__ import annotations

import argparse
import importlib

from . import kernels

__all__ = ["add_parser", "SUITES"]

#: optional suites: module name -> imported if present, then ``add_suite(subparsers)`` is called
SUITES = ("polyattn.bench.approx", "polyattn.bench.decode")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "bench",
        help="benchmark suites (default: kernels)",
        description="Benchmarks. Without a suite, runs the kernels suite with its default config.",
    )
    suites = p.add_subparsers(dest="suite", metavar="SUITE")
    kernels.add_suite(suites)
    for mod in SUITES:
        try:
            m = importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name == mod:
                continue  # suite not built (yet)
            raise
        m.add_suite(suites)
    kernels.add_arguments(p)
    p.set_defaults(handler=kernels.main)
    return p
