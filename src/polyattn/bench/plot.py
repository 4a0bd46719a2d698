"""Log-log plots of benchmark results with fitted time exponents in the legend (matplotlib, Agg)."""

from __future__ import annotations

from ..atomicio import atomic_save_figure
from ..timing import fit_exponent

__all__ = ["plot_kernels"]

_STYLE = {"polyattn": "-", "sdpa": ":", "reference": "--", "einsum": "--", "matmul": ":"}


def plot_kernels(doc: dict, path: str) -> None:
    """One panel per mode: time vs n for every (mechanism, implementation) with >= 2 points; plus,
    when forward GFLOP/s were measured at >= 2 n, a panel of GFLOP/s vs n (polyattn solid, the
    FLOP-matched matmul dotted): flat lines mean the cost grows like the FLOP count.

    Written atomically (temp file + ``os.replace``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in doc["records"] if r.get("status") == "ok"]
    modes = sorted({r["mode"] for r in ok}, reverse=True) or ["fwd"]
    rates: dict[tuple, list[tuple[int, float]]] = {}
    for r in ok:
        if r["mode"] == "fwd" and r.get("gflops") is not None and r["impl"] in ("polyattn", "matmul"):
            rates.setdefault((r.get("sweep", ""), r["mechanism"], r["impl"], r["d"]), []).append((r["n"], r["gflops"]))
    rates = {k: sorted(v) for k, v in rates.items() if len({n for n, _ in v}) >= 2}
    panels = len(modes) + (1 if rates else 0)
    fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 5), squeeze=False)
    if rates:
        ax = axes[0][-1]
        for (sweep, mech, impl, d), pts in sorted(rates.items()):
            ns, gs = zip(*pts)
            ax.semilogx(ns, gs, "-" if impl == "polyattn" else ":", marker="o", markersize=3,
                        label=f"[{sweep}] {mech} {impl} d={d}")
        ax.set_xlabel("n (sequence length)")
        ax.set_ylabel("GFLOP/s (forward)")
        ax.set_title("fwd: achieved GFLOP/s vs n (flat = cost grows like the FLOP count)")
        ax.set_ylim(bottom=0)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6, loc="lower right")
    for ax, mode in zip(axes[0], modes):
        series: dict[tuple, list[tuple[int, float]]] = {}
        for r in ok:
            if r["mode"] == mode:
                key = (r.get("sweep", ""), r["mechanism"], r["impl"], r["d"], r["batch_heads"])
                series.setdefault(key, []).append((r["n"], r["time_s"]))
        for (sweep, mech, impl, d, _bh), pts in sorted(series.items()):
            pts.sort()
            if len(pts) < 2:
                continue
            ns, ts = zip(*pts)
            e = fit_exponent(ns, ts)
            label = f"[{sweep}] {mech} {impl} d={d}" + (f" (n^{e:.2f})" if e is not None else "")
            ax.loglog(ns, ts, _STYLE.get(impl, "-."), marker="o", markersize=3, label=label)
        ax.set_xlabel("n (sequence length)")
        ax.set_ylabel("median time per call [s]")
        ax.set_title(f"{mode}: time vs n (fitted exponents in legend)")
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6, loc="upper left")
        else:
            ax.text(0.5, 0.5, "one n per series: nothing to fit", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    try:
        atomic_save_figure(fig, path)
    finally:
        plt.close(fig)
