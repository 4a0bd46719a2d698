"""The hand-set constructions solve the exact batches ``polyattn train`` feeds its models.

Each case loads a shipped training config, builds its task the way the runner does
(``make_task(cfg.task.name, **cfg.task.params())``), draws training batches with the loop's call
(``task.train_batch(seed, step, cfg.optim.batch_size)``) and the runner's test set
(``task.test_set(cfg.eval.test_size)``), and requires 100% accuracy of the one-layer, one-head
construction on every scored position.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from polyattn.tasks import IGNORE, Batch, make_task
from polyattn.theory import constructions as C
from polyattn.train.config import load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _batches(config: str, overrides: tuple[str, ...] = ()) -> tuple[object, list[Batch]]:
    cfg = load_config(CONFIGS / config, overrides)
    task = make_task(cfg.task.name, **cfg.task.params())
    last = cfg.optim.steps - 1
    batches = [task.train_batch(seed, step, cfg.optim.batch_size)
               for seed in cfg.seeds[:2] for step in (0, last)]
    batches.append(task.test_set(cfg.eval.test_size))
    return task, batches


def _accuracy(model: C.OneLayerModel, b: Batch) -> float:
    pred = model.predict(b.tokens)
    labels = b.labels.view(pred.shape)
    keep = labels != IGNORE
    return float((pred == labels)[keep].double().mean())


@pytest.mark.parametrize("config,r", [("composition_m25.toml", 2), ("composition3_m16.toml", 3),
                                      ("composition3_m8_tuned.toml", 3)])
def test_path_construction_on_composition_training_batches(config: str, r: int) -> None:
    task, batches = _batches(config)
    assert task.r == r
    model = C.composition_model(task.r, task.m)  # path h_r
    for b in batches:
        assert _accuracy(model, b) == 1.0


def test_strassen_construction_on_two_fold_composition_training_batches() -> None:
    task, batches = _batches("composition_m25_tuned_cubic.toml")
    assert (task.r, task.m) == (2, 25)
    model = C.composition_model(2, 25, polynomial="x1*x2 + x2*x3 + x1*x3")
    for b in batches:
        assert _accuracy(model, b) == 1.0


def test_tensor_construction_on_match3_training_batches() -> None:
    task, batches = _batches("match3_triples.toml")
    assert task.bos and task.seq_len == task.n + 1
    model = C.match3_model(task.modulus, seq_len=task.n)  # x1*x2*x3
    positives = 0.0
    for b in batches:
        assert _accuracy(model, b) == 1.0
        positives += float((b.labels == 1).double().mean())
    assert 0.2 < positives / len(batches) < 0.8  # both labels occur in quantity

