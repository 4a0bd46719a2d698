"""Training of one *cell* (one mechanism, one seed): the loop, evaluation, checkpoints, metrics.

Per step ``s`` the global batch is ``task.train_batch(seed, s, batch_size)`` (a pure function of
``(seed, s)``); rank ``r`` of ``W`` trains on rows ``[r·B/W, (r+1)·B/W)``. Loss is cross-entropy
(per token for per-position tasks), or with ``optim.loss = "bce"`` (binary tasks) binary
cross-entropy on a single logit per scored position (prediction: logit > 0). The learning rate warms up linearly for ``warmup_steps`` and
then follows a cosine to ``lr · min_lr_ratio``. Every ``eval.every`` steps (and at step 0 and the
end) the model is evaluated on the held-out test set and a metrics row is appended to
``metrics/<cell>.jsonl``. Every ``checkpoint_every`` steps a checkpoint holding the model,
optimizer, RNG state, step, training seconds and the metrics history is written atomically, so a
killed run resumed with ``--resume`` loses at most one checkpoint interval and the metrics file is
rewritten from the checkpoint (no duplicated or lost rows).

``seconds`` counts training steps only (data generation, forward, backward, update), not
evaluation or checkpointing, so curves against wall-clock compare mechanisms fairly.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..nn import PolyTransformer
from ..tasks import IGNORE, Batch, Task
from .config import ConfigError, MechanismConfig, TrainConfig
from .distributed import DistInfo
from .io import append_jsonl, atomic_write_json, atomic_write_jsonl, load_checkpoint, save_checkpoint

__all__ = ["build_model", "lr_at", "evaluate", "predict", "train_cell", "cell_name", "CellPaths"]


def cell_name(mechanism: str, seed: int) -> str:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", mechanism).strip("-").lower() or "mechanism"
    return f"{slug}_seed{seed}"


@dataclass(frozen=True)
class CellPaths:
    checkpoint: Path
    metrics: Path
    result: Path

    @classmethod
    def of(cls, out_dir: str | Path, mechanism: str, seed: int) -> CellPaths:
        out, name = Path(out_dir), cell_name(mechanism, seed)
        return cls(out / "checkpoints" / f"{name}.pt", out / "metrics" / f"{name}.jsonl",
                   out / "cells" / f"{name}.json")


def build_model(cfg: TrainConfig, mech: MechanismConfig, task: Task) -> PolyTransformer:
    """The :class:`PolyTransformer` for ``mech`` on ``task`` (parameters from the current RNG)."""
    m = cfg.model
    if cfg.optim.loss == "bce" and task.num_classes != 2:
        raise ConfigError(f"optim.loss = 'bce' needs a binary task; {task.name} has {task.num_classes} classes")
    return PolyTransformer(
        task.vocab_sizes,
        1 if cfg.optim.loss == "bce" else task.num_classes,
        dim=mech.dim or m.dim,
        depth=mech.depth or m.depth,
        polynomial=mech.polynomial or m.polynomial,
        heads=mech.heads or m.heads,
        dim_head=m.dim_head,
        mlp_ratio=m.mlp_ratio,
        max_len=task.seq_len if m.pos_emb else None,
        readout=task.readout,
        dropout=m.dropout,
        method=m.method,
        valueless=list(m.valueless if mech.valueless is None else mech.valueless),
        value_placement=mech.value_placement or "own",
        norm=m.norm,
        embedding=m.embedding,
    )


def lr_at(step: int, cfg: TrainConfig) -> float:
    o = cfg.optim
    if step < o.warmup_steps:
        return o.lr * (step + 1) / o.warmup_steps
    span = max(1, o.steps - o.warmup_steps)
    frac = min(1.0, (step - o.warmup_steps) / span)
    return o.lr * (o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


def predict(logits: torch.Tensor, loss: str = "ce") -> torch.Tensor:
    """Class predictions from model logits: argmax, or ``logit > 0`` for a one-logit BCE model."""
    return (logits[..., 0] > 0).long() if loss == "bce" else logits.argmax(-1)


def _loss_and_correct(logits: torch.Tensor, labels: torch.Tensor,
                      loss_kind: str = "ce") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean loss, number of correct scored positions, number of scored positions."""
    lab = labels.reshape(-1)
    keep = lab != IGNORE
    if loss_kind == "bce":
        flat = logits.reshape(-1)
        loss = F.binary_cross_entropy_with_logits(flat[keep], lab[keep].to(flat.dtype))
    else:
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), lab, ignore_index=IGNORE)
    correct = ((predict(logits, loss_kind).reshape(-1) == lab) & keep).sum()
    return loss, correct, keep.sum()


@torch.no_grad()
def evaluate(model: nn.Module, test: Batch, batch_size: int, device: torch.device,
             loss: str = "ce") -> dict[str, float]:
    """Accuracy over scored positions (``acc``), whole-sequence accuracy (``seq_acc``) and loss."""
    was = model.training
    model.eval()
    tot_loss = tot_correct = tot_n = seq_ok = 0.0
    for i in range(0, len(test), batch_size):
        b = test.slice(slice(i, i + batch_size))
        tokens, labels = b.tokens.to(device), b.labels.to(device)
        logits = model(tokens)
        lval, correct, n = _loss_and_correct(logits, labels, loss)
        tot_loss += float(lval) * float(n)
        tot_correct += float(correct)
        tot_n += float(n)
        ok = (predict(logits, loss) == labels) | (labels == IGNORE)
        seq_ok += float(ok.reshape(ok.shape[0], -1).all(-1).sum())
    model.train(was)
    return {"test_acc": tot_correct / max(tot_n, 1.0), "test_seq_acc": seq_ok / max(len(test), 1),
            "test_loss": tot_loss / max(tot_n, 1.0)}


