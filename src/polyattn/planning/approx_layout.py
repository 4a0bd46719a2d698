r"""Execution layout of ``method="approx"`` (pure Python): strategy, steps, chunk sizes, contraction paths.

* **tree** (the factor graph — monomials plus causal pairs — is a forest of pairs): message passing
  in feature space, one step per edge; rows are processed in chunks of :func:`chunk_rows` rows so a
  chunk's features (``rows * r`` entries, feature-major) stay in cache while the BLAS products read
  them; causal edges use chunked prefix sums over blocks of :func:`causal_block` rows.
* **contract** (cycles, degree >= 3): per-variable summaries accumulated over row chunks, then x1's
  rows contracted with them along an opt_einsum path (:func:`plan_contract`), or, for short
  sequences, one einsum over all features (:func:`plan_direct`).

Every kernel decision (chunk rows, block length, einsum path) is computed here, torch-free, and
stored in the :class:`~polyattn.planning.approx.ApproxPlan`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..errors import MethodError
from .approx_split import SplitTop, cache_rows, split_bytes, split_top
from .details import StepKind
from .plan import Step
from .spec import ProblemSpec
from .structure_ext import rooted_forest

__all__ = [
    "CHUNK_FEATURE_BYTES", "CAUSAL_BLOCK", "Layout", "structure", "reason", "edge_steps", "chunk_rows",
    "causal_block", "plan_contract", "plan_direct", "layout", "describe_step", "build_ops_per_chunk",
]


def structure(spec: ProblemSpec) -> tuple[str, dict[int, int] | None, tuple[int, ...]]:
    """``("tree", parent, post-order)`` or ``("contract", None, ())``; raises for masks and cycles."""
    p = spec.polynomial
    if spec.mask_pairs:
        raise MethodError(
            "method='approx' does not support pair masks: a boolean mask on a pair does not factor "
            "through the polynomial features. Use an exact method (method='auto') for masked inputs"
        )
    rooted = rooted_forest(spec.factor_edges(), spec.num_variables)
    if rooted is not None:
        return "tree", rooted[0], rooted[1]
    if spec.causal:
        raise MethodError(
            f"method='approx' supports causal masks only when monomials plus causal pairs form a "
            f"forest (prefix sums along tree edges); {p} with causal={spec.causal!r} does not"
            + (" (causal='tree' would)" if p.is_tree else "")
            + ". Use an exact method (method='auto') or causal=False"
        )
    return "contract", None, ()


def reason(spec: ProblemSpec, strategy: str) -> str:
    if strategy == "tree":
        extra = " with prefix sums for the causal edges" if spec.causal else ""
        return (
            "polynomial method: exp of each monomial -> a low-degree polynomial, factorised through "
            f"per-variable symmetric-power features; the factor graph is a forest, so message passing in feature space{extra}"
        )
    return (
        "polynomial method: exp of each monomial -> a low-degree polynomial, factorised through "
        "per-variable symmetric-power features, contracted along an opt_einsum path"
    )


def describe_step(st: Step) -> str:
    if st.kind == "approx_edge":
        how = "prefix sums" if st.scope and st.scope[-1] == -1 else "one feature-space product"
        if not st.logits:
            return f"edge x{st.parent} <- x{st.var}: mean message (no monomial), {how}"
        return f"edge x{st.parent} <- x{st.var}: features F_x{st.var}^T M -> F_x{st.parent} @ (.), {how}"
    if st.kind == "approx_summary":
        return f"summary of x{st.var}: sum over its rows of its features (x) values, in row chunks"
    if st.kind == "approx_direct":
        return "one contraction of all features, values and coefficients along the opt_einsum path"
    if st.kind == "approx_contract":
        return "x1 row chunks: contract x1's features with the summaries along the opt_einsum path"
    return st.kind


# ------------------------------------------------------------------------------- chunking
#: Row chunks aim at about this many bytes of features (``batch * rows * r * itemsize``): the chunk
#: is built, then read by one or two skinny GEMMs (``[dv+1, r] @ [r, rows]``), and both want it in
#: cache. Measured at n = 32768-65536, d = 16, dv = 8, 1 thread: rank 4845 is fastest at 96-128
#: rows, rank 20349 at 32-48, rank 969 at ~512 (smaller chunks pay the per-op dispatch of the
#: construction, ~2 us per op; larger ones fall out of cache).
CHUNK_FEATURE_BYTES = 5 * 2**19
#: Block length of the chunked prefix sums (causal edges): the dense in-block part costs
#: ``block * (d + dv)`` per row (polynomial of the logits) against ``2 r (dv+1)`` for the state.
CAUSAL_BLOCK = 64


def chunk_rows(spec: ProblemSpec, rank: int, budget: int) -> int:
    """Rows per chunk: cache-sized (:data:`CHUNK_FEATURE_BYTES`), within ``budget``, a multiple of 8."""
    return cache_rows(spec, rank, CHUNK_FEATURE_BYTES, rank * 3 + 2 * (spec.value_dim + 1), budget)


def causal_block(spec: ProblemSpec, rank: int, budget: int) -> int:
    elems = max(1, budget // max(1, spec.itemsize))
    per_row = spec.batch * (rank * 3 + 2 * CAUSAL_BLOCK)
    return int(max(1, min(CAUSAL_BLOCK, elems // max(1, per_row))))


def build_ops_per_chunk(d: int, degree: int) -> int:
    """Torch ops of one chunk's feature construction: the coordinate copy + ``d`` per degree >= 2."""
    return 1 + d * max(0, degree - 1)


