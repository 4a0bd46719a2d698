"""Polyadic tasks: determinism, exact labels against slow independent checkers, no leakage."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from polyattn import PolyAttentionError
from polyattn.tasks import (
    TASKS,
    BinaryComposition,
    FunctionComposition,
    Match3,
    QuotientRelationComposition,
    RelationComposition,
    make_task,
)

SMALL = {
    "composition": dict(r=3, m=5),
    "composition_binary": dict(n=6),
    "match3": dict(n=6, modulus=11, train_size=200, test_size=50),
    "relation": dict(m=4),
    "quotient_relation": dict(m=4, colors=2),
}


@pytest.mark.parametrize("name", sorted(TASKS))
def test_deterministic_and_well_formed(name: str) -> None:
    task = make_task(name, **SMALL[name])
    a, b = task.train_batch(3, 7, 16), task.train_batch(3, 7, 16)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.labels, b.labels)
    c = task.train_batch(3, 8, 16)
    assert not torch.equal(a.tokens, c.tokens)
    d = task.train_batch(4, 7, 16)
    assert not torch.equal(a.tokens, d.tokens)
    assert a.tokens.dtype == torch.int64 and a.tokens.shape[1:] == (task.seq_len, len(task.vocab_sizes))
    for ch, v in enumerate(task.vocab_sizes):
        assert 0 <= int(a.tokens[..., ch].min()) and int(a.tokens[..., ch].max()) < v
    assert int(a.labels.min()) >= 0 and int(a.labels.max()) < task.num_classes
    assert a.labels.shape == ((16,) if task.readout == "last" else (16, task.seq_len))
    t1, t2 = task.test_set(20), task.test_set(20)
    assert torch.equal(t1.tokens, t2.tokens)


def _check_composition(tok: np.ndarray, lab: np.ndarray, r: int, m: int) -> None:
    for seq, y in zip(tok.tolist(), lab.tolist()):
        tables: dict[int, dict[int, int]] = {}
        for value, index, table in seq[:-1]:
            tables.setdefault(table, {})[index] = value
        x, idx, tid = seq[-1]
        assert idx == m and tid == r
        for i in range(r):
            assert sorted(tables[i]) == list(range(m))
            x = tables[i][x]
        assert x == y


@pytest.mark.slow
def test_composition_labels_independent_checker() -> None:
    for r, m in [(1, 4), (2, 25), (3, 6)]:
        task = FunctionComposition(r, m)
        b = task.train_batch(0, 0, 300)
        assert task.seq_len == r * m + 1
        _check_composition(b.tokens.numpy(), b.labels.numpy(), r, m)
    assert FunctionComposition(2, 25).seq_len == 51  # the paper's setting


@pytest.mark.slow
def test_binary_composition_labels_and_balance() -> None:
    task = BinaryComposition(7)
    b = task.train_batch(1, 2, 2000)
    for seq, y in zip(b.tokens.numpy().tolist(), b.labels.numpy().tolist()):
        assert seq[0][0] == 7
        f = [v for v, _ in seq[1:]]
        assert [p for _, p in seq] == list(range(8))
        assert y == int(f[f[0]] == 0)
    assert abs(b.labels.float().mean().item() - 0.5) < 0.05


def _match3_slow(x: list[int], modulus: int) -> list[int]:
    # DESIGN §6 / Strassen-attention paper: j and k range over all positions (repeats allowed)
    n = len(x)
    return [int(any((x[i] + x[j] + x[k]) % modulus == 0 for j, k in itertools.product(
        range(n), repeat=2))) for i in range(n)]


@pytest.mark.slow
def test_match3_labels_independent_checker() -> None:
    task = Match3(n=7, modulus=13, train_size=300, test_size=100)
    for batch in (task.train_batch(0, 0, 200), task.test_set()):
        for seq, lab in zip(batch.tokens[..., 0].tolist(), batch.labels.tolist()):
            assert all(1 <= v < 13 for v in seq)
            assert lab == _match3_slow(seq, 13)


def test_match3_split_has_no_leakage() -> None:
    task = Match3(n=5, modulus=11, train_size=400, test_size=100)
    train, test = task.split()
    assert train.shape == (400, 5) and test.shape == (100, 5)
    train_keys = {tuple(sorted(s)) for s in train.tolist()}
    test_keys = {tuple(sorted(s)) for s in test.tolist()}
    assert not train_keys & test_keys
    # augmented training batches are permutations of training bases only
    for step in range(5):
        b = task.train_batch(0, step, 64)
        for seq in b.tokens[..., 0].tolist():
            assert tuple(sorted(seq)) in train_keys
    with pytest.raises(PolyAttentionError, match="distinct Match3 base multisets"):
        Match3(n=3, modulus=3, train_size=100, test_size=10).split()


def _compose_slow(r: list[list[int]]) -> list[list[int]]:
    m = len(r)
    return [[int(any(r[i][k] and r[k][j] for k in range(m))) for j in range(m)] for i in range(m)]


@pytest.mark.slow
def test_relation_labels_independent_checker() -> None:
    task = RelationComposition(m=5)
    b = task.train_batch(2, 0, 300)
    for seq, lab in zip(b.tokens.tolist(), b.labels.tolist()):
        r = [[0] * 5 for _ in range(5)]
        for pos, (i, j, bit) in enumerate(seq):
            assert (i, j) == divmod(pos, 5)
            r[i][j] = bit
        assert lab == [v for row in _compose_slow(r) for v in row]
    assert abs(b.labels.float().mean().item() - 0.5) < 0.1


@pytest.mark.slow
def test_quotient_relation_labels_independent_checker() -> None:
    task = QuotientRelationComposition(m=4, colors=2)
    b = task.train_batch(0, 0, 300)
    for seq, lab in zip(b.tokens.tolist(), b.labels.tolist()):
        r = [[0] * 4 for _ in range(4)]
        col: dict[int, int] = {}
        for i, j, bit, c in seq:
            r[i][j] = bit
            assert col.setdefault(j, c) == c  # the colour is a function of the column
        expect = [
            int(any(k1 != k2 and r[i][k1] and r[j][k2] and col[k1] == col[k2]
                    for k1 in range(4) for k2 in range(4)))
            for i in range(4) for j in range(4)
        ]
        assert lab == expect
    assert 0.35 < b.labels.float().mean().item() < 0.65


def test_make_task_errors() -> None:
    with pytest.raises(PolyAttentionError, match="unknown task 'nope'"):
        make_task("nope")
    with pytest.raises(PolyAttentionError, match="bad parameters for task 'relation'"):
        make_task("relation", modulus=3)
    with pytest.raises(PolyAttentionError, match="r >= 1 and m >= 2"):
        FunctionComposition(0, 5)
