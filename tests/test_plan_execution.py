"""The plan is the single source of decisions: kernels execute exactly what ``print(plan)`` shows.

The kernels report each unit of work to :mod:`polyattn.ops.trace`; over the hypothesis corpus the
recorded events must equal the events the plan's detail implies (edges with their implementation
and causal handling, elimination steps per value-column and query-row chunk, fused-kernel chunks),
and the printed plan must state those chunks and steps.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import poly_problems

import polyattn
from polyattn import MethodError
from polyattn.ops import KERNELS, trace
from polyattn.planning import PLANNERS, EdgeImpl, EliminationDetail, Method, StepKind, TreeDetail


def test_method_tables_list_every_method():
    assert set(PLANNERS) == set(Method) == set(KERNELS)


def _elimination_events(pl, n1: int, dv: int, has_value: bool) -> list:
    d = pl.detail
    ev: list = []
    if d.fused is not None:
        f = d.fused
        n2 = pl.spec.seq_lens[1]
        if f.kind == StepKind.FUSED_TRIANGLE:
            C = dv + 1
            return [("fused", {"kind": str(f.kind), "rows": (0, n1), "keys": (0, n2), "cols": (z, min(C, z + f.col_chunk))})
                    for z in range(0, C, f.col_chunk)]
        return [("fused", {"kind": str(f.kind), "rows": (r, min(n1, r + f.row_chunk)),
                           "keys": (b, min(n2, b + f.key_chunk)), "cols": (0, dv + 1)})
                for r in range(0, n1, f.row_chunk) for b in range(0, n2, f.key_chunk)]
    cols = [(c, min(dv, c + d.channel_chunk)) for c in range(0, dv, d.channel_chunk)] if has_value else [(0, min(dv, d.channel_chunk))]
    glob = [i for i, s in enumerate(d.steps) if not s.depends_on_query]
    query = [i for i, s in enumerate(d.steps) if s.depends_on_query]

    def step(i, rows, c):
        s = d.steps[i]
        return ("elim", {"step": i, "var": s.var, "kind": str(s.kind), "rows": rows, "cols": c})

    for c in cols:
        ev += [step(i, None, c) for i in glob]
        for r in range(0, n1, d.row_chunk):
            ev += [step(i, (r, min(n1, r + d.row_chunk)), c) for i in query]
    return ev


def expected_events(pl, n1: int, dv: int, has_value: bool) -> list:
    d = pl.detail
    if pl.method == Method.SDPA:
        return [("sdpa", {})]
    if pl.method == Method.REFERENCE:
        return [("reference", {})]
    if isinstance(d, TreeDetail):
        out = []
        for e in d.edges:
            info = {"parent": e.parent, "child": e.child, "impl": str(e.impl), "causal_via": str(e.causal_via)}
            if e.impl == EdgeImpl.MATERIALISED:
                info["row_chunk"] = e.row_chunk
            out.append(("edge", info))
        return out
    assert isinstance(d, EliminationDetail)
    return _elimination_events(pl, n1, dv, has_value)


def _printed_matches(pl) -> None:
    text = str(pl)
    kinds = [str(s.kind) for s in pl.steps]
    d = pl.detail
    if isinstance(d, EliminationDetail):
        if d.fused is not None:
            assert kinds[0] == str(d.fused.kind)
            assert f"chunks of {d.fused.row_chunk} query rows x {d.fused.col_chunk} value columns" in text
            # the fallback steps printed are the detail's generic steps
            assert [k for k, s in zip(kinds[1:], pl.steps[1:]) if s.fallback] == (
                [str(s.kind) for s in d.steps] if d.fused.fallback else [])
        else:
            assert kinds == [str(s.kind) for s in d.steps]
            assert f"{d.row_chunk} query rows x {d.channel_chunk} value columns" in text
    if isinstance(d, TreeDetail):
        assert [(s.parent, s.var, s.impl) for s in pl.steps] == [(e.parent, e.child, str(e.impl)) for e in d.edges]
        for e in d.edges:
            assert f"edge x{e.parent} <- x{e.child}" in text and f"[{e.impl}]" in text


@settings(max_examples=120)
@given(poly_problems(), st.sampled_from(["auto", "tree", "elimination", "reference"]),
       st.sampled_from([None, 1, 2**11]))
def test_kernels_execute_exactly_the_printed_plan(problem, method, budget):
    p, queries, values, kw, view = problem
    queries, values = view(queries, values)
    extra = {} if budget is None else {"memory_budget": budget}
    try:
        pl = polyattn.plan_for(p, queries, values, method=method, **kw, **extra)
    except MethodError:
        return
    _printed_matches(pl)
    with trace.record() as events:
        # a Plan runs as given (plan once, run many): causal and method come from the plan
        out = polyattn.poly_attention(pl, queries, values, scale=kw["scale"], mask=kw["mask"])
    dv = out.shape[-1]
    has_value = any(v is not None for v in values)
    # rows with a zero normaliser under masks/causality are classified by a constraint-only pass
    # along the same planned steps (a data-dependent extra pass, like the triangle's fallback)
    extra = [e for e in events if e[0] == "admissible"]
    events = [e for e in events if e[0] != "admissible"]
    if extra:
        d = pl.detail
        glob = [i for i, s in enumerate(d.steps) if not s.depends_on_query]
        query = [i for i, s in enumerate(d.steps) if s.depends_on_query]
        n1 = queries[0].shape[-2]
        want = [("admissible", {"step": i, "var": d.steps[i].var, "kind": str(d.steps[i].kind), "rows": None,
                                "cols": (0, 0)}) for i in glob]
        for r in range(0, n1, d.row_chunk):
            want += [("admissible", {"step": i, "var": d.steps[i].var, "kind": str(d.steps[i].kind),
                                     "rows": (r, min(n1, r + d.row_chunk)), "cols": (0, 0)}) for i in query]
        assert extra == want
    fell_back = ("fallback", {}) in events
    if fell_back:  # the separable triangle declined: the planned generic steps ran instead
        events = events[events.index(("fallback", {})) + 1:]
        pl_generic = pl.__class__(**{**pl.__dict__, "detail": EliminationDetail(
            **{**pl.detail.__dict__, "fused": None})})
        assert events == expected_events(pl_generic, queries[0].shape[-2], dv, has_value)
    else:
        assert events == expected_events(pl, queries[0].shape[-2], dv, has_value)


def test_fused_chunks_executed_as_printed():
    g = torch.Generator().manual_seed(0)
    q = [torch.randn(4, 40, 8, generator=g) for _ in range(3)]
    v = [torch.randn(4, 40, 5, generator=g) for _ in range(2)]
    for poly in ("x1*x2*x3", "x1*x2 + x1*x3 + x2*x3"):
        pl = polyattn.plan_for(poly, q, v, memory_budget=2**18)
        assert pl.fused, str(pl)
        _printed_matches(pl)
        with trace.record() as events:
            polyattn.poly_attention(pl, q, v)
        assert events == expected_events(pl, 40, 5, True)
        assert len(events) > 1  # the budget forced several chunks


def test_plan_passed_to_poly_attention_must_match_the_tensors():
    pl = polyattn.plan("x1*x2 + x2*x3", seq_len=8, head_dim=4)
    q = [torch.randn(8, 4) for _ in range(3)]
    v = [torch.randn(8, 4) for _ in range(2)]
    out = polyattn.poly_attention(pl, q, v)
    assert torch.allclose(out, polyattn.poly_attention("x1*x2 + x2*x3", q, v))
    with pytest.raises(polyattn.PolyAttentionError, match=r"do not match the plan \(seq_lens: plan \(8, 8, 8\), tensors \(8, 8, 6\)"):
        polyattn.poly_attention(pl, q[:2] + [torch.randn(6, 4)], [v[0], torch.randn(6, 4)])
    with pytest.raises(polyattn.PolyAttentionError, match="dtype: plan 'float32', tensors 'float64'"):
        polyattn.poly_attention(pl, [x.double() for x in q], [x.double() for x in v])
    with pytest.raises(polyattn.PolyAttentionError, match="conflicts with the plan's method 'tree'"):
        polyattn.poly_attention(pl, q, v, method="elimination")