# ------------------------------------------------------------------------------- contraction
def contract_setup(spec: ProblemSpec) -> tuple[tuple[tuple[int, str], ...], str, tuple[tuple[Any, ...], ...]]:
    """Einsum expressions of the contraction strategy (opt_einsum symbols; ``B`` batch, ``z`` value channel).

    Each ``l_v`` (v >= 2) appears only in variable v's own factors, so its sum is pushed inside:
    the *summary* ``T_v[alpha_m for m containing v, z] = sum_l prod_m F_v[l, alpha_m] V_v[l, z]``
    (one expression per variable, accumulated over row chunks). The final expression contracts
    x1's features (a chunk of rows), the coefficient vectors and the summaries over all alphas.
    Returns ``(((v, summary_expr), ...), final_expr, final_operands)``.
    """
    import opt_einsum

    sym = opt_einsum.get_symbol
    t = spec.num_variables
    b, z, row = sym(0), sym(1), sym(2)
    monos = spec.polynomial.monomials
    alpha = {m: sym(3 + i) for i, m in enumerate(monos)}
    summaries = []
    final_terms: list[str] = []
    final_ops: list[tuple[Any, ...]] = []
    for v in range(2, t + 1):
        mine = [m for m in monos if v in m]
        ins = [b + row + alpha[m] for m in mine] + [b + row + z]
        summaries.append((v, ",".join(ins) + "->" + b + "".join(alpha[m] for m in mine) + z))
    for m in monos:
        if 1 in m:
            final_terms.append(b + row + alpha[m])
            final_ops.append(("F1", m))
    for m in monos:
        final_terms.append(alpha[m])
        final_ops.append(("coef", m))
    for v in range(2, t + 1):
        mine = [m for m in monos if v in m]
        final_terms.append(b + "".join(alpha[m] for m in mine) + z)
        final_ops.append(("T", v))
    if 1 not in spec.polynomial.used_variables:
        final_terms.append(b + row)
        final_ops.append(("ones", 1))
    return tuple(summaries), ",".join(final_terms) + "->" + b + row + z, tuple(final_ops)


def final_shapes(spec: ProblemSpec, operands: tuple[tuple[Any, ...], ...], rank: int, rows: int) -> list[tuple[int, ...]]:
    monos = spec.polynomial.monomials
    shapes: list[tuple[int, ...]] = []
    for kind, x in operands:
        if kind == "F1":
            shapes.append((spec.batch, rows, rank))
        elif kind == "coef":
            shapes.append((rank,))
        elif kind == "T":
            deg = sum(1 for m in monos if x in m)
            shapes.append((spec.batch, *([rank] * deg), spec.value_dim + 1))
        else:
            shapes.append((spec.batch, rows))
    return shapes


