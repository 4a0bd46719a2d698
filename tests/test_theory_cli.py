"""``polyattn analyze`` on the command line and the ``--measure`` machinery (no timing thresholds)."""

from __future__ import annotations

import json

import pytest

from polyattn import PolyAttentionError
from polyattn.cli import main
from polyattn.theory.measure import MeasureResult, default_sizes, measure, plot_measurement


def test_cli_text(capsys):
    assert main(["analyze", "x1*x2 + x2*x3", "--seq-len", "128"]) == 0
    out = capsys.readouterr().out
    assert "Analysis of h = x1*x2 + x2*x3" in out
    assert "r-fold composition    : 2" in out
    assert "plan at n = 128" in out


def test_cli_json(capsys):
    assert main(["analyze", "x1*x2*x3", "--json", "--seq-len", "64", "--head-dim", "8"]) == 0
    d = json.loads(capsys.readouterr().out)
    for key in ("num_variables", "degree", "is_tree", "quadratic", "approx_bound_exponent",
                "composition_depth", "match3", "exact_upper_exponent", "plan"):
        assert key in d
    assert d["match3"] is True and d["composition_depth"] == 2 and d["exact_upper_exponent"] == 3
    assert d["plan"]["seq_lens"] == [64, 64, 64] and d["plan"]["head_dim"] == 8


def test_cli_parse_error_exits_2(capsys):
    assert main(["analyze", "x1*x2 + x2*"]) == 2
    err = capsys.readouterr().err
    assert "dangling '*'" in err and "^" in err


def test_cli_bad_options_exit_2(capsys):
    assert main(["analyze", "x1*x2", "--plot"]) == 2
    assert "--plot needs --measure" in capsys.readouterr().err
    assert main(["analyze", "x1*x2", "--seq-len", "-3"]) == 2
    assert "seq_len must be a positive integer" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["analyze", "x1*x2", "--sizes", "a,b"])
    assert e.value.code == 2


def test_cli_measure_and_plot(tmp_path, capsys):
    png = tmp_path / "m.png"
    rc = main(["analyze", "x1*x2 + x2*x3", "--measure", "--sizes", "16,32,64", "--repeats", "1",
               "--plot", str(png)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "fitted  : n^" in out and "predicted: n^2" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_measure_result_fields(tmp_path):
    r = measure("x1*x2 + x2*x3 + x1*x3", sizes=[8, 16, 24], repeats=1)
    assert isinstance(r, MeasureResult)
    assert r.predicted_exponent == 3 and r.method == "elimination"
    assert len(r.seconds) == 3 and all(s > 0 for s in r.seconds)
    assert isinstance(r.fitted_exponent, float)
    json.dumps(r.to_dict())
    path = plot_measurement([r], tmp_path / "sub" / "p.png")
    assert (tmp_path / "sub" / "p.png").exists() and path.endswith("p.png")


def test_measure_bad_options():
    with pytest.raises(PolyAttentionError, match="at least two distinct"):
        measure("x1*x2", sizes=[16])
    with pytest.raises(PolyAttentionError, match="repeats must be a positive integer"):
        measure("x1*x2", sizes=[8, 16], repeats=0)
    assert len(default_sizes(7, 7)) >= 2
