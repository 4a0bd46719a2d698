"""The printable, frozen :class:`Plan`: what will run, what it costs, and why.

Planning is pure Python (no torch), in the spirit of opt_einsum's ``contract_path``: you can
build, inspect and print a plan without any tensor, and execution only follows it. A plan has a
shared header (spec, method, reason, cost, printable steps) and a method-specific ``detail``
(:mod:`.details`) holding every choice the kernel executes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..polynomial import AttentionPolynomial
from .details import Detail, EliminationDetail, StepKind, TreeDetail
from .methods import Method
from .spec import ProblemSpec

__all__ = ["Plan", "Step", "StepKind", "fmt_flops", "fmt_bytes", "DEFAULT_MEMORY_BUDGET"]

#: Working-memory target of one call (bytes); chunk sizes are chosen to stay under it.
DEFAULT_MEMORY_BUDGET = 256 * 2**20


def fmt_flops(x: float) -> str:
    for unit, div in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6), ("kFLOP", 1e3)):
        if x >= div:
            return f"{x / div:.3g} {unit}"
    return f"{x:.3g} FLOP"


def fmt_bytes(x: float) -> str:
    for unit, div in (("GB", 2**30), ("MB", 2**20), ("kB", 2**10)):
        if x >= div:
            return f"{x / div:.3g} {unit}"
    return f"{x:.0f} B"


# old private names, still imported by planning/approx.py
_fmt_flops, _fmt_bytes = fmt_flops, fmt_bytes


def _vars(vs: tuple[int, ...]) -> str:
    return "{" + ",".join(f"x{v}" for v in vs) + "}"


_FUSED_TEXT = {
    StepKind.FUSED_TRIANGLE: (
        "fused triangle kernel: separable log-shifts, one [n,n] @ [n, Z*n] GEMM per chunk of "
        "value columns, O(n^2) memory per head"
    ),
    StepKind.FUSED_TENSOR3: (
        "fused x1*x2*x3 kernel: per block of query rows x x2 rows, logits GEMM, exact row max, exp2, "
        "row sums, V3 GEMM; x2 rows combined with V2; the backward recomputes per block"
    ),
    StepKind.FUSED_TRIANGLE_ROWWISE: (
        "fused triangle kernel (small problem): per block of query rows x x2 rows, all n3 logits, "
        "exact row max, exp2, row sums, V3 GEMM; x2 rows combined with V2; the backward recomputes per block"
    ),
}


@dataclass(frozen=True)
class Step:
    """One printed step of a plan (the kernel reads the plan's ``detail``, which matches it).

    ``kind``: :class:`StepKind`. ``edge`` (tree message: attention from ``parent`` over ``var``
    with key bias), ``dense`` / ``factored`` (eliminate ``var`` over ``scope``), ``fused-*`` (a
    fused cubic kernel), ``sdpa``, ``reference``. ``fallback``: runs only for rows whose
    normaliser could have underflowed in the fused step before it.
    """

    kind: StepKind
    var: int
    scope: tuple[int, ...]
    flops: float
    bytes: float
    parent: int = 0
    logits: bool = True  # edge steps: False for a zero edge (mask/causal/component link only)
    depends_on_query: bool = True
    fallback: bool = False
    impl: str = ""  # edge steps: the edge implementation (flash / materialised / broadcast)

    def describe(self) -> str:
        if self.fallback:
            inner = Step(self.kind, self.var, self.scope, 0.0, 0.0, depends_on_query=self.depends_on_query)
            return f"(only for rows that could underflow) {inner.describe()}"
        k = self.kind
        if k == StepKind.EDGE:
            what = "attention" if self.logits else "masked mean (no monomial)"
            how = f" [{self.impl}]" if self.impl else ""
            return f"edge x{self.parent} <- x{self.var}: {what} with key bias logZ(x{self.var}){how}"
        if k == StepKind.DENSE:
            where = "per query-row chunk" if self.depends_on_query else "once"
            return f"eliminate x{self.var}: dense join over {_vars(self.scope)}, exact log-shift, {where}"
        if k == StepKind.FACTORED:
            where = "per query-row chunk" if self.depends_on_query else "once"
            return (
                f"eliminate x{self.var}: BLAS contraction over {_vars(self.scope)} "
                f"(separable log-shifts, underflow re-checked exactly), {where}"
            )
        if k in _FUSED_TEXT:
            return _FUSED_TEXT[k]
        if k == StepKind.SDPA:
            return "one scaled_dot_product_attention call"
        if k == StepKind.REFERENCE:
            return f"enumerate all tuples over {_vars(self.scope)} in float64"
        return str(k)


@dataclass(frozen=True)
class Plan:
    """A frozen execution plan. ``print(plan)`` shows method, reason, cost and steps.

    Pass it to :func:`polyattn.poly_attention` in place of the polynomial to run it on tensors of
    the planned shapes (plan once, run many).
    """

    spec: ProblemSpec
    method: Method
    reason: str
    steps: tuple[Step, ...]
    flops: float
    peak_bytes: float
    exponent: int
    detail: Detail | None = None
    requested: str = "auto"
    notes: tuple[str, ...] = field(default=())
    blas: bool = False  # the dominant steps are BLAS contractions (n^exponent * d multiply-adds)
    memory_budget: int = DEFAULT_MEMORY_BUDGET  # the budget the plan was made for (bytes)

    @property
    def polynomial(self) -> AttentionPolynomial:
        return self.spec.polynomial

    @property
    def complexity(self) -> str:
        """Asymptotic time in ``n`` (equal lengths), e.g. ``"n^2"``; BLAS plans note the ``d`` factor."""
        return f"n^{self.exponent}" + (" * d (BLAS)" if self.blas else "")

    # Views of the detail (read-only conveniences; the detail is the source).
    @property
    def order(self) -> tuple[int, ...]:
        d = self.detail
        return d.order if isinstance(d, (TreeDetail, EliminationDetail)) else ()

    @property
    def parents(self) -> tuple[tuple[int, int], ...]:
        d = self.detail
        return d.parents if isinstance(d, TreeDetail) else ()

    @property
    def width(self) -> int:
        d = self.detail
        if isinstance(d, EliminationDetail):
            return d.width
        return 1 if isinstance(d, TreeDetail) and d.edges else 0

    @property
    def row_chunk(self) -> int:
        d = self.detail
        if isinstance(d, EliminationDetail):
            return d.fused.row_chunk if d.fused and d.fused.kind != StepKind.FUSED_TRIANGLE else d.row_chunk
        return 0

    @property
    def channel_chunk(self) -> int:
        d = self.detail
        if isinstance(d, EliminationDetail):
            if d.fused and d.fused.kind != StepKind.FUSED_TRIANGLE:
                return self.spec.value_dim
            return d.channel_chunk
        return 0

    @property
    def fused(self) -> str:
        """``"triangle"`` / ``"tensor3"`` when a fused cubic kernel runs, else ``""``."""
        d = self.detail
        if isinstance(d, EliminationDetail) and d.fused is not None:
            return "tensor3" if d.fused.kind == StepKind.FUSED_TENSOR3 else "triangle"
        return ""

    def parent_map(self) -> dict[int, int]:
        return dict(self.parents)

    def to_dict(self) -> dict[str, object]:
        s = self.spec
        return {
            "polynomial": str(s.polynomial),
            "method": str(self.method),
            "requested": self.requested,
            "reason": self.reason,
            "seq_lens": list(s.seq_lens),
            "head_dim": s.head_dim,
            "value_dim": s.value_dim,
            "batch": s.batch,
            "causal": s.causal,
            "mask_pairs": sorted(list(p) for p in s.mask_pairs),
            "device": s.device,
            "dtype": s.dtype,
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
                {"kind": str(st.kind), "var": st.var, "scope": list(st.scope), "flops": st.flops,
                 "bytes": st.bytes, "description": st.describe()}
                for st in self.steps
            ],
            "notes": list(self.notes),
        }

    def _header_lines(self) -> list[str]:
        s = self.spec
        lens = (
            f"n={s.seq_lens[0]}" if len(set(s.seq_lens)) == 1 else "n=" + "/".join(map(str, s.seq_lens))
        )
        masks = ", ".join(f"(x{a},x{b})" for a, b in sorted(s.mask_pairs)) or "none"
        where = "" if (s.device, s.dtype) == ("cpu", "float32") else f", {s.device}/{s.dtype}"
        return [
            f"Plan for {s.polynomial}",
            f"  sizes      : t={s.num_variables}, {lens}, d={s.head_dim}, dv={s.value_dim}, "
            f"batch={s.batch}, causal={s.causal}, masks={masks}{where}",
            f"  method     : {self.method}" + ("" if self.requested in ("auto", "exact") else " (requested)"),
            f"  why        : {self.reason}",
        ]

    def __str__(self) -> str:
        lines = self._header_lines()
        lines += [
            f"  complexity : O({self.complexity}) time"
            + (f", elimination width {self.width}" if self.method == Method.ELIMINATION else ""),
            f"  estimate   : {fmt_flops(self.flops)}, peak working memory {fmt_bytes(self.peak_bytes)}",
        ]
        if self.row_chunk or self.channel_chunk:
            lines.append(
                f"  chunks     : {self.row_chunk} query rows x {self.channel_chunk} value columns"
            )
        d = self.detail
        if isinstance(d, EliminationDetail) and d.fused is not None:
            lines.append(
                f"  fused      : {d.fused.kind}, chunks of {d.fused.row_chunk} query rows x "
                f"{d.fused.col_chunk} value columns (the ones column included), "
                f"{d.fused.key_chunk} x2 rows per block"
                + (f", {d.fused.parts} worker parts" if d.fused.parts > 1 else "")
            )
        lines.append("  steps      :")
        for i, st in enumerate(self.steps, 1):
            cost = "" if st.fallback else f"  [{fmt_flops(st.flops)}, {fmt_bytes(st.bytes)}]"
            lines.append(f"    {i}. {st.describe()}{cost}")
        for note in self.notes:
            lines.append(f"  note       : {note}")
        return "\n".join(lines)