def plan_direct(spec: ProblemSpec, r: int) -> dict[str, Any]:
    """One einsum over every variable's full features, values and coefficients (no summaries).

    Cheaper than the summaries for short sequences of cyclic polynomials (the row indices are
    contracted first), but it holds every feature matrix ``n_v x r`` at once.
    """
    import opt_einsum

    sym = opt_einsum.get_symbol
    t = spec.num_variables
    b, z = sym(0), sym(1)
    lvar = {v: sym(1 + v) for v in range(1, t + 1)}
    alpha = {m: sym(2 + t + i) for i, m in enumerate(spec.polynomial.monomials)}
    terms: list[str] = []
    ops: list[tuple[Any, ...]] = []
    shapes: list[tuple[int, ...]] = []
    for m in spec.polynomial.monomials:
        for v in m:
            terms.append(b + lvar[v] + alpha[m])
            ops.append(("F", v))
            shapes.append((spec.batch, spec.seq_lens[v - 1], r))
        terms.append(alpha[m])
        ops.append(("coef", m))
        shapes.append((r,))
    for v in range(2, t + 1):
        terms.append(b + lvar[v] + z)
        ops.append(("V", v))
        shapes.append((spec.batch, spec.seq_lens[v - 1], spec.value_dim + 1))
    if 1 not in spec.polynomial.used_variables:
        terms.append(b + lvar[1])
        ops.append(("ones", 1))
        shapes.append((spec.batch, spec.seq_lens[0]))
    expr = ",".join(terms) + "->" + b + lvar[1] + z
    path_list, info = opt_einsum.contract_path(expr, *shapes, shapes=True, optimize="auto")
    feat = float(sum(spec.batch * spec.seq_lens[v - 1] * r for v in spec.polynomial.used_variables))
    largest = float(info.largest_intermediate)
    return dict(summaries=(), einsum=expr, operands=tuple(ops), rows=spec.seq_lens[0], largest=largest,
                path=tuple(tuple(int(i) for i in st) for st in path_list), flops=float(info.opt_cost),
                peak=(largest + feat) * spec.itemsize, summary_elems=0.0, feature_elems=feat)