def _summarise(history: list[dict[str, Any]], mech: MechanismConfig, seed: int, nparams: int,
               seconds: float, steps: int) -> dict[str, Any]:
    accs = [h["test_acc"] for h in history]
    first95 = next((h for h in history if h["test_acc"] >= 0.95), None)
    return {
        "mechanism": mech.name, "polynomial": mech.polynomial, "depth": mech.depth, "heads": mech.heads,
        "dim": mech.dim, "seed": seed, "params": nparams, "steps": steps,
        "test_acc": accs[-1], "best_test_acc": max(accs), "test_seq_acc": history[-1]["test_seq_acc"],
        "train_seconds": seconds, "step_ms": 1000.0 * seconds / max(steps, 1),
        "steps_to_95": first95["step"] if first95 else None,
        "seconds_to_95": first95["seconds"] if first95 else None,
    }


def train_cell(
    cfg: TrainConfig,
    mech: MechanismConfig,
    seed: int,
    task: Task,
    test: Batch,
    *,
    dist_info: DistInfo | None = None,
    resume: bool = False,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Train one cell to ``cfg.optim.steps`` and return its result dict (see ``cells/*.json``).

    ``stop_after`` (testing aid) returns early after that many steps of this call.
    """
    dist_info = dist_info or DistInfo()
    paths = CellPaths.of(cfg.out_dir, mech.name, seed)
    fp = cfg.fingerprint()
    main = dist_info.is_main
    device = dist_info.device(cfg.device)
    if resume and paths.result.exists():
        import json

        res = json.loads(paths.result.read_text())
        if res.get("fingerprint") == fp:
            return res
    gbs = cfg.optim.batch_size
    if gbs % dist_info.world_size:
        raise ConfigError(f"optim.batch_size={gbs} must be divisible by the number of processes "
                          f"({dist_info.world_size})")
    local = gbs // dist_info.world_size
    lo, hi = dist_info.rank * local, (dist_info.rank + 1) * local

    torch.manual_seed(seed)
    model = build_model(cfg, mech, task).to(device)
    nparams = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    step, seconds, history = 0, 0.0, []
    if resume and paths.checkpoint.exists():
        ck = load_checkpoint(paths.checkpoint)
        if ck.get("fingerprint") != fp:
            raise ConfigError(f"{paths.checkpoint} was written with a different config; "
                              f"rerun without --resume or use another out_dir")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optim"])
        torch.set_rng_state(ck["rng"])  # dropout stream (CPU generator)
        step, seconds, history = int(ck["step"]), float(ck["seconds"]), list(ck["history"])
    if main:
        # the metrics file is exactly the checkpoint's history (drops rows after the checkpoint)
        atomic_write_jsonl(paths.metrics, history)
    ddp: nn.Module = model
    if dist_info.enabled:
        from torch.nn.parallel import DistributedDataParallel

        ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def record(row: dict[str, Any]) -> None:
        history.append(row)
        if main:
            append_jsonl(paths.metrics, row)

    def checkpoint() -> None:
        if main:
            save_checkpoint(paths.checkpoint, {
                "model": model.state_dict(), "optim": opt.state_dict(), "rng": torch.get_rng_state(),
                "step": step, "seconds": seconds, "history": history, "fingerprint": fp,
                "mechanism": mech.name, "seed": seed,
            })
        dist_info.barrier()

    base = {"mechanism": mech.name, "seed": seed}
    if step == 0 and not history:
        record({**base, "step": 0, "seconds": 0.0, "lr": 0.0, "train_loss": None, "train_acc": None,
                **evaluate(model, test, cfg.eval.batch_size, device, cfg.optim.loss)})
    steps = cfg.optim.steps
    pbar = None
    if main and cfg.progress:
        import sys

        from tqdm.auto import tqdm

        # In a log (not a terminal) refresh rarely so that the bar does not flood the output.
        pbar = tqdm(total=steps, initial=step, desc=f"{mech.name} seed {seed}", dynamic_ncols=True,
                    leave=False, mininterval=0.1 if sys.stderr.isatty() else 15.0)
    run_loss = run_correct = run_n = 0.0
    done_here = 0
    model.train()
    while step < steps:
        t0 = time.perf_counter()
        lr = lr_at(step, cfg)
        for g in opt.param_groups:
            g["lr"] = lr
        b = task.train_batch(seed, step, gbs).slice(slice(lo, hi))
        logits = ddp(b.tokens.to(device))
        loss, correct, n = _loss_and_correct(logits, b.labels.to(device), cfg.optim.loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.optim.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        opt.step()
        seconds += time.perf_counter() - t0
        step += 1
        done_here += 1
        run_loss += float(loss.detach()) * float(n)
        run_correct += float(correct)
        run_n += float(n)
        if step % cfg.eval.every == 0 or step == steps:
            ev = evaluate(model, test, cfg.eval.batch_size, device, cfg.optim.loss)
            record({**base, "step": step, "seconds": seconds, "lr": lr,
                    "train_loss": run_loss / max(run_n, 1), "train_acc": run_correct / max(run_n, 1), **ev})
            run_loss = run_correct = run_n = 0.0
            if pbar is not None:
                pbar.set_postfix(test_acc=f"{ev['test_acc']:.3f}", loss=f"{history[-1]['train_loss']:.3f}")
        if step % cfg.checkpoint_every == 0 or step == steps:
            checkpoint()
        if pbar is not None:
            pbar.update(1)
        if stop_after is not None and done_here >= stop_after and step < steps:
            if pbar is not None:
                pbar.close()
            return {"stopped_at": step}
    if pbar is not None:
        pbar.close()
    res = {**_summarise(history, mech, seed, nparams, seconds, steps), "fingerprint": fp}
    if main:
        atomic_write_json(paths.result, res)
    return res
