"""Collect finished runs into ``docs/results``: copy summaries and plots, write markdown tables
that set each measured accuracy beside the theory's prediction (:func:`polyattn.analyze`), and
plot accuracy against the table size ``m`` for composition runs.

    python -m polyattn.train.report --out docs/results runs/composition_m25 runs/composition_m8 …
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

__all__ = ["prediction", "markdown_table", "main"]


def prediction(polynomial: str, depth: int, task: dict[str, Any]) -> str:
    """What the theory says a 1-layer model of ``polynomial`` can do on ``task`` (short text)."""
    from ..theory import analyze

    rep = analyze(polynomial)
    name = task.get("name")
    if depth != 1:
        return f"{depth} layers: beyond the 1-layer theory"
    if name == "composition":
        r, k = int(task.get("r", 2)), rep.composition_depth
        if k is None:
            return "unknown"
        return f"yes (composes {k})" if k >= r else f"no (composes {k} < {r}; needs many heads)"
    if name == "match3":
        v = rep.match3_solvable
        return {True: "yes", False: "no", None: "unknown"}[v]
    return "theory silent"


def markdown_table(summary: dict[str, Any]) -> str:
    rows = ["| mechanism | polynomial | layers × heads | test acc (mean ± std) | per seed | seeds ≥ 95% "
            "| ms/step | theory (1 layer, 1 head) |", "|---|---|---|---|---|---|---|---|"]
    for name, m in summary["mechanisms"].items():
        per = ", ".join(f"{s['test_acc']:.3f}" for s in m["seeds"].values())
        acc = m["test_acc"]
        rows.append(
            f"| {name} | `{m['polynomial']}` | {m['depth']} × {m['heads']} | {acc['mean']:.3f} ± {acc['std']:.3f} "
            f"| {per} | {m['seeds_at_least_95']}/{len(m['seeds'])} | {m['step_ms']['mean']:.0f} "
            f"| {prediction(m['polynomial'], m['depth'], summary['task'])} |"
        )
    return "\n".join(rows)


def _accuracy_vs_m(summaries: list[dict[str, Any]], out: Path) -> Path | None:
    comp = [s for s in summaries if s["task"]["name"] == "composition" and s["task"].get("r") == 2]
    series: dict[str, list[tuple[int, float, float]]] = {}
    for s in comp:
        for name, m in s["mechanisms"].items():
            if m["depth"] != 1:
                continue
            pts = series.setdefault(name, [])
            if all(p[0] != s["task"]["m"] for p in pts):  # first run listed wins for a given m
                pts.append((s["task"]["m"], m["test_acc"]["mean"], m["test_acc"]["std"]))
    series = {k: sorted(v) for k, v in series.items() if len(v) >= 2}
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    for name, pts in series.items():
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o",
                    capsize=3, label=name)
    ax.set_xlabel("m (table size; sequence length 2m + 1)")
    ax.set_ylabel("test accuracy (mean ± std over seeds)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("2-fold composition, 1 layer 1 head")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    p = out / "accuracy_vs_m.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return p


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="run directories holding summary.json")
    ap.add_argument("--out", default="docs/results")
    ap.add_argument("--vs-m", nargs="+", metavar="RUN", default=None,
                    help="runs (directory names) that make accuracy_vs_m.png; default: every 2-fold composition run")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summaries, parts, vs_m = [], [], []
    for r in args.runs:
        src = Path(r)
        f = src / "summary.json"
        if not f.exists():
            print(f"skip {src}: no summary.json")
            continue
        s = json.loads(f.read_text())
        summaries.append(s)
        if args.vs_m is None or src.name in args.vs_m:
            vs_m.append(s)
        dst = out / src.name
        dst.mkdir(parents=True, exist_ok=True)
        if dst.resolve() != src.resolve():  # re-collecting runs already under --out copies nothing
            shutil.copy(f, dst / "summary.json")
            for png in ("curves_steps.png", "curves_seconds.png"):
                if (src / png).exists():
                    shutil.copy(src / png, dst / png)
        t = s["task"]
        params = ", ".join(f"{k}={v}" for k, v in t.items() if k not in ("name", "vocab_sizes", "readout", "num_classes"))
        parts.append(
            f"### {s['name']}\n\ntask `{t['name']}` ({params}); {s['steps']} steps × batch {s['batch_size']}, "
            f"seeds {s['seeds']}; width {s['config']['model']['dim']}. "
            f"Curves: [steps]({src.name}/curves_steps.png), [seconds]({src.name}/curves_seconds.png); "
            f"[summary.json]({src.name}/summary.json).\n\n{markdown_table(s)}\n"
        )
    (out / "tables.md").write_text("\n".join(parts))
    p = _accuracy_vs_m(vs_m, out)
    print(f"wrote {out / 'tables.md'}" + (f" and {p}" if p else ""))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