def plan_contract(spec: ProblemSpec, r: int, p: int, memory_budget: int) -> dict[str, Any]:
    """Summaries, final expression, x1 row chunk and opt_einsum path within the memory budget."""
    import opt_einsum

    summaries, final, ops = contract_setup(spec)
    monos = spec.polynomial.monomials
    dv1 = spec.value_dim + 1
    sizes = {v: spec.batch * r ** sum(1 for m in monos if v in m) * dv1 for v, _ in summaries}
    t_total = float(sum(sizes.values()))
    # Summary cost: n_v * r^deg(v) * dv1 multiply-adds (plus the features).
    flops = sum(2.0 * spec.seq_lens[v - 1] * sizes[v] for v in sizes)
    elems = memory_budget // max(1, spec.itemsize)
    rows = chunk_rows(spec, r, memory_budget)
    while True:
        shapes = final_shapes(spec, ops, r, rows)
        path_list, info = opt_einsum.contract_path(final, *shapes, shapes=True, optimize="auto")
        largest = float(info.largest_intermediate)
        # summaries + the largest summary under construction (its chunk einsum) + x1 chunk features
        build = max((float(sizes[v]) + spec.batch * rows * r for v in sizes), default=0.0)
        peak_elems = t_total + max(build, largest + spec.batch * rows * r * 2)
        if peak_elems <= elems or rows == 1:
            break
        rows = max(1, rows // 2)
    n1 = spec.seq_lens[0]
    flops += float(info.opt_cost) * math.ceil(n1 / rows)
    return dict(summaries=summaries, einsum=final, operands=ops, rows=rows, largest=largest,
                path=tuple(tuple(int(i) for i in st) for st in path_list), flops=flops,
                peak=peak_elems * spec.itemsize, summary_elems=t_total)


def edge_steps(spec: ProblemSpec, parent: dict[int, int], post: tuple[int, ...], rank: int) -> tuple[Step, ...]:
    """One step per tree edge; ``flops`` counts both products ``2 (n_u + n_c) r (dv+1)`` (plus prefix sums)."""
    dv1 = spec.value_dim + 1
    monos = set(spec.polynomial.monomials)
    causal = spec.causal_pairs()
    steps = []
    for c in post:
        u = parent[c]
        logits = (min(u, c), max(u, c)) in monos
        r = rank if logits else 1
        is_causal = (u, c) in causal or (c, u) in causal
        nu, nc = spec.seq_lens[u - 1], spec.seq_lens[c - 1]
        fl = spec.batch * (nu + nc) * r * (2.0 * dv1 + 1)
        if is_causal:
            fl += spec.batch * nu * 2.0 * (r * dv1 + CAUSAL_BLOCK * (spec.head_dim + dv1))
        scope = (u, c, -1) if is_causal else (u, c)
        steps.append(Step(StepKind.APPROX_EDGE, c, scope, fl, 0.0, parent=u, logits=logits))
    return tuple(steps)


def structure_steps(spec: ProblemSpec, strategy: str, parent: dict[int, int] | None,
                    post: tuple[int, ...]) -> tuple[Step, ...]:
    """Steps of a structure-only plan (no degree yet)."""
    if strategy == "tree":
        assert parent is not None
        return edge_steps(spec, parent, post, rank=0)
    return (Step(StepKind.APPROX_CONTRACT, 1, tuple(range(1, spec.num_variables + 1)), 0.0, 0.0),)


@dataclass(frozen=True)
class Layout:
    """How the kernel runs one degree: steps, cost, memory, chunking and (contract) einsum paths."""

    steps: tuple[Step, ...]
    flops: float
    peak: float
    chunk: int
    einsum: str = ""
    operands: tuple[tuple[Any, ...], ...] = ()
    summaries: tuple[tuple[int, str], ...] = ()
    path: tuple[tuple[int, ...], ...] = ()
    largest: float = 0.0
    notes: tuple[str, ...] = ()
    overflow: str = ""  # non-empty: the layout exceeds the memory budget (the reason, for the error)
    block: int = 0  # tree strategy with causal edges: block length of the chunked prefix sums
    split: SplitTop | None = None  # tree strategy: plain-edge products with the top degree split off


def _tree_layout(spec: ProblemSpec, parent: dict[int, int], post: tuple[int, ...], r: int, degree: int,
                 budget: int, native: tuple[int, str]) -> Layout:
    steps = edge_steps(spec, parent, post, r)
    chunk = chunk_rows(spec, r, budget)
    split = split_top(spec, r, degree, budget, native)
    plain = any(s.scope[-1] != -1 and s.logits for s in steps)
    if split is not None and not plain:
        split = None  # every logit edge is causal: the prefix sums use the materialised features
    peak = 0.0
    if split is None or any(s.scope[-1] == -1 for s in steps):
        peak = float(spec.batch * (chunk * r * 3 + max(spec.seq_lens) * (spec.value_dim + 1) * 2) * spec.itemsize)
    if split is not None:
        peak = max(peak, split_bytes(spec, split))
    blk = 0
    if spec.causal:
        blk = causal_block(spec, r, budget)
        peak = max(peak, spec.batch * blk * (r * 3 + 2 * blk) * spec.itemsize)
    notes = (split.describe(),) if split is not None else ()
    return Layout(steps, sum(st.flops for st in steps), float(peak), chunk, block=blk, split=split, notes=notes)


def _contract_layout(spec: ProblemSpec, r: int, p: int, budget: int) -> Layout:
    cp = plan_contract(spec, r, p, budget)
    direct = plan_direct(spec, r)
    if direct["peak"] <= budget and (cp["peak"] > budget or direct["flops"] < cp["flops"]):
        cp = direct
    monos = spec.polynomial.monomials
    steps = tuple(
        Step(StepKind.APPROX_SUMMARY, v, (v,), 2.0 * spec.seq_lens[v - 1] * spec.batch
             * r ** sum(1 for m in monos if v in m) * (spec.value_dim + 1), 0.0)
        for v, _ in cp["summaries"]
    ) + (Step(StepKind.APPROX_CONTRACT if cp["summaries"] else StepKind.APPROX_DIRECT, 1,
              tuple(range(1, spec.num_variables + 1)), cp["flops"], cp["peak"]),)
    if cp["summaries"]:
        note = f"final einsum {cp['einsum']} over x1 chunks of {cp['rows']} rows (opt_einsum path {list(cp['path'])})"
    else:
        note = f"one einsum {cp['einsum']} over all rows (short sequences; opt_einsum path {list(cp['path'])})"
    overflow = ""
    if cp["peak"] > budget:
        overflow = (
            f"per-variable summaries {cp['summary_elems']:,.0f} elements, r^(number of monomials containing "
            f"the variable) each; largest intermediate {cp['largest']:,.0f}; contracting all rows at once "
            f"instead would need {direct['peak']:,.0f} bytes"
        )
    return Layout(steps, cp["flops"], float(cp["peak"]), cp["rows"], cp["einsum"], cp["operands"],
                  cp["summaries"], cp["path"], cp["largest"], (note,), overflow)


def layout(spec: ProblemSpec, strategy: str, parent: dict[int, int] | None, post: tuple[int, ...],
           rank: int, degree: int, budget: int, native: tuple[int, str] = (0, "")) -> Layout:
    """The execution layout for feature rank ``rank`` (degree ``degree``) within ``budget`` bytes
    (``native``: threads of the native split kernel and why not, :func:`~.approx_split.split_top`)."""
    if strategy == "tree":
        assert parent is not None
        return _tree_layout(spec, parent, post, rank, degree, budget, native)
    return _contract_layout(spec, rank, degree, budget)
