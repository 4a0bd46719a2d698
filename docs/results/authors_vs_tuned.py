"""Test accuracy vs training step: the authors' released config beside our tuned recipe.

Reads the per-seed metrics (JSONL) copied into docs/results and draws one panel per recipe, one
line per (mechanism, seed), with the k = 1 shortcut rate of 2-fold composition at m = 25 (0.142,
docs/results/shortcut_rates.py) as a dotted line:

    python docs/results/authors_vs_tuned.py     # -> docs/results/authors_vs_tuned.png
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from polyattn.atomicio import atomic_save_figure  # noqa: E402

HERE = Path(__file__).resolve().parent
PANELS = [
    ("authors' config (d 32, 4 heads, MLP, dropout 0.05, AdamW wd 0.01)", "composition_m25_authors"),
    ("our tuned recipe (d 64, 1 head, no MLP, x2 value-less)", "composition_m25_tuned"),
]
SHORTCUT = 0.142  # most frequent value of the last table, m = 25


def _runs(folder: Path) -> dict[str, list[list[tuple[int, float]]]]:
    out: dict[str, list[list[tuple[int, float]]]] = {}
    for f in sorted((folder / "metrics").glob("*.jsonl")):
        rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        if rows:
            out.setdefault(rows[0]["mechanism"], []).append([(r["step"], r["test_acc"]) for r in rows])
    return out


def main() -> None:
    fig, axes = plt.subplots(1, len(PANELS), figsize=(6.5 * len(PANELS), 4.6), sharey=True)
    for ax, (title, name) in zip(axes, PANELS):
        for i, (mech, seeds) in enumerate(_runs(HERE / name).items()):
            for j, pts in enumerate(seeds):
                steps, acc = zip(*pts)
                ax.plot(steps, acc, color=f"C{i}", alpha=0.85, lw=1.2, label=mech if j == 0 else None)
        ax.axhline(SHORTCUT, ls=":", color="gray", lw=1, label="shortcut rate 0.142")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("training step")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="center right")
    axes[0].set_ylabel("test accuracy (1000 held-out examples)")
    fig.suptitle("2-fold function composition, m = 25 (N = 51): one line per seed", fontsize=10)
    fig.tight_layout()
    out = HERE / "authors_vs_tuned.png"
    atomic_save_figure(fig, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
