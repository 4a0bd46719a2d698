"""Measurement primitives: peak-memory growth here; timing, medians and exponent fits come from
:mod:`polyattn.timing` and atomic JSON from :mod:`polyattn.atomicio` (re-exported).

* **Time** (:func:`polyattn.timing.time_interleaved`): candidates of one case are timed
  round-robin; the statistic is the median of ``repeats`` runs after ``warmup``.
* **Memory** (measured after all timings): growth of the process's peak resident set while ``fn`` runs, read from
  ``/proc/self/status`` after resetting the watermark through ``/proc/self/clear_refs`` (Linux).
  glibc is told (``mallopt``) to serve every block above 64 KiB with ``mmap`` and to trim eagerly,
  so freed buffers leave the resident set and a later run cannot hide its peak in recycled memory.
  It measures what the kernel really touched, including buffers inside fused ATen ops; growth of
  file-backed pages during the call (library code faulted in again on a busy machine) is
  subtracted, so the figure is the call's anonymous memory.
* **Exponent**: least-squares slope of ``log time`` against ``log n``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
from collections.abc import Callable
from typing import Any

from ..atomicio import atomic_write_json
from ..timing import fit_exponent, median, time_interleaved

__all__ = ["time_interleaved", "median", "peak_memory_growth", "memory_supported", "write_json_atomic", "fit_exponent"]

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
    files = _status("RssFile:")
    res = fn()
    peak = _status("VmHWM:")
    # Library code and data faulted in again during the call (the page cache of a busy machine
    # evicts them) is not the call's working memory: subtract the growth of file-backed pages.
    refaulted = max(0, _status("RssFile:") - files)
    del res
    return max(0, peak - base - refaulted)


def environment() -> dict[str, Any]:
    """The run environment every benchmark JSON records: versions, threads, CPU, load."""
    import importlib.metadata
    import platform

    import torch

    return {
        "torch": torch.__version__,
        "polyattn": importlib.metadata.version("polyattn"),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    """Write JSON to ``path`` atomically (:func:`polyattn.atomicio.atomic_write_json`)."""
    atomic_write_json(path, obj, indent=1)
