"""Error messages are part of the API: each names the argument and what was expected."""

from __future__ import annotations

import pytest
import torch

import polyattn
from polyattn import MethodError, PolyAttentionError, PolynomialSyntaxError, ReferenceSizeError


def q(n=4, d=3, *lead):
    return torch.randn(*lead, n, d)


def test_wrong_number_of_queries():
    with pytest.raises(PolyAttentionError, match=r"queries: expected 3 tensors .*got 2"):
        polyattn.poly_attention("x1*x2 + x2*x3", [q(), q()], [q(), q()])


def test_queries_not_a_list():
    with pytest.raises(PolyAttentionError, match="queries: expected a list of 2 tensors"):
        polyattn.poly_attention("x1*x2", q(), [q()])


def test_wrong_number_of_values():
    with pytest.raises(PolyAttentionError, match=r"values: expected 2 entries .*got 1"):
        polyattn.poly_attention("x1*x2 + x2*x3", [q(), q(), q()], [q()])


def test_mismatched_head_dim():
    with pytest.raises(PolyAttentionError, match=r"queries\[1\] \(x2\): head dim 5 does not match"):
        polyattn.poly_attention("x1*x2", [q(4, 3), q(4, 5)], [q()])


def test_value_rows_must_match_query_rows():
    with pytest.raises(PolyAttentionError, match=r"values\[0\] \(x2\): has 6 rows but queries\[1\] has n=4"):
        polyattn.poly_attention("x1*x2", [q(), q()], [q(6, 3)])


def test_value_dims_must_agree():
    with pytest.raises(PolyAttentionError, match=r"values\[1\] \(x3\): value dim 2 differs"):
        polyattn.poly_attention("x1*x2 + x2*x3", [q(), q(), q()], [q(4, 3), q(4, 2)])


def test_batch_dims_must_broadcast():
    with pytest.raises(PolyAttentionError, match="batch dims of queries/values/masks do not broadcast"):
        polyattn.poly_attention("x1*x2", [q(4, 3, 2), q(4, 3, 3)], [q(4, 3, 3)])


def test_non_float_inputs():
    with pytest.raises(PolyAttentionError, match=r"queries\[0\] \(x1\): expected a floating tensor"):
        polyattn.poly_attention("x1*x2", [torch.ones(4, 3, dtype=torch.long), q()], [q()])
    with pytest.raises(PolyAttentionError, match=r"queries\[0\] \(x1\): expected shape \[..., n, d\]"):
        polyattn.poly_attention("x1*x2", [torch.ones(4), q()], [q()])


@pytest.mark.parametrize(
    "mask, match",
    [
        ({(1, 2): torch.ones(4, 5, dtype=torch.bool)}, r"mask\[\(1, 2\)\]: expected shape \[..., 4, 4\]"),
        ({(1, 2): torch.ones(4, 4)}, r"mask\[\(1, 2\)\]: expected a bool tensor"),
        ({(1, 1): torch.ones(4, 4, dtype=torch.bool)}, r"mask key \(1, 1\): expected a pair"),
        ({(0, 2): torch.ones(4, 4, dtype=torch.bool)}, r"mask key \(0, 2\)"),
        ({(1, 4): torch.ones(4, 4, dtype=torch.bool)}, r"mask key \(1, 4\): .* in 1..3"),
        ({"x1": torch.ones(4, 4, dtype=torch.bool)}, "mask key 'x1'"),
        ([torch.ones(4, 4, dtype=torch.bool)], r"mask: expected a dict"),
    ],
)
def test_mask_errors(mask, match):
    with pytest.raises(PolyAttentionError, match=match):
        polyattn.poly_attention("x1*x2 + x2*x3", [q(), q(), q()], [q(), q()], mask=mask)


def test_unknown_method():
    with pytest.raises(PolyAttentionError, match=r"unknown method 'flash'; choose one of 'auto', .*'reference'"):
        polyattn.poly_attention("x1*x2", [q(), q()], [q()], method="flash")


def test_bad_causal():
    with pytest.raises(PolyAttentionError, match="causal must be one of False, True, 'tree', 'prefix'"):
        polyattn.poly_attention("x1*x2", [q(), q()], [q()], causal="lower")
    with pytest.raises(PolyAttentionError, match="causal='tree' needs a tree polynomial"):
        polyattn.poly_attention("x1*x2*x3", [q(), q(), q()], [q(), q()], causal="tree")


def test_bad_scale():
    with pytest.raises(PolyAttentionError, match="scale: expected a finite float"):
        polyattn.poly_attention("x1*x2", [q(), q()], [q()], scale=float("nan"))


def test_explicit_method_never_falls_back():
    qs = [q(), q(), q()]
    with pytest.raises(MethodError, match="method='tree' needs a factor graph that is a forest"):
        polyattn.poly_attention("x1*x2 + x2*x3 + x1*x3", qs, [q(), q()], method="tree")
    with pytest.raises(MethodError, match="causal='tree' keeps it a tree"):
        polyattn.poly_attention("x1*x2 + x2*x3", qs, [q(), q()], method="tree", causal="prefix")
    with pytest.raises(MethodError, match="method='sdpa' computes exactly x1\\*x2"):
        polyattn.poly_attention("x1*x2 + x2*x3", qs, [q(), q()], method="sdpa")


def test_reference_refuses_large_problems():
    big = [torch.randn(300, 2) for _ in range(3)]
    with pytest.raises(ReferenceSizeError, match="above its limit of 16,777,216"):
        polyattn.poly_attention("x1*x2*x3", big, None, method="reference")


def test_parse_errors_surface_through_poly_attention():
    with pytest.raises(PolynomialSyntaxError, match=r"(?s)x1 appears twice.*\^\^"):
        polyattn.poly_attention("x1*x1", [q()], None)


def test_unexpected_options():
    with pytest.raises(PolyAttentionError, match="unexpected keyword argument"):
        polyattn.poly_attention("x1*x2", [q(), q()], [q()], tolerance=1e-3)


def test_mixed_devices_message():
    # Only one device on CPU-only machines: the check is exercised through the meta device.
    with pytest.raises(PolyAttentionError, match="must be on one device"):
        polyattn.poly_attention("x1*x2", [q(), torch.randn(4, 3, device="meta")], [q()])
