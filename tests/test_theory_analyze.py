"""Classification table of ``polyattn.analyze`` (DESIGN §1.4–§1.5, docs/theory.md)."""

from __future__ import annotations

import json

import pytest

import polyattn
from polyattn import PolyAttentionError, PolynomialSyntaxError, analyze

N = None
W = "n^omega"
S = "n^(2+eps)"

# polynomial, quadratic, exact_upper_exponent, exact_lower_bound, composition_depth, match3
TABLE = [
    # self-attention and paths
    ("x1*x2", True, 2, "n^2", 1, False),
    ("x1*x2 + x2*x3", True, 2, "n^2", 2, N),
    ("x1*x2 + x2*x3 + x3*x4", True, 2, "n^2", 3, N),
    ("x1*x2 + x2*x3 + x3*x4 + x4*x5", True, 2, "n^2", 4, N),
    ("x1*x2 + x2*x3 + x3*x4 + x4*x5 + x5*x6 + x6*x7 + x7*x8 + x8*x9", True, 2, "n^2", 8, N),
    ("x1*x3 + x2*x3", True, 2, "n^2", 2, N),  # relabelled h_2
    # stars
    ("x1*x2 + x1*x3", True, 2, "n^2", 1, N),
    ("x1*x2 + x1*x3 + x1*x4 + x1*x5", True, 2, "n^2", 1, N),
    ("x1*x2 + x2*x3 + x2*x4", True, 2, "n^2", 2, N),  # x1 is a leaf of a star
    # branching trees
    ("x1*x2 + x2*x3 + x2*x4 + x4*x5", True, 2, "n^2", 3, N),
    ("x1*x2 + x1*x3 + x2*x4 + x2*x5 + x3*x6 + x3*x7", True, 2, "n^2", 2, N),
    ("x1*x2 + x1*x3 + x3*x4", True, 2, "n^2", 2, N),  # x1 inside a path
    # forests and isolated variables
    ("x1*x2 + x3*x4", True, 2, "n^2", 1, N),
    ("x1*x2 + x2*x3 + x3*x4 + x5*x6", True, 2, "n^2", 3, N),
    ("x2*x3", True, 2, N, N, N),  # x1 in no monomial
    ("x1*x3", True, 2, "n^2", 1, N),  # x2 isolated
    ("x1*x2 + x2*x4", True, 2, "n^2", 2, N),  # x3 isolated
    # triangles (Strassen) and graphs containing one
    ("x1*x2 + x2*x3 + x1*x3", False, 3, W, 2, True),
    ("x3*x1 + x2*x3 + x2*x1", False, 3, W, 2, True),
    ("x1*x2 + x2*x3 + x3*x4 + x2*x4", False, 3, W, 2, N),  # triangle away from x1
    ("x1*x2 + x1*x3 + x2*x3 + x1*x4 + x1*x5 + x4*x5", False, 3, W, 2, True),
    ("x1*x2 + x1*x3 + x1*x4 + x2*x3 + x2*x4 + x3*x4", False, 4, W, 2, True),  # K4
    # cycles without triangles
    ("x1*x2 + x2*x3 + x3*x4 + x1*x4", False, 3, S, 2, N),
    ("x1*x2 + x2*x3 + x3*x4 + x4*x5 + x1*x5", False, 3, S, 3, N),
    ("x1*x2 + x2*x3 + x3*x4 + x4*x5 + x5*x6 + x1*x6", False, 3, S, 4, N),
    # tensor attention
    ("x1*x2*x3", False, 3, "n^3", 2, True),
    ("x1*x2*x3*x4", False, 4, "n^4", 2, True),
    ("x1*x2*x3*x4*x5", False, 5, "n^5", 2, True),
    ("x1*x2*x4", False, 3, "n^3", 2, True),  # x3 isolated
    # mixed degree
    ("x1*x2*x3 + x3*x4", False, 3, "n^3", 2, True),
    ("x1*x2 + x2*x3*x4", False, 3, "n^3", 1, N),
    ("x1*x2 + x1*x2*x3", False, 3, "n^3", 1, N),
    ("x1*x2*x3 + x1*x4 + x4*x5", False, 3, "n^3", 2, True),
    ("x1*x2 + x2*x3*x4 + x3*x4*x5", False, 3, "n^3", 1, N),
]


