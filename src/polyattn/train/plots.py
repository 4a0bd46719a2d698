"""Learning-curve plots: per mechanism, the mean test accuracy over seeds (thick line), every seed
(thin lines) and the min..max band, against training steps and against training seconds
(matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..atomicio import atomic_save_figure

__all__ = ["plot_curves"]


def _curves(hist: dict[int, list[dict[str, Any]]], xkey: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    steps = sorted(set.intersection(*[{r["step"] for r in rows} for rows in hist.values()]))
    xs, accs = [], []
    for rows in hist.values():
        by = {r["step"]: r for r in rows}
        xs.append([by[s][xkey] for s in steps])
        accs.append([by[s]["test_acc"] for s in steps])
    x, a = np.asarray(xs, float), np.asarray(accs, float)
    return x.mean(0), a.mean(0), a.min(0), a.max(0)


def plot_curves(histories: dict[str, dict[int, list[dict[str, Any]]]], out_dir: str | Path,
                title: str = "") -> list[Path]:
    """Write ``curves_steps.png`` and ``curves_seconds.png``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for xkey, fname, xlabel in (("step", "curves_steps.png", "training step"),
                                ("seconds", "curves_seconds.png", "training seconds (this CPU)")):
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for name, hist in histories.items():
            if not hist:
                continue
            x, mean, lo, hi = _curves(hist, xkey)
            line, = ax.plot(x, mean, lw=2, label=f"{name} ({len(hist)} seeds)")
            ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.12)
            for rows in hist.values():
                ax.plot([r[xkey] for r in rows], [r["test_acc"] for r in rows], color=line.get_color(),
                        lw=0.7, alpha=0.6)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy (thick: mean; thin: seeds)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
        if title:
            ax.set_title(title)
        fig.tight_layout()
        p = out / fname
        atomic_save_figure(fig, p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths
