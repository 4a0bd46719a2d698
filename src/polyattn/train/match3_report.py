"""Per-bin evaluation of finished Match3 runs: accuracy beside the label base rates and shortcuts.

For a run directory written by ``polyattn train`` on the ``match3`` task, this rebuilds the task
and its test set from ``config.json``, loads every cell's final checkpoint, and reports per
mechanism and seed the test accuracy overall and per bin of the per-sequence positive fraction
(:data:`polyattn.tasks.match3.BIN_EDGES`), beside three reference rates computed on the same
test labels:

* **majority**: predict the overall most frequent label everywhere;
* **bin majority**: predict, in each bin, that bin's most frequent label (what a model that
  only recognises the bin of a sequence, e.g. by counting distinct values, can reach);
* **pair + bin**: positions with a *degenerate* match (``2 x_i + x_j ≡ 0`` or ``x_i + 2 x_j ≡ 0``
  for some position ``j``: a test on pairs of tokens, which self-attention can express) predicted
  1, the others the bin's majority among non-degenerate positions. Beating it requires using
  genuine triples ``x_i + x_j + x_k`` with three different values.

    python -m polyattn.train.match3_report runs/match3_paper --out docs/results/match3_paper

writes ``match3_bins.json``, ``match3_bins.md`` (tables) and ``match3_bins.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomicio import atomic_save_figure, atomic_write_bytes
from ..tasks import IGNORE, make_task
from ..tasks.match3 import BIN_EDGES, Match3, match3_bins, pair_only_matches
from .config import TrainConfig, config_from_dict
from .io import atomic_write_json, load_checkpoint
from .loop import CellPaths, build_model, predict

__all__ = ["reference_rates", "evaluate_cells", "markdown", "main"]

BIN_NAMES = tuple(f"[{lo:.2f}, {hi:.2f}" + ("]" if hi == 1.0 else ")")
                  for lo, hi in zip((0.0, *BIN_EDGES), (*BIN_EDGES, 1.0)))


def reference_rates(task: Match3, tokens: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Base rates per bin and the three reference accuracies (module docstring) on a test set."""
    keep = labels != IGNORE
    values = tokens[..., 0]
    if task.bos:
        values, labels, keep = values[:, 1:], labels[:, 1:], keep[:, 1:]
    bins = match3_bins(labels)
    deg = pair_only_matches(values, task.modulus)
    y = labels == 1
    total = int(keep.sum())
    p_all = float(y.sum() / total)
    out: dict[str, Any] = {"positive_rate": p_all, "majority": max(p_all, 1 - p_all), "bins": []}
    bin_ok = pair_ok = 0.0
    for k, name in enumerate(BIN_NAMES):
        rows = bins == k
        yk, dk = y[rows], deg[rows]
        nk = int(yk.size)
        row: dict[str, Any] = {"bin": name, "sequences": int(rows.sum()), "positions": nk}
        if nk:
            p = float(yk.mean())
            rest = yk[~dk]
            q = float(rest.mean()) if rest.size else 0.0
            row.update(positive_rate=p, majority=max(p, 1 - p),
                       degenerate_share_of_positives=float(dk[yk].mean()) if yk.any() else 0.0,
                       pair_bin=(float(dk.sum()) + max(q, 1 - q) * rest.size) / nk)
            bin_ok += row["majority"] * nk
            pair_ok += row["pair_bin"] * nk
        out["bins"].append(row)
    out["bin_majority"] = bin_ok / total
    out["pair_bin"] = pair_ok / total
    return out


@torch.no_grad()
def evaluate_cells(cfg: TrainConfig, run_dir: Path, task: Match3, tokens: torch.Tensor,
                   labels: torch.Tensor, batch_size: int = 250) -> list[dict[str, Any]]:
    """Overall and per-bin test accuracy of every finished cell's final checkpoint."""
    lab = labels.numpy()
    bins = match3_bins(lab[:, 1:] if task.bos else lab)
    keep = labels != IGNORE
    rows = []
    for mech in cfg.resolved_mechanisms():
        for seed in cfg.seeds:
            ck_path = CellPaths.of(run_dir, mech.name, seed).checkpoint
            if not ck_path.exists():
                continue
            ck = load_checkpoint(ck_path)
            model = build_model(cfg, mech, task)
            model.load_state_dict(ck["model"])
            model.eval()
            pred = torch.cat([predict(model(tokens[i : i + batch_size]), cfg.optim.loss)
                              for i in range(0, len(tokens), batch_size)])
            ok = (pred == labels) & keep
            per_bin = []
            for k in range(len(BIN_NAMES)):
                sel = torch.from_numpy(bins == k)
                n = int(keep[sel].sum())
                per_bin.append(float(ok[sel].sum()) / n if n else None)
            rows.append({"mechanism": mech.name, "polynomial": mech.polynomial, "seed": seed,
                         "step": int(ck["step"]), "test_acc": float(ok.sum()) / float(keep.sum()),
                         "bins": per_bin})
    return rows


