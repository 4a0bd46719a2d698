"""Collect the exploratory single-seed Match3 runs (issue 14 part 3) into this directory.

Each run directory (written by ``polyattn train``) holds ``config.json`` and ``metrics/*.jsonl``.
This recomputes the reference rates of each run's test set
(:func:`polyattn.train.match3_report.reference_rates`) and writes ``explore.json`` (every row
with its full test-accuracy curve), ``explore.md`` (one row per run: data, model, optimiser,
final and best test accuracy beside the majority, bin-majority and pair + bin rates) and
``explore.png`` (test accuracy vs step, one panel per data setting):

    PYTHONPATH=src python docs/results/match3_explore/collect.py ID=RUN_DIR[:CELL] ...
    PYTHONPATH=src python docs/results/match3_explore/collect.py --plot-only   # from explore.json

(``CELL`` picks one ``metrics/CELL.jsonl`` of a run directory that holds several.)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
_REFS: dict[str, dict] = {}


def _row(run_id: str, where: str) -> dict:
    from polyattn.tasks import make_task
    from polyattn.train.config import config_from_dict
    from polyattn.train.match3_report import reference_rates

    run_dir, _, cell = where.partition(":")
    run = Path(run_dir)
    cfg = config_from_dict(json.loads((run / "config.json").read_text()))
    key = json.dumps([cfg.task.params(), cfg.eval.test_size], sort_keys=True)
    if key not in _REFS:  # runs on the same data share one test set
        task = make_task(cfg.task.name, **cfg.task.params())
        test = task.test_set(cfg.eval.test_size)
        _REFS[key] = reference_rates(task, test.tokens.numpy(), test.labels.numpy())
    ref = _REFS[key]
    (metrics,) = sorted((run / "metrics").glob(f"{cell or '*'}.jsonl"))
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    mech = {mc.name: mc for mc in cfg.resolved_mechanisms()}[rows[0]["mechanism"]]
    t, m, o = cfg.task, cfg.model, cfg.optim
    return {
        "id": run_id, "mechanism": mech.polynomial,
        "data": f"n={t.n}, M={t.modulus}, {t.distribution or 'uniform'}"
                + (", no pair-only" if t.pair_matches is False else "") + (", BOS" if t.bos else ""),
        "model": f"d={m.dim}, h={m.heads}" + (f", d_head={m.dim_head}" if m.dim_head else "")
                 + f", {m.embedding}" + ("" if m.norm else ", no LN")
                 + (f", dropout {m.dropout:g}" if m.dropout else "") + (", pos" if m.pos_emb else ""),
        "optim": f"B={o.batch_size}, lr={o.lr:g}, {rows[-1]['step']}/{o.steps} steps",
        "final": rows[-1]["test_acc"], "best": max(r["test_acc"] for r in rows),
        "majority": ref["majority"], "bin_majority": ref["bin_majority"], "pair_bin": ref["pair_bin"],
        "curve": [(r["step"], r["test_acc"]) for r in rows],
    }


def main(argv: list[str]) -> int:
    if argv == ["--plot-only"]:  # redraw from explore.json
        rows = json.loads((HERE / "explore.json").read_text())
    else:
        rows = [_row(*a.split("=", 1)) for a in argv]
        (HERE / "explore.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = ["| id | mechanism | data | model | optimiser (steps done / planned) | final test acc | best "
             "| majority | bin majority | pair + bin |", "|" + "---|" * 10]
    for r in rows:
        lines.append(f"| {r['id']} | `{r['mechanism']}` | {r['data']} | {r['model']} | {r['optim']} | "
                     f"**{r['final']:.3f}** | {r['best']:.3f} | {r['majority']:.3f} | {r['bin_majority']:.3f} "
                     f"| {r['pair_bin']:.3f} |")
    (HERE / "explore.md").write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datas = list(dict.fromkeys(r["data"] for r in rows))
    ncol = min(3, len(datas))
    nrow = -(-len(datas) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(5.2 * ncol, 4.0 * nrow), squeeze=False)
    for ax in axes.flat[len(datas):]:
        ax.axis("off")
    for ax, data in zip(axes.flat, datas):
        mine = [r for r in rows if r["data"] == data]
        for r in mine:
            xs, ys = zip(*r["curve"])
            ax.plot(xs, ys, lw=1.2, label=f"{r['id']}: {r['mechanism']}")
        ax.axhline(mine[0]["bin_majority"], color="k", ls="--", lw=0.8, label="bin majority")
        if mine[0]["pair_bin"] > mine[0]["bin_majority"] + 1e-9:
            ax.axhline(mine[0]["pair_bin"], color="r", ls=":", lw=1, label="pair + bin shortcut")
        ax.set_title(data, fontsize=8)
        ax.set_xlabel("training step")
        ax.set_ylim(0.4, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    for row in axes:
        row[0].set_ylabel("test accuracy (1 seed)")
    fig.tight_layout()
    fig.savefig(HERE / "explore.png", dpi=100)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main(sys.argv[1:]))
