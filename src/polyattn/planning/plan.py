"""The printable, frozen :class:`Plan`: what will run, what it costs, and why.

Planning is pure Python (no torch), in the spirit of opt_einsum's ``contract_path``: you can
build, inspect and print a plan without any tensor, and execution only follows it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .spec import ProblemSpec

__all__ = ["Plan", "Step"]


def _fmt_flops(x: float) -> str:
    for unit, div in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6), ("kFLOP", 1e3)):
        if x >= div:
            return f"{x / div:.3g} {unit}"
    return f"{x:.3g} FLOP"


def _fmt_bytes(x: float) -> str:
    for unit, div in (("GB", 2**30), ("MB", 2**20), ("kB", 2**10)):
        if x >= div:
            return f"{x / div:.3g} {unit}"
    return f"{x:.0f} B"


def _vars(vs: tuple[int, ...]) -> str:
    return "{" + ",".join(f"x{v}" for v in vs) + "}"


@dataclass(frozen=True)
class Step:
    """One step of a plan.

    ``kind``: ``"edge"`` (tree message: attention from ``parent`` over ``var`` with key bias),
    ``"dense"`` (eliminate ``var`` by materialising the join ``scope`` in row chunks, exact max
    shift), ``"factored"`` (eliminate ``var`` by a BLAS contraction of the separate exp-factors with
    separable shifts, exact recomputation of any underflowed entry), ``"sdpa"``, ``"reference"``.
    """

    kind: str
    var: int
    scope: tuple[int, ...]
    flops: float
    bytes: float
    parent: int = 0
    logits: bool = True  # edge steps: False for a zero edge (mask/causal/component link only)
    depends_on_query: bool = True

    def describe(self) -> str:
        if self.kind == "edge":
            what = "attention" if self.logits else "masked mean (no monomial)"
            return f"edge x{self.parent} <- x{self.var}: {what} with key bias logZ(x{self.var})"
        if self.kind == "dense":
            where = "per query-row chunk" if self.depends_on_query else "once"
            return f"eliminate x{self.var}: dense join over {_vars(self.scope)}, exact log-shift, {where}"
        if self.kind == "factored":
            where = "per query-row chunk" if self.depends_on_query else "once"
            return (
                f"eliminate x{self.var}: BLAS contraction over {_vars(self.scope)} "
                f"(separable log-shifts, underflow re-checked exactly), {where}"
            )
        if self.kind == "fused-triangle":
            return ("fused triangle kernel: separable log-shifts, one [n,n] @ [n, Z*n] GEMM per chunk of "
                    "value columns, O(n^2) memory per head")
        if self.kind == "fused-tensor3":
            return ("fused x1*x2*x3 kernel: per query-row chunk, logits GEMM, exact row max, exp, "
                    "V3 GEMM, V2 product summed over x2")
        if self.kind == "fused-triangle-rowwise":
            return ("fused triangle kernel (small problem): per query-row chunk, all n2 x n3 logits, "
                    "exact row max, exp, V3 GEMM, V2 product summed over x2")
        if self.kind.startswith("fallback-"):
            inner = Step(self.kind.removeprefix("fallback-"), self.var, self.scope, 0.0, 0.0,
                         depends_on_query=self.depends_on_query).describe()
            return f"(only for rows that could underflow) {inner}"
        if self.kind == "sdpa":
            return "one scaled_dot_product_attention call"
        if self.kind == "reference":
            return f"enumerate all tuples over {_vars(self.scope)} in float64"
        return self.kind


@dataclass(frozen=True)
class Plan:
    """A frozen execution plan. ``print(plan)`` shows method, reason, cost and steps."""

    spec: ProblemSpec
    method: str
    reason: str
    steps: tuple[Step, ...]
    flops: float
    peak_bytes: float
    exponent: int
    order: tuple[int, ...] = ()
    width: int = 0
    row_chunk: int = 0
    channel_chunk: int = 0
    parents: tuple[tuple[int, int], ...] = ()  # tree plans: (child, parent)
    requested: str = "auto"
    notes: tuple[str, ...] = field(default=())
    blas: bool = False  # the dominant steps are BLAS contractions (n^exponent * d multiply-adds)
    fused: str = ""  # "triangle" / "tensor3" when a fused cubic kernel runs (ops/cubic.py)

    @property
    def polynomial(self):  # noqa: ANN201 - AttentionPolynomial
        return self.spec.polynomial

    @property
    def complexity(self) -> str:
        """Asymptotic time in ``n`` (equal lengths), e.g. ``"n^2"``; BLAS plans note the ``d`` factor."""
        return f"n^{self.exponent}" + (" * d (BLAS)" if self.blas else "")

    def parent_map(self) -> dict[int, int]:
        return dict(self.parents)

    def to_dict(self) -> dict:
        s = self.spec
        return {
            "polynomial": str(s.polynomial),
            "method": self.method,
            "requested": self.requested,
            "reason": self.reason,
            "seq_lens": list(s.seq_lens),
            "head_dim": s.head_dim,
            "value_dim": s.value_dim,
            "batch": s.batch,
            "causal": s.causal,
            "mask_pairs": sorted(list(p) for p in s.mask_pairs),
            "exponent": self.exponent,
            "complexity": self.complexity,
            "blas": self.blas,
            "fused": self.fused,
            "flops": self.flops,
            "peak_bytes": self.peak_bytes,
            "order": list(self.order),
            "width": self.width,
            "row_chunk": self.row_chunk,
            "channel_chunk": self.channel_chunk,
            "steps": [
                {"kind": st.kind, "var": st.var, "scope": list(st.scope), "flops": st.flops,
                 "bytes": st.bytes, "description": st.describe()}
                for st in self.steps
            ],
            "notes": list(self.notes),
        }

    def __str__(self) -> str:
        s = self.spec
        lens = (
            f"n={s.seq_lens[0]}" if len(set(s.seq_lens)) == 1 else "n=" + "/".join(map(str, s.seq_lens))
        )
        masks = ", ".join(f"(x{a},x{b})" for a, b in sorted(s.mask_pairs)) or "none"
        lines = [
            f"Plan for {s.polynomial}",
            f"  sizes      : t={s.num_variables}, {lens}, d={s.head_dim}, dv={s.value_dim}, "
            f"batch={s.batch}, causal={s.causal}, masks={masks}",
            f"  method     : {self.method}" + ("" if self.requested == "auto" else " (requested)"),
            f"  why        : {self.reason}",
            f"  complexity : O({self.complexity}) time"
            + (f", elimination width {self.width}" if self.method == "elimination" else ""),
            f"  estimate   : {_fmt_flops(self.flops)}, peak working memory {_fmt_bytes(self.peak_bytes)}",
        ]
        if self.row_chunk or self.channel_chunk:
            lines.append(
                f"  chunks     : {self.row_chunk} query rows x {self.channel_chunk} value columns"
            )
        lines.append("  steps      :")
        for i, st in enumerate(self.steps, 1):
            cost = "" if st.kind.startswith("fallback-") else f"  [{_fmt_flops(st.flops)}, {_fmt_bytes(st.bytes)}]"
            lines.append(f"    {i}. {st.describe()}{cost}")
        for note in self.notes:
            lines.append(f"  note       : {note}")
        return "\n".join(lines)
