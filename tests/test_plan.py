"""Plans are pure Python, printable, cached, and report the right asymptotics."""

import pytest

import polyattn
from polyattn import PolyAttentionError
from polyattn.polynomial import path, star, strassen, tensor, tree

TREES = [path(1), path(2), path(5), star(4), tree([(1, 2), (2, 3), (2, 4), (4, 5)]), "x1*x2 + x3*x4"]


@pytest.mark.parametrize("poly", TREES)
def test_tree_polynomials_plan_quadratic(poly):
    pl = polyattn.plan(poly, seq_len=4096, head_dim=64)
    assert pl.exponent == 2 and pl.complexity == "n^2"
    assert pl.method in ("tree", "sdpa")
    assert "O(n^2)" in str(pl)
    # tree-causal keeps it quadratic
    assert polyattn.plan(poly, seq_len=4096, head_dim=64, causal="tree").exponent == 2


def test_triangle_is_cubic_blas():
    pl = polyattn.plan(strassen(), seq_len=1024, head_dim=64)
    assert pl.method == "elimination" and pl.exponent == 3 and pl.blas
    assert "O(n^3 * d (BLAS))" in str(pl)
    assert pl.flops >= 2 * 1024**3 * 64


def test_tensor_is_cubic():
    pl = polyattn.plan(tensor(3), seq_len=512, head_dim=32)
    assert pl.exponent == 3 and pl.complexity == "n^3"
    assert polyattn.plan(tensor(4), seq_len=64, head_dim=8).exponent == 4


def test_prefix_causal_on_a_path_is_superquadratic_and_says_so():
    pl = polyattn.plan(path(2), seq_len=1024, head_dim=64, causal="prefix")
    assert pl.exponent == 3
    assert "causal='tree' keeps it quadratic" in str(pl)


def test_plan_is_frozen_cached_and_serialisable():
    a = polyattn.plan("x1*x2 + x2*x3", seq_len=128, head_dim=16)
    b = polyattn.plan("x2*x3 + x1*x2", seq_len=128, head_dim=16)
    assert a is b
    d = a.to_dict()
    assert d["method"] == "tree" and d["exponent"] == 2 and len(d["steps"]) == 2
    with pytest.raises(AttributeError):
        a.method = "x"  # type: ignore[misc]


def test_memory_budget_bounds_chunks():
    pl = polyattn.plan(strassen(), seq_len=2048, head_dim=64, batch=4, memory_budget=128 * 2**20)
    assert pl.peak_bytes <= 128 * 2**20
    assert pl.row_chunk < 2048


def test_plan_errors():
    with pytest.raises(PolyAttentionError, match="seq_len has 2 entries but x1\\*x2 \\+ x2\\*x3 has 3 variables"):
        polyattn.plan("x1*x2 + x2*x3", seq_len=[4, 4], head_dim=8)
    with pytest.raises(PolyAttentionError, match="unknown method"):
        polyattn.plan("x1*x2", seq_len=4, head_dim=8, method="nope")
    with pytest.raises(PolyAttentionError, match="mask key"):
        polyattn.plan("x1*x2", seq_len=4, head_dim=8, mask_pairs=[(1, 3)])


def test_fused_cubic_kernels_are_shown_in_the_plan():
    tri = polyattn.plan(strassen(), seq_len=512, head_dim=32)
    assert tri.fused == "triangle" and "fused triangle kernel" in str(tri)
    assert "only for rows that could underflow" in str(tri)
    # training sizes: all logits of a row chunk at once, exact row max, no fallback steps
    tiny = polyattn.plan(strassen(), seq_len=25, head_dim=64, batch=64)
    assert tiny.fused == "triangle" and [s.kind for s in tiny.steps] == ["fused-triangle-rowwise"]
    assert "small problem" in str(tiny) and "underflow" not in str(tiny)
    # few tuples but long sequences: the separable kernel (n^2 exps) wins
    long1 = polyattn.plan(strassen(), seq_len=128, head_dim=32, batch=1)
    assert [s.kind for s in long1.steps][0] == "fused-triangle"
    ten = polyattn.plan(tensor(3), seq_len=256, head_dim=32)
    assert ten.fused == "tensor3" and "fused x1*x2*x3 kernel" in str(ten)
    # masks, causality or a budget the fused kernel cannot meet: the generic chunked steps run
    assert polyattn.plan(strassen(), seq_len=512, head_dim=32, causal="prefix").fused == ""
    assert polyattn.plan(strassen(), seq_len=512, head_dim=32, mask_pairs=[(1, 2)]).fused == ""
    small = polyattn.plan(strassen(), seq_len=2048, head_dim=64, batch=4, memory_budget=128 * 2**20)
    assert small.fused == "" and "exceed memory_budget" in str(small)
