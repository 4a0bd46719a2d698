"""Timing and scaling fits, the one implementation (torch-free).

* :func:`time_interleaved`: candidates are timed *round-robin* (rep 1 of every candidate, then
  rep 2, ...), so a burst of load from other processes hits all of them alike and their ratios
  stay meaningful on a shared machine.
* :func:`fit_exponent`: least-squares slope of ``log time`` against ``log n``.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np

__all__ = ["time_interleaved", "median", "fit_exponent"]


def time_interleaved(
    fns: Mapping[str, Callable[[], object]], *, repeats: int = 5, warmup: int = 1,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """Seconds per call for each candidate, measured round-robin on ``clock`` (wall time by
    default; e.g. ``time.process_time`` on a loaded machine); returns all samples per name."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = clock()
            fn()
            samples[name].append(clock() - t0)
    return samples


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def fit_exponent(ns: Sequence[float], ts: Sequence[float]) -> float | None:
    """Slope of log(t) vs log(n) over the finite positive points (None with fewer than 2 distinct n)."""
    pts = [(n, t) for n, t in zip(ns, ts) if n > 0 and t and t > 0 and math.isfinite(t)]
    if len({n for n, _ in pts}) < 2:
        return None
    x = np.log([n for n, _ in pts])
    y = np.log([t for _, t in pts])
    return float(np.polyfit(x, y, 1)[0])
