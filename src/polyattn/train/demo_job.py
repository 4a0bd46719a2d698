"""The training part of ``make demo``: 1-layer tree-attention vs 1-layer self-attention on 2-fold
function composition at a small size, deterministically, in a few minutes on a 2-core CPU.

Every random draw is seeded (the task data are a pure function of ``(seed, step)``, the weights of
``seed``), training is single-threaded, so the printed table is the same on every run of the same
torch build. Output goes to ``runs/demo`` under the current directory.
"""

from __future__ import annotations

import time
from pathlib import Path

from .cli import format_table
from .config import load_config

__all__ = ["run_training_demo", "DEMO_OVERRIDES"]

#: the demo run, as ``polyattn train`` overrides (``polyattn train --set …`` reproduces it)
DEMO_OVERRIDES = [
    'name="demo: 2-fold composition, m = 25"',
    'out_dir="runs/demo"',
    "seeds=[0]",
    'task.name="composition"', "task.r=2", "task.m=25",
    "model.dim=64", "model.depth=1", "model.heads=1",
    "optim.steps=2500", "optim.batch_size=64", "optim.lr=1e-3", "optim.warmup_steps=100",
    "eval.every=100", "eval.test_size=1000",
    "checkpoint_every=500", "threads=1",
    'mechanisms=[{name="self-attention x1*x2", polynomial="x1*x2"}, '
    '{name="tree x1*x2+x2*x3", polynomial="x1*x2 + x2*x3"}]',
]


def run_training_demo() -> None:
    """Train both mechanisms (seed 0), print the accuracy table and where the plots are."""
    from .runner import run

    cfg = load_config(None, DEMO_OVERRIDES)
    print("Training 1-layer 1-head self-attention (x1*x2) and tree-attention (x1*x2 + x2*x3) on")
    print(f"2-fold function composition, m = {cfg.task.m} (sequence length {2 * (cfg.task.m or 0) + 1}), "
          f"{cfg.optim.steps} steps x batch {cfg.optim.batch_size}, seeds {cfg.seeds} ...", flush=True)
    t0 = time.perf_counter()
    summary = run(cfg, resume=False)
    print()
    print(format_table(summary))
    out = Path(cfg.out_dir).resolve()
    print(f"\ntraining took {time.perf_counter() - t0:.0f} s; held-out test set of {cfg.eval.test_size} examples")
    print(f"learning curves saved to {out / 'curves_steps.png'} and {out / 'curves_seconds.png'}")
    print(f"summary saved to {out / 'summary.json'}")