@pytest.mark.parametrize("spec,quad,upper,lower,depth,m3", TABLE, ids=[row[0] for row in TABLE])
def test_classification_table(spec, quad, upper, lower, depth, m3):
    r = analyze(spec)
    d = r.to_dict()
    p = polyattn.parse(spec)
    assert d["num_variables"] == p.num_variables
    assert d["degree"] == p.degree
    assert d["is_tree"] is p.is_tree
    assert d["quadratic"] is quad
    assert d["quadratic"] is d["is_tree"]
    assert d["exact_upper_exponent"] == upper
    assert d["plan"]["exponent"] == upper
    assert d["exact_lower_bound"] == lower
    assert d["approx_bound_exponent"] == pytest.approx(1.0 / p.degree)
    assert d["composition_depth"] == depth
    assert d["match3"] is m3
    for claim in d["claims"].values():
        assert claim["reason"] and claim["hypothesis"]
    json.dumps(d)  # JSON-serialisable


def test_table_size_and_coverage():
    assert len(TABLE) >= 30


def test_hypotheses_named():
    d = analyze("x1*x2 + x2*x3 + x1*x3").to_dict()["claims"]
    assert "Max-2SAT" in d["exact_lower"]["hypothesis"]
    assert d["quadratic"]["hypothesis"] == "SETH"
    assert "communication complexity" in d["composition_depth"]["hypothesis"]
    assert analyze("x1*x2").to_dict()["claims"]["match3"]["hypothesis"] == "communication complexity"
    assert analyze("x1*x2 + x2*x3").to_dict()["claims"]["quadratic"]["hypothesis"] == "unconditional"
    assert analyze("x1*x2*x3*x4").to_dict()["claims"]["exact_lower"]["hypothesis"] == "SETH"
    silent = analyze("x1*x2 + x2*x3").to_dict()["claims"]["match3"]
    assert silent["value"] is None and "silent" in silent["hypothesis"]


def test_restriction_basis_is_reported():
    r = analyze("x1*x2 + x2*x3 + x3*x4 + x1*x4")
    assert r.composition.basis == "restriction"
    assert "zero the queries of {x4}" in r.composition.reason
    assert analyze("x1*x2 + x2*x3").composition.basis == "direct"


def test_str_report_sections():
    text = str(analyze("x1*x2 + x2*x3 + x1*x3", seq_len=256, head_dim=16))
    for needle in ("structure", "exact computation", "approximate computation",
                   "expressivity", "Match3", "n^omega", "Max-2SAT", "plan at n = 256, d = 16",
                   "method     : elimination"):
        assert needle in text
    assert "unknown" in str(analyze("x1*x2 + x2*x3"))


def test_plan_follows_sizes():
    r = analyze("x1*x2 + x2*x3", seq_len=100, head_dim=8)
    assert r.plan.spec.seq_lens == (100, 100, 100)
    assert r.to_dict()["plan"]["head_dim"] == 8
    assert analyze(polyattn.polynomial.path(3)).composition_depth == 3


def test_bad_input():
    with pytest.raises(PolynomialSyntaxError, match=r"\^"):
        analyze("x1*x2 + ")
    with pytest.raises(PolynomialSyntaxError, match="coefficients"):
        analyze("2*x1*x2")
    with pytest.raises(PolyAttentionError, match="seq_len must be a positive integer"):
        analyze("x1*x2", seq_len=0)
    with pytest.raises(PolyAttentionError, match="head_dim must be a positive integer"):
        analyze("x1*x2", head_dim=2.5)
    with pytest.raises(PolyAttentionError, match="polynomial must be a string"):
        analyze(3)


def test_long_cycle_uses_induced_path():
    t = 20
    spec = " + ".join(f"x{i}*x{i + 1}" for i in range(1, t)) + f" + x1*x{t}"
    r = analyze(spec, seq_len=64, head_dim=8)
    assert r.composition_depth == t - 2  # delete one neighbour of x1: a path with t - 1 vertices
    assert r.composition.basis == "restriction"
    assert r.match3_solvable is None
