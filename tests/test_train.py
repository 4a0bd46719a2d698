"""Training harness: config loading, end-to-end run, resume, SIGKILL safety, DDP equivalence."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from polyattn.cli import main as cli_main
from polyattn.train.config import ConfigError, load_config
from polyattn.train.io import load_checkpoint, read_jsonl
from polyattn.train.loop import CellPaths, lr_at, train_cell
from polyattn.train.runner import run

TINY = [
    "task.name=\"composition\"", "task.r=2", "task.m=5",
    "model.dim=16", "model.heads=1", "model.mlp_ratio=1.0",
    "optim.batch_size=8", "optim.warmup_steps=2", "eval.test_size=32", "eval.batch_size=32",
    "progress=false", "threads=1",
    "mechanisms=[{name=\"sa\", polynomial=\"x1*x2\"}, {name=\"tree\", polynomial=\"x1*x2 + x2*x3\"}]",
]


def tiny(tmp: Path, *extra: str):
    return load_config(None, [*TINY, f"out_dir=\"{tmp}\"", *extra])


# ---------------------------------------------------------------- config


def test_config_toml_and_overrides(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('name = "x"\nseeds = [4, 5]\n[optim]\nlr = 0.01\nsteps = 7\n[[mechanisms]]\nname = "t"\n'
                 'polynomial = "x1*x2 + x2*x3"\n')
    cfg = load_config(f, ["optim.lr=3e-4", "model.polynomial=x1*x2*x3", "task.m=9"])
    assert cfg.seeds == [4, 5] and cfg.optim.lr == 3e-4 and cfg.optim.steps == 7
    assert cfg.model.polynomial == "x1*x2*x3" and cfg.task.params() == {"m": 9}
    (mech,) = cfg.resolved_mechanisms()
    assert (mech.polynomial, mech.depth, mech.heads, mech.dim) == ("x1*x2 + x2*x3", 1, 1, 64)
    assert load_config(None).resolved_mechanisms()[0].polynomial == "x1*x2"


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["optim.lrr=1"], "unknown key 'lrr' at optim"),
        (["bogus=1"], "unknown key 'bogus' at top level"),
        (["optim.lr=fast"], "optim.lr: expected float"),
        (["seeds=3"], "seeds: expected a list"),
        (["optim.steps=1.5"], "optim.steps: expected int"),
        (["optim=3"], "expected a table"),
        (["nokeyvalue"], "expects key=value"),
        (["seeds=[]"], "at least one seed"),
        (["mechanisms=[{name='a'}, {name='a'}]"], "unique"),
        (["mechanisms=[{name='a', heads='x'}]"], r"mechanisms\[0\].heads"),
        (["optim.batch_size=0"], "must be positive"),
    ],
)
def test_config_errors(overrides: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(None, overrides)


def test_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[model]\nwidth = 3\n")
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) 'width' in \[model\]"):
        load_config(bad)
    broken = tmp_path / "broken.toml"
    broken.write_text("x = = 1\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(broken)


def test_lr_schedule() -> None:
    cfg = load_config(None, ["optim.steps=100", "optim.warmup_steps=10", "optim.lr=1.0", "optim.min_lr_ratio=0.1"])
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0)
    assert lr_at(100, cfg) == pytest.approx(0.1)


# ---------------------------------------------------------------- end to end


def test_run_writes_summary_metrics_plots(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli_main(["train", *sum((["--set", s] for s in TINY), []), "--set", "optim.steps=6",
                   "--set", "eval.every=3", "--set", "seeds=[0,1]", "--out", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "tree" in out and "summary.json" in out
    s = json.loads((tmp_path / "summary.json").read_text())
    assert set(s["mechanisms"]) == {"sa", "tree"}
    m = s["mechanisms"]["tree"]
    assert set(m["seeds"]) == {"0", "1"}
    accs = [v["test_acc"] for v in m["seeds"].values()]
    assert m["test_acc"]["mean"] == pytest.approx(sum(accs) / 2)
    assert m["train_seconds"]["mean"] > 0 and s["wall_seconds"] > 0
    rows = read_jsonl(tmp_path / "metrics" / "tree_seed1.jsonl")
    assert [r["step"] for r in rows] == [0, 3, 6]
    assert all(0 <= r["test_acc"] <= 1 for r in rows)
    for png in ("curves_steps.png", "curves_seconds.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
    assert not list(tmp_path.rglob("*.tmp"))
    # --summary-only trains nothing and rebuilds the same summary from the finished cells
    (tmp_path / "summary.json").unlink()
    assert cli_main(["train", *sum((["--set", s] for s in TINY), []), "--set", "optim.steps=6",
                     "--set", "eval.every=3", "--set", "seeds=[0,1]", "--out", str(tmp_path), "--summary-only"]) == 0
    again = json.loads((tmp_path / "summary.json").read_text())
    assert again["mechanisms"]["tree"]["test_acc"] == m["test_acc"]
    # the report collects it into a markdown table with the theory's prediction
    from polyattn.train.report import main as report_main

    assert report_main([str(tmp_path), "--out", str(tmp_path / "docs")]) == 0
    table = (tmp_path / "docs" / "tables.md").read_text()
    assert "| tree | `x1*x2 + x2*x3` | 1 × 1 |" in table and "yes (composes 2)" in table
    assert "no (composes 1 < 2" in table
    # accuracy vs m needs >= 2 values of m; --vs-m restricts which runs make that plot
    other = tmp_path / "m9"
    other.mkdir()
    (other / "summary.json").write_text(json.dumps(again | {"task": again["task"] | {"m": 9}}))
    assert report_main([str(tmp_path), str(other), "--out", str(tmp_path / "d2")]) == 0
    assert (tmp_path / "d2" / "accuracy_vs_m.png").exists()
    assert report_main([str(tmp_path), str(other), "--out", str(tmp_path / "d3"), "--vs-m", "m9"]) == 0
    assert not (tmp_path / "d3" / "accuracy_vs_m.png").exists()


def test_cli_reports_config_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["train", "--set", "optim.nope=1"]) == 2
    assert "unknown key 'nope'" in capsys.readouterr().err


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def test_resume_equals_uninterrupted(tmp_path: Path) -> None:
    from polyattn.tasks import make_task

    a, b = tmp_path / "a", tmp_path / "b"
    cfg_a = tiny(a, "optim.steps=12", "checkpoint_every=4", "eval.every=2")
    cfg_b = tiny(b, "optim.steps=12", "checkpoint_every=4", "eval.every=2")
    task = make_task("composition", r=2, m=5)
    test = task.test_set(32)
    (mech,) = [m for m in cfg_a.resolved_mechanisms() if m.name == "tree"]
    full = train_cell(cfg_a, mech, 0, task, test)
    # interrupted after 6 steps: the checkpoint is at step 4; metrics after it are dropped on resume
    assert train_cell(cfg_b, mech, 0, task, test, stop_after=6) == {"stopped_at": 6}
    pb = CellPaths.of(b, "tree", 0)
    assert load_checkpoint(pb.checkpoint)["step"] == 4
    resumed = train_cell(cfg_b, mech, 0, task, test, resume=True)
    pa = CellPaths.of(a, "tree", 0)
    for k, v in _weights(pa.checkpoint).items():
        torch.testing.assert_close(_weights(pb.checkpoint)[k], v, rtol=0, atol=0)
    assert [r["step"] for r in read_jsonl(pb.metrics)] == [0, 2, 4, 6, 8, 10, 12]
    assert resumed["test_acc"] == full["test_acc"]
    # a finished cell is not retrained on --resume
    assert train_cell(cfg_b, mech, 0, task, test, resume=True) == resumed
    # a changed config refuses to resume from the old checkpoint
    cfg_c = tiny(b, "optim.steps=12", "checkpoint_every=4", "eval.every=2", "optim.lr=0.5")
    pb.result.unlink()
    with pytest.raises(ConfigError, match="different config"):
        train_cell(cfg_c, mech, 0, task, test, resume=True)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1] / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def _train_args(out: Path, *extra: str) -> list[str]:
    return ["train", *sum((["--set", s] for s in [*TINY, *extra]), []), "--out", str(out)]


@pytest.mark.slow
def test_sigkill_mid_training_then_resume(tmp_path: Path) -> None:
    """SIGKILL mid-run: the checkpoint is loadable and at most one interval behind; resume finishes
    with exactly the weights of an uninterrupted run."""
    killed, ref = tmp_path / "killed", tmp_path / "ref"
    extra = ["optim.steps=120", "checkpoint_every=10", "eval.every=1", "eval.test_size=4", "seeds=[0]",
             "mechanisms=[{name=\"tree\", polynomial=\"x1*x2 + x2*x3\"}]"]
    proc = subprocess.Popen([sys.executable, "-m", "polyattn.cli", *_train_args(killed, *extra)],
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    paths = CellPaths.of(killed, "tree", 0)
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            rows = read_jsonl(paths.metrics)
            if rows and rows[-1]["step"] >= 25:
                break
            assert proc.poll() is None, "training finished before it could be killed"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    last_seen = read_jsonl(paths.metrics)[-1]["step"]
    ck = load_checkpoint(paths.checkpoint)  # never half-written: always loads
    assert 10 <= ck["step"] < 120 and ck["step"] % 10 == 0
    assert last_seen - ck["step"] <= 10, (last_seen, ck["step"])
    rc = subprocess.run([sys.executable, "-m", "polyattn.cli", *_train_args(killed, *extra), "--resume"],
                        env=_env(), capture_output=True, text=True, timeout=300)
    assert rc.returncode == 0, rc.stderr[-2000:]
    run(tiny(ref, *extra))
    for k, v in _weights(CellPaths.of(ref, "tree", 0).checkpoint).items():
        torch.testing.assert_close(_weights(paths.checkpoint)[k], v, rtol=0, atol=0)
    steps = [r["step"] for r in read_jsonl(paths.metrics)]
    assert steps == list(range(121))


@pytest.mark.slow
def test_ddp_two_processes_equal_one(tmp_path: Path) -> None:
    """torchrun with 2 gloo processes on half batches = 1 process on the global batch."""
    extra = ["optim.steps=5", "eval.every=5", "seeds=[0]", "optim.batch_size=8",
             "mechanisms=[{name=\"tree\", polynomial=\"x1*x2 + x2*x3\"}]"]
    two, one = tmp_path / "two", tmp_path / "one"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "polyattn.cli", *_train_args(two, *extra)]
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    run(tiny(one, *extra))
    w2 = _weights(CellPaths.of(two, "tree", 0).checkpoint)
    w1 = _weights(CellPaths.of(one, "tree", 0).checkpoint)
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-5, atol=1e-6)
    s2 = json.loads((two / "summary.json").read_text())["mechanisms"]["tree"]["seeds"]["0"]
    s1 = json.loads((one / "summary.json").read_text())["mechanisms"]["tree"]["seeds"]["0"]
    assert s2["test_acc"] == s1["test_acc"]


def test_demo_job_runs_and_prints_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    from polyattn.train import demo_job

    load_config(None, demo_job.DEMO_OVERRIDES)  # the real demo config is valid
    monkeypatch.setattr(demo_job, "DEMO_OVERRIDES", [
        *demo_job.DEMO_OVERRIDES, f"out_dir=\"{tmp_path}\"", "optim.steps=4", "eval.every=2",
        "eval.test_size=16", "seeds=[0]", "progress=false",
    ])
    demo_job.run_training_demo()
    out = capsys.readouterr().out
    assert "tree x1*x2+x2*x3" in out and "self-attention x1*x2" in out
    assert str(tmp_path / "curves_steps.png") in out
    assert (tmp_path / "curves_steps.png").exists()
