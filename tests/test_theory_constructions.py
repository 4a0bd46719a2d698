"""Explicit one-layer constructions: 100% accuracy on random instances (docs/theory.md)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import polyattn
from polyattn import PolyAttentionError
from polyattn.tasks import FunctionComposition, Match3
from polyattn.tasks.composition import compose
from polyattn.tasks.match3 import match3_labels
from polyattn.theory import constructions as C
from polyattn.theory.report import verify_composition, verify_match3

INSTANCES = 1000


@pytest.mark.parametrize("r", [1, 2, 3, 4])
def test_path_composition_exact(r):
    rows = verify_composition(rs=(r,), ms=(8, 25, 64), instances=INSTANCES, seed=r)
    for row in rows:
        assert row["instances"] >= 1000
        assert row["accuracy"] == 1.0, row
        assert row["max_abs_dev"] < 1e-6, row  # the softmax is essentially hard


def test_strassen_two_fold_composition_exact():
    rows = verify_composition(rs=(2,), ms=(8, 25), instances=INSTANCES, seed=7,
                              polynomial="x1*x2 + x2*x3 + x1*x3")
    for row in rows:
        assert row["polynomial"] == "x1*x2 + x1*x3 + x2*x3"
        assert row["accuracy"] == 1.0, row


def test_composition_on_a_tree_containing_the_path():
    # any polynomial with the path monomials works: the extra edge x2*x4 gets zero weight
    rows = verify_composition(rs=(3,), ms=(8,), instances=300, seed=3,
                              polynomial="x1*x2 + x2*x3 + x3*x4 + x2*x5")
    assert rows[0]["accuracy"] == 1.0


@pytest.mark.parametrize("M,n,t,count", [(31, 6, 3, INSTANCES), (97, 12, 3, INSTANCES), (31, 6, 4, 300)])
def test_match3_tensor_exact(M, n, t, count):
    (row,) = verify_match3(((M, n, t),), instances=count, seed=M + t)
    assert row["accuracy"] == 1.0, row
    assert 0.05 < row["positive_rate"] < 0.95  # both labels occur
    assert row["max_abs_dev"] < 1e-6


def test_match3_labels_brute_force():
    # the one Match3 rule lives in polyattn.tasks (instances were unified with it)
    values = np.random.default_rng(0).integers(1, 11, size=(20, 7))
    labels = match3_labels(values, 11)
    for b in range(20):
        v = values[b].tolist()
        want = [int(any((x + y + z) % 11 == 0 for y in v for z in v)) for x in v]
        assert labels[b].tolist() == want


def test_composition_encoding_layout():
    # layout of polyattn.tasks.FunctionComposition: (value, index, table), query (x, m, r) last
    tables = np.array([[[1, 2, 0], [2, 2, 1]]])  # r=2, m=3
    x = np.array([2])
    assert compose(tables, x).tolist() == [2]  # f1(2) = 0, f2(0) = 2
    tok, y = FunctionComposition(2, 3).encode(tables, x)
    assert y.tolist() == [2]
    assert tok.shape == (1, 2 * 3 + 1, 3)
    assert tok[0, -1].tolist() == [2, 3, 2]  # query token last
    assert tok[0, 0].tolist() == [1, 0, 0] and tok[0, 3].tolist() == [2, 0, 1]


def test_model_is_one_layer_one_head_float64():
    model = C.composition_model(2, 5)
    assert model.polynomial == polyattn.polynomial.path(2)
    assert all(w.dtype == torch.float64 for w in model.w_q)
    assert len(model.w_q) == 3 and len(model.w_v) == 2
    tok = FunctionComposition(2, 5).train_batch(0, 0, 4).tokens
    assert model.predict(tok).shape == (4, 1)
    # the reference (brute force, the specification) gives the same answer
    assert torch.equal(model.predict(tok, method="reference"), model.predict(tok))


def test_public_names():
    import polyattn.constructions as pc

    assert pc.composition_model is C.composition_model
    assert polyattn.constructions.match3_model is C.match3_model


def test_bad_options():
    with pytest.raises(PolyAttentionError, match="unsupported mechanism 'strassen'.*'tensor'"):
        C.match3_model(31, mechanism="strassen")
    with pytest.raises(PolyAttentionError, match="lacks x2\\*x3"):
        C.composition_model(2, 8, polynomial="x1*x2 + x1*x3")
    with pytest.raises(PolyAttentionError, match="r must be an integer >= 1"):
        C.composition_model(0, 8)
    with pytest.raises(PolyAttentionError, match="modulus must be an integer >= 3"):
        C.match3_model(2)
    with pytest.raises(PolyAttentionError, match=r"tokens must be \[batch, seq, 3\]"):
        C.composition_model(1, 4).predict(torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(PolyAttentionError, match="values must lie in 1..10"):
        Match3(n=3, modulus=11, bos=True).encode(np.array([[0, 3, 4]]))
