"""Match3 training options: the numeric embedding, no-LayerNorm blocks, BCE, BOS and binned data,
and the per-bin report (issue 14 part 3)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from polyattn import PolyAttentionError
from polyattn.nn import PolyTransformer
from polyattn.tasks import IGNORE, Match3
from polyattn.tasks.match3 import match3_bins, match3_labels, pair_only_matches
from polyattn.train.config import ConfigError, load_config
from polyattn.train.loop import _loss_and_correct, build_model
from polyattn.train.match3_report import main as report_main
from polyattn.train.match3_report import reference_rates
from polyattn.train.runner import run


def test_numeric_embedding_is_a_linear_map_of_raw_integer_features() -> None:
    torch.manual_seed(0)
    model = PolyTransformer(37, 1, dim=8, heads=2, embedding="numeric", max_len=5, readout="all",
                            norm=False).double()
    assert len(model.embeds) == 0 and model.numeric.in_features == 5  # [x, x², p, p², 1]
    tok = torch.tensor([[[3], [0], [36], [5], [7]]])
    feats = model._numeric_features(tok)
    assert feats[0, 2].tolist() == [36.0, 1296.0, 2.0, 4.0, 1.0]
    assert model(tok).shape == (1, 5, 1)
    no_pos = PolyTransformer((5, 7), 2, dim=8, embedding="numeric")
    assert no_pos.numeric.in_features == 5  # [x_1, x_2, x_1², x_2², 1]
    both = PolyTransformer(37, 1, dim=8, embedding="both", max_len=5, readout="all")
    assert len(both.embeds) == 1 and both.numeric.in_features == 5 and both.pos is None
    assert both(tok).shape == (1, 5, 1)
    with pytest.raises(PolyAttentionError, match="embedding must be one of 'lookup', 'numeric', 'both'"):
        PolyTransformer(5, 2, embedding="fourier")
    with pytest.raises(PolyAttentionError, match="exceeds max_len=5"):
        model(torch.zeros(1, 6, 1, dtype=torch.long))


def test_norm_false_has_no_layernorm_and_trains() -> None:
    model = PolyTransformer(11, 2, dim=8, depth=2, norm=False, readout="all")
    assert not any(isinstance(m, nn.LayerNorm) for m in model.modules())
    assert sum(isinstance(m, nn.LayerNorm) for m in PolyTransformer(11, 2, dim=8, depth=2).modules()) == 5
    out = model(torch.randint(0, 11, (2, 6)))
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_bce_loss_matches_torch_and_skips_ignored_positions() -> None:
    logits = torch.tensor([[[2.0], [-1.0], [0.5]]])
    labels = torch.tensor([[1, IGNORE, 0]])
    loss, correct, n = _loss_and_correct(logits, labels, "bce")
    want = torch.nn.functional.binary_cross_entropy_with_logits(torch.tensor([2.0, 0.5]), torch.tensor([1.0, 0.0]))
    assert torch.allclose(loss, want) and int(correct) == 1 and int(n) == 2


def test_config_options_and_errors() -> None:
    cfg = load_config(None, ["task.name=\"match3\"", "optim.loss=\"bce\"", "model.norm=false",
                             "model.embedding=\"numeric\"", "task.bos=true", "task.distribution=\"binned\"",
                             "task.n=6", "task.modulus=11", "task.train_size=200", "task.test_size=40"])
    assert cfg.task.params()["bos"] is True
    task = Match3(**cfg.task.params())
    model = build_model(cfg, cfg.resolved_mechanisms()[0], task)
    assert model.head.out_features == 1 and model.embedding == "numeric"
    # fingerprints of configs that do not use the new options are unchanged
    assert "loss" not in json.dumps(load_config(None).fingerprint())
    with pytest.raises(ConfigError, match="optim.loss must be 'ce' or 'bce'"):
        load_config(None, ["optim.loss=\"mse\""])
    with pytest.raises(ConfigError, match="model.embedding must be"):
        load_config(None, ["model.embedding=\"x\""])
    comp = load_config(None, ["optim.loss=\"bce\""])
    with pytest.raises(ConfigError, match="needs a binary task"):
        from polyattn.tasks import make_task
        build_model(comp, comp.resolved_mechanisms()[0], make_task("composition", r=2, m=5))


def test_match3_bos_layout_and_binned_split() -> None:
    task = Match3(n=8, modulus=13, train_size=400, test_size=80, bos=True, distribution="binned")
    b = task.train_batch(0, 3, 16)
    assert b.tokens.shape == (16, 9, 1) and task.seq_len == 9
    assert (b.tokens[:, 0, 0] == 0).all() and (b.labels[:, 0] == IGNORE).all()
    assert (b.tokens[:, 1:] >= 1).all()
    assert torch.equal(b.labels[:, 1:], torch.from_numpy(match3_labels(b.tokens[:, 1:, 0].numpy(), 13)))
    train, test = task.split()
    for part, size in ((train, 400), (test, 80)):
        assert np.bincount(match3_bins(match3_labels(part, 13)), minlength=4).tolist() == [size // 4] * 4
    assert not {tuple(sorted(s)) for s in train.tolist()} & {tuple(sorted(s)) for s in test.tolist()}
    with pytest.raises(PolyAttentionError, match="distribution must be one of uniform, binned"):
        Match3(distribution="skewed")
    with pytest.raises(PolyAttentionError, match="divisible by 4"):
        Match3(train_size=10, distribution="binned")


def test_reference_rates_by_hand() -> None:
    task = Match3(n=3, modulus=7)
    # [1, 2, 4]: 1 + 2 + 4 = 7, a genuine triple; [3, 3, 3]: 9, no match; [1, 3, 3]: 1 + 3 + 3 = 7
    # uses only two values (x_i + 2 x_j or 2 x_i + x_j), a pair-only match for every position
    values = np.array([[1, 2, 4], [3, 3, 3], [1, 3, 3]])
    labels = match3_labels(values, 7)
    assert labels[0].tolist() == [1, 1, 1] and labels[1].tolist() == [0, 0, 0]
    assert labels[2].tolist() == [1, 1, 1]
    ref = reference_rates(task, values[:, :, None], labels)
    assert ref["positive_rate"] == pytest.approx(6 / 9)
    assert ref["bin_majority"] == 1.0  # each sequence is all-0 or all-1
    assert [b["sequences"] for b in ref["bins"]] == [1, 0, 0, 2]
    assert ref["bins"][3]["degenerate_share_of_positives"] == pytest.approx(0.5)


def test_tiny_match3_run_and_bin_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = load_config(None, [
        "task.name=\"match3\"", "task.n=6", "task.modulus=11", "task.train_size=200", "task.test_size=40",
        "task.bos=true", "task.distribution=\"binned\"", "model.dim=16", "model.heads=2", "model.norm=false",
        "model.embedding=\"numeric\"", "model.pos_emb=true", "model.dropout=0.4", "optim.loss=\"bce\"",
        "optim.steps=4", "optim.batch_size=8", "optim.warmup_steps=1", "eval.every=2", "eval.test_size=40",
        "checkpoint_every=2", "progress=false", "seeds=[0]", f"out_dir=\"{tmp_path / 'run'}\"",
        "mechanisms=[{name=\"sa\", polynomial=\"x1*x2\"}, {name=\"strassen\", polynomial=\"x1*x2 + x1*x3 + x2*x3\"}]",
    ])
    summary = run(cfg, plot=False)
    assert set(summary["mechanisms"]) == {"sa", "strassen"}
    assert report_main([str(tmp_path / "run"), "--out", str(tmp_path / "rep")]) == 0
    rep = json.loads((tmp_path / "rep" / "match3_bins.json").read_text())
    assert [c["mechanism"] for c in rep["cells"]] == ["sa", "strassen"]
    for c in rep["cells"]:
        assert len(c["bins"]) == 4 and 0.0 <= c["test_acc"] <= 1.0 and c["step"] == 4
    assert (tmp_path / "rep" / "match3_bins.png").exists()
    assert "pair + bin shortcut" in (tmp_path / "rep" / "match3_bins.md").read_text()


def test_pair_matches_false_leaves_only_three_value_matches() -> None:
    task = Match3(n=8, modulus=17, train_size=200, test_size=40, distribution="binned", pair_matches=False)
    train, test = task.split()
    for part in (train, test):
        assert not pair_only_matches(part, 17).any()
        lab = match3_labels(part, 17)
        # with no pair-only match, the rule with pairwise distinct positions gives the same labels
        for seq, y in zip(part[:50].tolist(), lab[:50].tolist()):
            n = len(seq)
            distinct = [int(any((seq[i] + seq[j] + seq[k]) % 17 == 0 for j in range(n) for k in range(n)
                                if len({i, j, k}) == 3)) for i in range(n)]
            assert distinct == y
    tok, _ = task.sample(np.random.default_rng(0), 64)
    assert not pair_only_matches(tok[..., 0], 17).any()
    assert task.describe()["pair_matches"] is False and "pair_matches" not in Match3().describe()
