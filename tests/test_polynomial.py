"""Parser, canonical form, named constructors and structure queries (no torch needed)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

import polyattn
from polyattn import AttentionPolynomial, PolyAttentionError, PolynomialSyntaxError, parse
from polyattn.polynomial import (
    elimination_order,
    path,
    self_attention,
    star,
    strassen,
    tensor,
    tree,
)


def test_parse_basic_and_canonical():
    p = parse("x2*x3 + x1*x2")
    assert str(p) == "x1*x2 + x2*x3"
    assert p.num_variables == 3 and p.degree == 2
    assert p.monomials == ((1, 2), (2, 3))
    assert parse("x1 x2 + x2 x3") == p  # spaces are products
    assert parse("  x1*x2  ") == self_attention()
    assert parse(p) is p


def test_parse_cached():
    assert parse("x1*x2 + x2*x3") is parse("x1*x2 + x2*x3")


def test_programmatic_construction():
    p = AttentionPolynomial([(2, 1), (3, 2)])
    assert p == parse("x1*x2 + x2*x3")
    q = AttentionPolynomial([(1, 3)], num_variables=4)
    assert q.num_variables == 4 and q.isolated_variables == (2, 4)
    assert "num_variables=4" in repr(q)


def test_named_constructors():
    assert str(self_attention()) == "x1*x2"
    assert str(tensor(3)) == "x1*x2*x3"
    assert str(strassen()) == "x1*x2 + x1*x3 + x2*x3"
    assert str(path(3)) == "x1*x2 + x2*x3 + x3*x4"
    assert str(star(4)) == "x1*x2 + x1*x3 + x1*x4"
    assert str(tree([(1, 2), (2, 3), (2, 4)])) == "x1*x2 + x2*x3 + x2*x4"
    with pytest.raises(PolyAttentionError, match="cycle"):
        tree([(1, 2), (2, 3), (3, 1)])
    with pytest.raises(PolyAttentionError, match="r must be an integer >= 1"):
        path(0)


def test_structure_queries():
    assert path(4).is_tree and star(5).is_tree and self_attention().is_tree
    assert not strassen().is_tree and not tensor(3).is_tree
    assert parse("x1*x2 + x3*x4").is_tree
    assert parse("x1*x2 + x3*x4").components() == [(1, 2), (3, 4)]
    assert parse("x1*x2 + x2*x3").edges == ((1, 2), (2, 3))
    with pytest.raises(PolyAttentionError, match="only degree-2 polynomials have a graph"):
        _ = tensor(3).edges
    order, width = path(3).elimination_order()
    assert width == 1 and order[0] == 4  # leaves first
    assert strassen().elimination_order()[1] == 2
    assert tensor(4).elimination_order()[1] == 3
    k4 = parse("x1*x2+x1*x3+x1*x4+x2*x3+x2*x4+x3*x4")
    assert k4.elimination_order()[1] == 3
    c5 = parse("x1*x2+x2*x3+x3*x4+x4*x5+x5*x1")
    assert c5.elimination_order()[1] == 2
    assert elimination_order([(1, 2)], 2) == ((2,), 1)


@pytest.mark.parametrize(
    "spec, col, match",
    [
        ("", 0, "empty polynomial"),
        ("   ", 0, "empty polynomial"),
        ("x1*x2 +", 6, "dangling '\\+'"),
        ("x1*", 2, "dangling '\\*'"),
        ("+ x1*x2", 0, "'\\+' must follow a monomial"),
        ("x1*x2 + + x2*x3", 8, "'\\+' must follow a monomial"),
        ("x1**x2", 3, "'\\*' must follow a variable"),
        ("x1*y2", 3, "unknown symbol 'y2'"),
        ("x1*x2 + x0*x1", 8, "x0 does not exist"),
        ("x1*x1", 3, "x1 appears twice"),
        ("x1*x2 + x3", 8, "degree 1"),
        ("2*x1*x2", 0, "coefficients are not allowed"),
        ("x1*x2 - x2*x3", 6, "minus signs are not allowed"),
        ("x1*x2 + x2*x1", 8, "duplicate monomial"),
        ("x1^2", 2, "powers are not allowed"),
        ("x1*x", 3, "expected a variable index"),
        ("x1*X2", 3, "lower-case"),
        ("x1*x02", 3, "leading zero"),
    ],
)
def test_syntax_errors_point_at_column(spec, col, match):
    with pytest.raises(PolynomialSyntaxError, match=match) as ei:
        parse(spec)
    err = ei.value
    assert isinstance(err, PolyAttentionError)
    assert err.column == col
    lines = str(err).splitlines()
    assert lines[-2] == "  " + spec
    assert lines[-1].index("^") - 2 == col


def test_parse_rejects_non_strings():
    with pytest.raises(PolyAttentionError, match="must be a string"):
        parse(42)  # type: ignore[arg-type]


def test_programmatic_errors():
    with pytest.raises(PolyAttentionError, match="multilinear"):
        AttentionPolynomial([(1, 1)])
    with pytest.raises(PolyAttentionError, match="at least 2 variables"):
        AttentionPolynomial([(1,)])
    with pytest.raises(PolyAttentionError, match="numbered from 1"):
        AttentionPolynomial([(0, 1)])
    with pytest.raises(PolyAttentionError, match="duplicate monomial"):
        AttentionPolynomial([(1, 2), (2, 1)])
    with pytest.raises(PolyAttentionError, match="at least one monomial"):
        AttentionPolynomial([])


# ---------------------------------------------------------------- properties
@st.composite
def polynomials(draw, max_vars=6, max_degree=3):
    t = draw(st.integers(2, max_vars))
    k = draw(st.integers(1, 5))
    monos = set()
    for _ in range(k):
        size = draw(st.integers(2, min(max_degree, t)))
        monos.add(tuple(sorted(draw(st.lists(st.integers(1, t), min_size=size, max_size=size, unique=True)))))
    return AttentionPolynomial(sorted(monos))


@given(polynomials(), st.randoms(use_true_random=False))
def test_round_trip_and_reordering(p, rnd):
    assert parse(str(p)) == p
    monos = [list(m) for m in p.monomials]
    rnd.shuffle(monos)
    for m in monos:
        rnd.shuffle(m)
    spec = " + ".join(rnd.choice(["*", " "]).join(f"x{v}" for v in m) for m in monos)
    assert parse(spec) == p
    assert str(parse(spec)) == str(p)


@given(polynomials(), st.randoms(use_true_random=False))
def test_renaming_invariance(p, rnd):
    t = p.num_variables
    perm = list(range(2, t + 1))
    rnd.shuffle(perm)
    mapping = {1: 1, **{i + 2: v for i, v in enumerate(perm)}}
    q = p.relabel(mapping)
    assert q.degree == p.degree and len(q.monomials) == len(p.monomials)
    assert q.is_tree == p.is_tree
    assert q.elimination_order()[1] == p.elimination_order()[1]
    assert sorted(map(len, q.components())) == sorted(map(len, p.components()))
    back = {v: k for k, v in mapping.items()}
    assert q.relabel(back) == p


def test_public_names():
    for name in ("parse", "poly_attention", "plan", "PolyAttentionError"):
        assert hasattr(polyattn, name)
