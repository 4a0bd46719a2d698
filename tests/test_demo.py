"""`polyattn demo --quick` (part 1 of `make demo`) runs and prints real checks."""

from polyattn.cli import main


def test_demo_quick_part_runs(capsys):
    assert main(["demo", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "Plan for x1*x2 + x2*x3" in out
    assert "max err f32" in out and "Match3" in out
    for line in out.splitlines():
        if line.startswith(("tree (path h2)", "strassen", "tensor t=3")) and "n^" in line and "e-" in line:
            err64 = float(line.split()[-3])
            assert err64 < 1e-9
