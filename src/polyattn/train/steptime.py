"""Training step-time benchmark: tree-attention vs self-attention at the same width.

One *step* = batch generation + forward + backward + AdamW update of a 1-layer 1-head
:class:`~polyattn.PolyTransformer` on 2-fold composition (the experiment's exact step). The
mechanisms are measured interleaved (round-robin, ``rounds`` × ``steps`` each) in one process, so
load from other processes affects them alike; the reported figure is the median per-round mean and
the headline is the ratio to self-attention measured in the same run.

    python -m polyattn.train.steptime --out docs/results/steptime
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ..nn import PolyTransformer
from ..tasks import FunctionComposition
from .io import atomic_write_json

__all__ = ["measure", "main"]

MECHANISMS = {
    "self-attention": "x1*x2",
    "tree x1*x2+x2*x3": "x1*x2 + x2*x3",
    "path h3": "x1*x2 + x2*x3 + x3*x4",
    "strassen": "x1*x2 + x2*x3 + x1*x3",
    "tensor x1*x2*x3": "x1*x2*x3",
}


def measure(m: int, dim: int, batch: int, rounds: int, steps: int, names: list[str]) -> dict[str, Any]:
    torch.manual_seed(0)
    task = FunctionComposition(2, m)
    setups = {}
    for name in names:
        model = PolyTransformer(task.vocab_sizes, task.num_classes, dim=dim, depth=1,
                                polynomial=MECHANISMS[name], heads=1)
        setups[name] = (model, torch.optim.AdamW(model.parameters(), lr=1e-3))
    times: dict[str, list[float]] = {n: [] for n in names}
    step = 0
    for r in range(rounds + 1):  # round 0 is warm-up
        for name, (model, opt) in setups.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                b = task.train_batch(0, step, batch)
                step += 1
                loss = torch.nn.functional.cross_entropy(model(b.tokens), b.labels)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            if r:
                times[name].append(1000 * (time.perf_counter() - t0) / steps)
    base = statistics.median(times[names[0]])
    return {
        "m": m, "seq_len": 2 * m + 1, "dim": dim, "batch": batch, "rounds": rounds, "steps_per_round": steps,
        "ms_per_step": {n: statistics.median(v) for n, v in times.items()},
        "ms_per_round": times,
        "ratio_to_self_attention": {n: statistics.median(v) / base for n, v in times.items()},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/steptime", help="output directory (JSON + PNG)")
    ap.add_argument("--m", type=int, nargs="+", default=[25, 50])
    ap.add_argument("--dim", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--mechanisms", nargs="+", default=["self-attention", "tree x1*x2+x2*x3", "path h3"],
                    choices=list(MECHANISMS))
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = []
    for m in args.m:
        for dim in args.dim:
            res = measure(m, dim, args.batch, args.rounds, args.steps, args.mechanisms)
            results.append(res)
            print(f"m={m:3d} N={2 * m + 1:3d} dim={dim:4d}: " + ", ".join(
                f"{n} {res['ms_per_step'][n]:.1f} ms ({res['ratio_to_self_attention'][n]:.2f}x)"
                for n in args.mechanisms), flush=True)
    out = Path(args.out)
    atomic_write_json(out / "steptime.json", {"torch": torch.__version__, "threads": args.threads,
                                              "command": "python -m polyattn.train.steptime " + " ".join(sys.argv[1:] if argv is None else argv),
                                              "results": results})
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    labels = [f"N={r['seq_len']}\nd={r['dim']}" for r in results]
    width = 0.8 / len(args.mechanisms)
    for i, n in enumerate(args.mechanisms):
        ax.bar([j + i * width for j in range(len(results))], [r["ratio_to_self_attention"][n] for r in results],
               width, label=n)
    ax.axhline(2.0, color="k", ls="--", lw=1, label="2x (acceptance bound)")
    ax.set_xticks([j + width * (len(args.mechanisms) - 1) / 2 for j in range(len(results))], labels)
    ax.set_ylabel("training step time / self-attention (same run)")
    ax.set_title("1-layer 1-head training step, 2-fold composition")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "steptime.png", dpi=110)
    plt.close(fig)
    print(f"wrote {out / 'steptime.json'} and {out / 'steptime.png'}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