def markdown(ref: dict[str, Any], cells: list[dict[str, Any]]) -> str:
    """Two tables: accuracy per mechanism × seed (overall and per bin), and the base rates."""
    head = "| mechanism | seed | step | test acc | " + " | ".join(f"bin {b}" for b in BIN_NAMES) + " |"
    lines = [head, "|" + "---|" * (4 + len(BIN_NAMES))]
    for c in cells:
        per = " | ".join("—" if a is None else f"{a:.3f}" for a in c["bins"])
        lines.append(f"| {c['mechanism']} | {c['seed']} | {c['step']} | **{c['test_acc']:.3f}** | {per} |")
    one = ref["positive_rate"] >= 0.5  # the overall majority label
    refs = (("majority label", ref["majority"],
             [b.get("positive_rate") if one else 1 - b.get("positive_rate", 0) for b in ref["bins"]]),
            ("bin majority", ref["bin_majority"], [b.get("majority") for b in ref["bins"]]),
            ("pair + bin shortcut", ref["pair_bin"], [b.get("pair_bin") for b in ref["bins"]]))
    for label, overall, per_bin in refs:
        per = " | ".join("—" if a is None else f"*{a:.3f}*" for a in per_bin)
        lines.append(f"| *{label}* | | | *{overall:.3f}* | {per} |")
    lines += ["", "| bin (positive fraction) | test sequences | positions | positive rate (base rate) "
              "| share of positives with a pair-only match |", "|---|---|---|---|---|"]
    for b in ref["bins"]:
        if b["positions"]:
            lines.append(f"| {b['bin']} | {b['sequences']} | {b['positions']} | {b['positive_rate']:.3f} "
                         f"| {b['degenerate_share_of_positives']:.3f} |")
    lines.append(f"| all | | | {ref['positive_rate']:.3f} | |")
    return "\n".join(lines)


def _plot(ref: dict[str, Any], cells: list[dict[str, Any]], out: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mechs = list(dict.fromkeys(c["mechanism"] for c in cells))
    groups = ["all", *BIN_NAMES]
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    width = 0.8 / max(len(mechs), 1)
    for m_i, m in enumerate(mechs):
        mine = [c for c in cells if c["mechanism"] == m]
        for g_i in range(len(groups)):
            vals = [c["test_acc"] if g_i == 0 else c["bins"][g_i - 1] for c in mine]
            vals = [v for v in vals if v is not None]
            x = g_i + (m_i - (len(mechs) - 1) / 2) * width
            if vals:
                ax.bar(x, float(np.mean(vals)), width, color=f"C{m_i}", alpha=0.75,
                       label=m if g_i == 0 else None)
                ax.plot([x] * len(vals), vals, "k.", ms=3)
    for g_i in range(len(groups)):
        maj = ref["bin_majority"] if g_i == 0 else ref["bins"][g_i - 1].get("majority")
        pb = ref["pair_bin"] if g_i == 0 else ref["bins"][g_i - 1].get("pair_bin")
        if maj is not None:
            ax.hlines(maj, g_i - 0.45, g_i + 0.45, colors="k", linestyles="--", lw=1,
                      label="bin majority" if g_i == 0 else "_nolegend_")
        if pb is not None:
            ax.hlines(pb, g_i - 0.45, g_i + 0.45, colors="r", linestyles=":", lw=1.2,
                      label="pair + bin shortcut" if g_i == 0 else "_nolegend_")
    ax.set_xticks(range(len(groups)), ["all"] + [f"bin {b}" for b in BIN_NAMES], fontsize=8)
    ax.set_ylabel("test accuracy (bars: mean, dots: seeds)")
    ax.set_ylim(0.4, 1.02)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="lower left")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    p = atomic_save_figure(fig, out / "match3_bins.png", dpi=110)
    plt.close(fig)
    return p


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="run directories (config.json + checkpoints/) of one config")
    ap.add_argument("--out", required=True, help="directory for match3_bins.{json,md,png}")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cells: list[dict[str, Any]] = []
    ref: dict[str, Any] = {}
    title = ""
    for r in args.runs:
        run = Path(r)
        cfg = config_from_dict(json.loads((run / "config.json").read_text()))
        task = make_task(cfg.task.name, **cfg.task.params())
        if not isinstance(task, Match3):
            raise SystemExit(f"{run}: task {cfg.task.name!r} is not match3")
        test = task.test_set(cfg.eval.test_size)
        ref_here = reference_rates(task, test.tokens.numpy(), test.labels.numpy())
        if ref and ref_here != ref:
            raise SystemExit(f"{run}: a different test set than the first run; report them separately")
        ref, title = ref_here, cfg.name
        cells += evaluate_cells(cfg, run, task, test.tokens, test.labels)
    payload = {"reference": ref, "cells": cells, "runs": [str(r) for r in args.runs]}
    atomic_write_json(out / "match3_bins.json", payload)
    atomic_write_bytes(out / "match3_bins.md", (markdown(ref, cells) + "\n").encode())
    p = _plot(ref, cells, out, title)
    print(markdown(ref, cells))
    print(f"wrote {out / 'match3_bins.json'}, {out / 'match3_bins.md'}, {p}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
