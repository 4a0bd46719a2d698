"""Measurement primitives: interleaved median timing, peak-memory growth, atomic JSON, exponent fits.

* **Time**: candidates of one case are timed *round-robin* (rep 1 of every candidate, then rep 2,
  ...), so a burst of load from other processes hits all of them alike and their ratios stay
  meaningful on a shared machine. The statistic is the median of ``repeats`` runs after ``warmup``.
* **Memory** (measured after all timings): growth of the process's peak resident set while ``fn`` runs, read from
  ``/proc/self/status`` after resetting the watermark through ``/proc/self/clear_refs`` (Linux).
  glibc is told (``mallopt``) to serve every block above 64 KiB with ``mmap`` and to trim eagerly,
  so freed buffers leave the resident set and a later run cannot hide its peak in recycled memory.
  It measures what the kernel really touched, including buffers inside fused ATen ops.
* **Exponent**: least-squares slope of ``log time`` against ``log n``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import json
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["time_interleaved", "peak_memory_growth", "memory_supported", "write_json_atomic", "fit_exponent"]

_MALLOC_TUNED = False
_LIBC = None


def _tune_malloc() -> None:
    global _MALLOC_TUNED, _LIBC
    if not _MALLOC_TUNED:
        _MALLOC_TUNED = True
        name = ctypes.util.find_library("c")
        try:
            libc = ctypes.CDLL(name) if name else None
            m_trim_threshold, m_mmap_threshold = -1, -3
            if libc is not None:
                libc.mallopt(m_mmap_threshold, 64 * 1024)
                libc.mallopt(m_trim_threshold, 128 * 1024)
                _LIBC = libc
        except (OSError, AttributeError):  # not glibc: measurements are still valid, just less tight
            _LIBC = None
    if _LIBC is not None:
        try:
            # Hand free heap pages back to the OS, so a call served from recycled heap memory
            # faults its pages in again and shows up in the resident set.
            _LIBC.malloc_trim(0)
        except AttributeError:
            pass


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def memory_supported() -> bool:
    """Whether the peak-RSS watermark can be reset (Linux >= 4.0 with /proc mounted)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        _status("VmHWM:")
        return True
    except (OSError, KeyError):
        return False


def peak_memory_growth(fn: Callable[[], Any], *, collect: bool = False) -> int | None:
    """Bytes by which the peak resident set grows while ``fn()`` runs (None when unsupported).

    ``collect`` runs the (slow) cyclic garbage collector first so earlier garbage is released.
    """
    if not memory_supported():
        return None
    _tune_malloc()
    if collect:
        gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = _status("VmRSS:")
    res = fn()
    peak = _status("VmHWM:")
    del res
    return max(0, peak - base)


def time_interleaved(
    fns: Mapping[str, Callable[[], Any]], *, repeats: int = 5, warmup: int = 1
) -> dict[str, list[float]]:
    """Seconds per call for each candidate, measured round-robin; returns all samples per name.

    The allocator is left as it is (a tuned one would penalise implementations made of many ops).
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t0)
    return samples


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def fit_exponent(ns: Sequence[float], ts: Sequence[float]) -> float | None:
    """Slope of log(t) vs log(n) (None with fewer than 2 distinct n)."""
    pts = [(n, t) for n, t in zip(ns, ts) if n > 0 and t and t > 0 and math.isfinite(t)]
    if len({n for n, _ in pts}) < 2:
        return None
    x = np.log([n for n, _ in pts])
    y = np.log([t for _, t in pts])
    return float(np.polyfit(x, y, 1)[0])


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    """Write JSON to ``path`` via a temp file in the same directory and ``os.replace``."""
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1, sort_keys=False)
            f.write("\n")
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
