"""Run every (mechanism, seed) cell of a config and write ``summary.json`` and the plots.

Output layout under ``out_dir``::

    config.toml-equivalent  config.json       the resolved configuration
    metrics/<cell>.jsonl    one row per evaluation (step, seconds, train/test loss and accuracy)
    checkpoints/<cell>.pt   latest checkpoint (atomic), resumable with --resume
    cells/<cell>.json       the finished cell's result
    summary.json            per mechanism: per-seed and mean ± std test accuracy, wall-clock
    curves_steps.png, curves_seconds.png   test accuracy vs steps / vs training seconds
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import torch

from ..tasks import make_task
from .config import TrainConfig, config_to_dict
from .distributed import DistInfo, init_distributed, shutdown_distributed
from .io import atomic_write_json, read_jsonl
from .loop import CellPaths, train_cell

__all__ = ["run", "summarise", "write_summary"]


def _stats(xs: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(xs),
        "std": statistics.stdev(xs) if len(xs) > 1 else 0.0,
        "min": min(xs),
        "max": max(xs),
    }


def summarise(cfg: TrainConfig, results: list[dict[str, Any]], wall_seconds: float | None = None) -> dict[str, Any]:
    """The ``summary.json`` payload from finished cell results."""
    task = make_task(cfg.task.name, **cfg.task.params())
    mechs: dict[str, Any] = {}
    for mech in cfg.resolved_mechanisms():
        rows = sorted((r for r in results if r["mechanism"] == mech.name), key=lambda r: r["seed"])
        if not rows:
            continue
        accs = [r["test_acc"] for r in rows]
        mechs[mech.name] = {
            "polynomial": mech.polynomial, "depth": mech.depth, "heads": mech.heads, "dim": mech.dim,
            "params": rows[0]["params"],
            "seeds": {str(r["seed"]): {k: r[k] for k in ("test_acc", "best_test_acc", "test_seq_acc",
                                                          "train_seconds", "step_ms", "steps_to_95")}
                      for r in rows},
            "test_acc": _stats(accs),
            "seeds_at_least_95": sum(a >= 0.95 for a in accs),
            "train_seconds": _stats([r["train_seconds"] for r in rows]),
            "step_ms": _stats([r["step_ms"] for r in rows]),
        }
    return {
        "name": cfg.name, "task": task.describe(), "steps": cfg.optim.steps,
        "batch_size": cfg.optim.batch_size, "seeds": cfg.seeds, "mechanisms": mechs,
        # wall-clock of the invocation that wrote this file (cells resumed or trained elsewhere
        # are not in it); total_train_seconds sums every cell's training time
        "wall_seconds": wall_seconds,
        "total_train_seconds": sum(r["train_seconds"] for r in results),
        "torch": torch.__version__, "threads": cfg.threads,
        "config": config_to_dict(cfg),
    }


def write_summary(cfg: TrainConfig, results: list[dict[str, Any]], wall_seconds: float | None = None) -> Path:
    out = Path(cfg.out_dir) / "summary.json"
    atomic_write_json(out, summarise(cfg, results, wall_seconds))
    return out


def load_histories(cfg: TrainConfig) -> dict[str, dict[int, list[dict[str, Any]]]]:
    out: dict[str, dict[int, list[dict[str, Any]]]] = {}
    for mech in cfg.resolved_mechanisms():
        for seed in cfg.seeds:
            rows = read_jsonl(CellPaths.of(cfg.out_dir, mech.name, seed).metrics)
            if rows:
                out.setdefault(mech.name, {})[seed] = rows
    return out


def run(cfg: TrainConfig, *, resume: bool = False, only: list[str] | None = None,
        plot: bool = True, train: bool = True) -> dict[str, Any]:
    """Train all cells (DDP-aware), then write summary.json and plots on rank 0.

    ``train=False`` only collects the finished cells of ``out_dir`` into summary.json and plots.
    """
    dist_info: DistInfo = init_distributed(cfg.device)
    try:
        torch.set_num_threads(max(1, cfg.threads))
        out = Path(cfg.out_dir)
        if dist_info.is_main:
            atomic_write_json(out / "config.json", config_to_dict(cfg))
        task = make_task(cfg.task.name, **cfg.task.params())
        test = task.test_set(cfg.eval.test_size)
        t0 = time.perf_counter()
        results = []
        for mech in cfg.resolved_mechanisms():
            if (only and mech.name not in only) or not train:
                continue
            for seed in cfg.seeds:
                results.append(train_cell(cfg, mech, seed, task, test, dist_info=dist_info, resume=resume))
        wall = time.perf_counter() - t0
        summary: dict[str, Any] = {}
        if dist_info.is_main:
            # include cells finished by other invocations (e.g. --only) with the same config
            import json

            fp = cfg.fingerprint()
            have = {(r["mechanism"], r["seed"]) for r in results}
            for mech in cfg.resolved_mechanisms():
                for seed in cfg.seeds:
                    p = CellPaths.of(cfg.out_dir, mech.name, seed).result
                    if (mech.name, seed) not in have and p.exists():
                        r = json.loads(p.read_text())
                        if r.get("fingerprint") == fp:
                            results.append(r)
            write_summary(cfg, results, wall)
            summary = summarise(cfg, results, wall)
            if plot:
                from .plots import plot_curves

                plot_curves(load_histories(cfg), out, title=cfg.name)
        dist_info.barrier()
        return summary
    finally:
        shutdown_distributed(dist_info)
