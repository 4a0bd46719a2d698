"""Measure the time exponent of the planned exact algorithm and compare it with the prediction.

``measure(h)`` times ``polyattn.poly_attention(h, ...)`` (``method="auto"``, float32, batch 1) at
a geometric range of sequence lengths ``n``, keeps the best of a few repeats per size, and fits
``log time = e * log n + c`` (:func:`polyattn.timing.fit_exponent`) (single-threaded by default, see ``threads``). The prediction is the planner's
``Plan.exponent`` (``n^2`` for trees, ``n^(width+1)`` for elimination). Small ``n`` is dominated
by fixed overheads, so the default sizes start where the leading term dominates on a laptop CPU;
the fitted exponent is a measurement (recorded in ``docs/theory.md``), never a unit-test threshold.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..atomicio import atomic_save_figure
from ..errors import PolyAttentionError
from ..functional import poly_attention
from ..planning import plan
from ..polynomial import AttentionPolynomial, parse
from ..timing import fit_exponent

__all__ = ["MeasureResult", "measure", "default_sizes", "plot_measurement"]

# Default size ranges per predicted exponent: each spans ~8x in n and runs in well under a minute.
_DEFAULT_SIZES = {
    1: (1024, 2048, 4096, 8192, 16384),
    2: (1024, 1448, 2048, 2896, 4096, 5793, 8192),
    3: (192, 256, 320, 384, 448, 512, 640),
    4: (16, 24, 32, 40, 48, 64),
}


@dataclass(frozen=True)
class MeasureResult:
    """Timings (seconds, best of ``repeats``) per ``n`` and the fitted vs predicted exponent."""

    polynomial: str
    method: str
    sizes: tuple[int, ...]
    seconds: tuple[float, ...]
    fitted_exponent: float
    predicted_exponent: int
    head_dim: int
    repeats: int

    def to_dict(self) -> dict:
        return {
            "polynomial": self.polynomial,
            "method": self.method,
            "sizes": list(self.sizes),
            "seconds": list(self.seconds),
            "fitted_exponent": self.fitted_exponent,
            "predicted_exponent": self.predicted_exponent,
            "head_dim": self.head_dim,
            "repeats": self.repeats,
        }

    def __str__(self) -> str:
        rows = "\n".join(f"    n = {n:>6}: {s * 1e3:10.2f} ms" for n, s in zip(self.sizes, self.seconds))
        return (
            f"measured exponent for {self.polynomial} (method {self.method}, d = {self.head_dim}, "
            f"best of {self.repeats}):\n{rows}\n"
            f"  fitted  : n^{self.fitted_exponent:.2f}\n"
            f"  predicted: n^{self.predicted_exponent}  (difference {self.fitted_exponent - self.predicted_exponent:+.2f})"
        )


def default_sizes(exponent: int, t: int) -> tuple[int, ...]:
    """Sizes for a predicted exponent; higher exponents get smaller n so the run stays short."""
    if exponent in _DEFAULT_SIZES:
        return _DEFAULT_SIZES[exponent]
    top = max(8, int(round(2e8 ** (1.0 / exponent))))
    return tuple(sorted({max(4, int(top * f)) for f in (0.4, 0.55, 0.7, 0.85, 1.0)}))


def measure(
    polynomial: str | AttentionPolynomial,
    *,
    sizes: Sequence[int] | None = None,
    head_dim: int = 64,
    repeats: int = 5,
    seed: int = 0,
    threads: int | None = 1,
) -> MeasureResult:
    """Time the planned exact algorithm at each ``n`` in ``sizes`` and fit the exponent.

    ``threads`` (default 1) pins torch's intra-op thread count during the timing: on a shared or
    oversubscribed machine multi-threaded kernels add scheduling stalls that flatten the curve.
    ``None`` keeps the current setting.
    """
    p = parse(polynomial)
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise PolyAttentionError(f"repeats must be a positive integer, got {repeats!r}")
    predicted = plan(p, seq_len=64, head_dim=head_dim).exponent
    sizes = tuple(default_sizes(predicted, p.num_variables) if sizes is None else sizes)
    if len(sizes) < 2 or any(isinstance(n, bool) or not isinstance(n, int) or n < 2 for n in sizes):
        raise PolyAttentionError(
            f"sizes must be at least two distinct integers >= 2, got {list(sizes)!r}"
        )
    if len(set(sizes)) < 2:
        raise PolyAttentionError(f"sizes must contain at least two distinct values, got {list(sizes)!r}")
    gen = torch.Generator().manual_seed(seed)
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        times, method = _time_sizes(p, sizes, head_dim, repeats, gen)
    finally:
        torch.set_num_threads(old_threads)
    slope = fit_exponent(sizes, times)
    assert slope is not None  # sizes hold >= 2 distinct values
    return MeasureResult(str(p), method, sizes, tuple(times), slope, predicted, head_dim, repeats)


def _time_sizes(p: AttentionPolynomial, sizes: Sequence[int], head_dim: int, repeats: int,
                gen: torch.Generator) -> tuple[list[float], str]:
    # Round-robin over sizes (not size after size): a slow spell on a shared machine then hits
    # one repeat of every size instead of all repeats of one size, and the minimum filters it.
    t = p.num_variables
    inputs = []
    method = ""
    for n in sizes:
        q = [torch.randn(1, n, head_dim, generator=gen) for _ in range(t)]
        v = [torch.randn(1, n, head_dim, generator=gen) for _ in range(t - 1)]
        inputs.append((q, v))
        method = plan(p, seq_len=n, head_dim=head_dim).method
    best = [math.inf] * len(sizes)
    with torch.no_grad():
        for q, v in inputs:
            poly_attention(p, q, v)  # warm-up (plan cache, allocator)
        for _ in range(repeats):
            for i, (q, v) in enumerate(inputs):
                t0 = time.perf_counter()
                poly_attention(p, q, v)
                best[i] = min(best[i], time.perf_counter() - t0)
    return best, method


def plot_measurement(results: Sequence[MeasureResult], path: str | os.PathLike[str]) -> str:
    """Log-log plot of time vs n with the fitted and predicted slopes; written atomically (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for r in results:
        ns = np.asarray(r.sizes, float)
        ts = np.asarray(r.seconds)
        line = ax.loglog(ns, ts, "o", label=f"{r.polynomial} (fit n^{r.fitted_exponent:.2f})")[0]
        # predicted slope anchored at the geometric middle of the measurements
        mid = len(ns) // 2
        ax.loglog(ns, ts[mid] * (ns / ns[mid]) ** r.predicted_exponent, "--", color=line.get_color(),
                  alpha=0.6, label=f"predicted n^{r.predicted_exponent}")
    ax.set_xlabel("sequence length n")
    ax.set_ylabel("time per call (s, best of repeats)")
    ax.set_title("poly-attention exact time vs n (method auto)")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    path = os.fspath(path)
    try:
        atomic_save_figure(fig, path)
    finally:
        plt.close(fig)
    return path
