r"""Time estimates for ``method="approx"`` against the exact plan (pure Python; numbers in, seconds out).

**Approx** (the kernel of :mod:`polyattn.ops.approx`, whose shape this module knows exactly): a
FLOP + memory-traffic + dispatch model,

.. math::
    t_{approx} = \frac{\text{product FLOPs}}{R_{prod}} + \frac{\text{feature entries}}{R_{build}}
                 + \text{ops} \cdot t_{op} + \text{rows} \cdot t_{row} + t_{call},

with ``R_prod`` the throughput of the skinny feature-space GEMMs (``[dv+1, r] @ [r, rows]`` on a
cache-sized chunk), ``R_build`` the rate at which the symmetric-power construction writes feature
entries, ``t_op`` the fixed cost of one torch op in the chunk loops, ``t_row`` the per-row cost of
everything linear outside the features (entry statistics for the bound, values, normalisation;
summed over all variables' rows) and ``t_call`` the fixed cost of a call (planning included).

**Exact** (``make_plan(spec, "auto", memory_budget)``): its FLOP count times a measured
``seconds per plan-FLOP`` of that very plan on this machine (a probe on a scaled-down copy of the
problem, :mod:`polyattn.ops.approx_cost`), because the exact kernels' cost per FLOP depends on
``d`` and ``dv`` in ways no simple model captures (e.g. the flash edge kernel: 1.6 ns per score at
d = 16, dv = 8 but 4.3 ns at d = 64, dv = 1). Without a probe, per-step-kind default rates are used.

The constants are *measured* by :mod:`polyattn.ops.approx_cost` (once per process, dtype, thread
count and value width) and passed in as a :class:`CostModel`; a short probe of the approx kernel
itself at the call's shape (rank, chunking, value width) then corrects the model by one factor,
``approx_scale`` = measured / modelled seconds of the probe, because isolated micro-benchmarks of
the products and the construction miss how they interact in cache. :data:`DEFAULT_COST_MODEL`
holds the values measured on the development machine (1 thread) for torch-free planning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from .approx_split import SplitTop
from .plan import Plan
from .spec import ProblemSpec

__all__ = [
    "CostModel", "DEFAULT_COST_MODEL", "DEFAULT_EXACT_RATES", "approx_work", "approx_seconds", "NATIVE_GAIN",
    "exact_seconds", "fmt_seconds",
]

#: Plan-FLOPs per second of the exact step kinds, 1 thread, development machine (AMD EPYC, AVX-512,
#: torch 2.13): used only when no probe of the exact plan was measured.
DEFAULT_EXACT_RATES: dict[str, float] = {
    "edge": 30e9, "sdpa": 6e9, "dense": 2e9, "factored": 30e9, "fused-triangle": 40e9,
    "fused-triangle-rowwise": 10e9, "fused-tensor3": 20e9, "reference": 0.2e9,
}

#: Torch ops per chunk besides the feature construction (slices, products, Hadamard products,
#: accumulation) — a constant of the kernel's code, not of the machine.
OPS_PER_CHUNK = 6


@dataclass(frozen=True)
class CostModel:
    """Machine constants for the time estimates (plain numbers; see the module docstring).

    ``exact_seconds_per_flop`` is the measured cost of *this problem's* exact plan per plan-FLOP
    (None: :data:`DEFAULT_EXACT_RATES` per step kind); ``exact_probe`` describes that probe.
    """

    product_flops: float
    build_entries: float
    op_seconds: float
    row_seconds: float = 0.0
    call_seconds: float = 0.0
    exact_seconds_per_flop: float | None = None
    exact_probe: str = ""
    approx_scale: float = 1.0  # measured / modelled time of a probe of the approx kernel at this shape
    approx_probe: str = ""
    source: str = "with the development machine's default constants (not measured here)"
    native_flops: float = 0.0  # the native split kernel's product FLOP/s, construction included (0: not measured)

    def native_rate(self) -> float:
        """FLOP/s of the native split kernel: measured, else ``product_flops * NATIVE_GAIN``."""
        return self.native_flops or self.product_flops * NATIVE_GAIN

    def with_exact(self, seconds_per_flop: float, probe: str) -> CostModel:
        return replace(self, exact_seconds_per_flop=float(seconds_per_flop), exact_probe=probe)

    def to_dict(self) -> dict[str, object]:
        return {"product_flops": self.product_flops, "build_entries": self.build_entries,
                "op_seconds": self.op_seconds, "row_seconds": self.row_seconds, "call_seconds": self.call_seconds,
                "exact_seconds_per_flop": self.exact_seconds_per_flop, "approx_scale": self.approx_scale,
                "approx_probe": self.approx_probe, "native_flops": self.native_flops,
                "exact_probe": self.exact_probe, "source": self.source}


#: Measured with ``polyattn bench approx calibrate --clock cpu`` on the development machine (AMD EPYC,
#: 1 thread, float32, dv + 1 = 9; docs/figures/approx_calibrate.json); at run time
#: ``polyattn.ops.approx_cost`` re-measures them on the running machine.
DEFAULT_COST_MODEL = CostModel(product_flops=37e9, build_entries=9.7e9, op_seconds=2.7e-6,
                               row_seconds=1.2e-7, call_seconds=0.9e-3)


#: The split products' slot-stacked GEMMs (:mod:`polyattn.planning.approx_split`, 18-153 rows) run
#: this much faster than the ``dv+1``-row GEMMs the model's ``product_flops`` was measured on
#: (69 vs 53 GFLOP/s, d = 16, p = 5, dv = 8, 1 thread, development machine).
SPLIT_GEMM_GAIN = 1.3
#: Torch ops per chunk and split segment (one GEMM on each side of an edge).
SPLIT_OPS_PER_CHUNK = 10
#: The native split kernel (:mod:`polyattn.ops.approx_native`; construction fused in, no padding)
#: against the ``dv+1``-row GEMMs of ``product_flops``, when it was not measured: 80 vs 53 GFLOP/s
#: (d = 16, p = 4, dv = 8, one no-grad chunk, 1 thread, development machine).
NATIVE_GAIN = 1.5
#: Torch ops per chunk of the native kernel (kernel calls, messages, slicing).
NATIVE_OPS_PER_CHUNK = 8


def approx_work(spec: ProblemSpec, strategy: str, parent: dict[int, int] | None, rank: int, degree: int,
                chunk: int, flops: float, split: SplitTop | None = None
                ) -> tuple[float, float, float, float, float]:
    """``(product FLOPs, feature entries built, torch ops, rows, native product FLOPs)`` of one
    (no-grad) approx call.

    Tree: every variable incident to a monomial builds its features once per chunk (a causal edge
    builds both ends' features again inside its prefix sums) and every logit edge costs two
    products of ``2 n r (dv+1)`` FLOPs. With ``split`` the plain edges build only the features of
    degree ``p - 1`` (rank ``r_1``) in chunks of ``split.rows``, and their products count
    ``1 / SPLIT_GEMM_GAIN`` of their FLOPs; when the split runs natively (``split.native``) those
    products are native FLOPs instead (construction included, no padding) in chunks of
    ``split.native_rows``. Contract: ``flops`` is the planned einsum cost and every variable's
    features are built once (x1's per final chunk).
    """
    from .approx_layout import build_ops_per_chunk, edge_steps

    b, d = spec.batch, spec.head_dim
    chunk = max(1, chunk)
    rows = float(b * sum(spec.seq_lens))
    per_chunk_ops = build_ops_per_chunk(d, degree) + OPS_PER_CHUNK
    if strategy != "tree":
        used = spec.polynomial.used_variables
        entries = float(sum(b * spec.seq_lens[v - 1] * rank for v in used))
        ops = float(sum(math.ceil(spec.seq_lens[v - 1] / chunk) for v in used)) * (per_chunk_ops + 4)
        return float(flops), entries, ops, rows, 0.0
    assert parent is not None
    monos = set(spec.polynomial.monomials)
    causal = spec.causal_pairs()
    with_feats: set[int] = set()
    entries = ops = 0.0
    for c, u in parent.items():
        if (min(u, c), max(u, c)) not in monos:
            continue
        if (u, c) in causal or (c, u) in causal:
            n = max(spec.seq_lens[u - 1], spec.seq_lens[c - 1])
            entries += 2.0 * b * n * rank
            ops += 2.0 * math.ceil(n / chunk) * (per_chunk_ops + 10)
        else:
            with_feats.update((u, c))
    native = 0.0
    if split is not None:
        per_split = build_ops_per_chunk(d, degree - 1) + SPLIT_OPS_PER_CHUNK + 2 * len(split.segments)
        plain = sum(st.flops for st in edge_steps(spec, parent, tuple(parent), rank)
                    if st.logits and st.scope[-1] != -1)  # the plain logit edges' products
        if split.native:
            flops, native = flops - plain, float(plain)
        else:
            flops = flops - plain + plain * split.padding() / SPLIT_GEMM_GAIN
    for v in with_feats:
        n = spec.seq_lens[v - 1]
        if split is not None and split.native:
            ops += math.ceil(n / max(1, split.native_rows)) * NATIVE_OPS_PER_CHUNK * b
        elif split is not None:
            entries += float(b * n * split.low_rank)
            ops += math.ceil(n / split.rows) * per_split
        else:
            entries += float(b * n * rank)
            ops += math.ceil(n / chunk) * per_chunk_ops
    return float(flops), entries, ops, rows, native


def approx_seconds(work: tuple[float, float, float, float, float], model: CostModel) -> float:
    """Seconds for ``work = (product FLOPs, feature entries, ops, rows, native FLOPs)`` under ``model``."""
    prod, entries, ops, rows, native = work
    return model.approx_scale * (prod / model.product_flops + entries / model.build_entries
                                 + ops * model.op_seconds + rows * model.row_seconds + model.call_seconds
                                 + native / model.native_rate())


def exact_seconds(plan: Plan, model: CostModel) -> float:
    """Seconds of an exact plan: its FLOPs times the measured cost per FLOP (or default kind rates)."""
    if model.exact_seconds_per_flop is not None:
        return plan.flops * model.exact_seconds_per_flop
    total = 0.0
    counted = 0.0
    for st in plan.steps:
        if st.kind.startswith("fallback-"):
            continue
        total += st.flops / DEFAULT_EXACT_RATES.get(st.kind, 10e9)
        counted += st.flops
    # plan.flops may include work outside the steps (e.g. the logit factors): at the edge rate
    return total + max(0.0, plan.flops - counted) / DEFAULT_EXACT_RATES["edge"]


def fmt_seconds(x: float) -> str:
    if x >= 100:
        return f"{x:.0f} s"
    if x >= 1:
        return f"{x:.2g} s" if x < 10 else f"{x:.3g} s"
    if x >= 1e-3:
        return f"{x * 1e3:.3g} ms"
    return f"{x * 1e6:.3g} us"
