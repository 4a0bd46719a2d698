"""Method-specific plan details: every number and choice a kernel uses (pure Python).

A :class:`~polyattn.planning.plan.Plan` has a shared header (spec, method, reason, cost, printable
steps) and one of these details. Kernels read the detail and decide nothing: which edge
implementation runs, how a causal edge is applied, which factors and messages each elimination
step joins, which fused kernel runs and with which chunks. Device type and dtype enter the
:class:`~polyattn.planning.spec.ProblemSpec` as plain strings, so choosing among implementations
(:mod:`.capability`) stays torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

__all__ = [
    "StepKind",
    "EdgeImpl",
    "EdgeCausal",
    "EdgePlan",
    "TreeDetail",
    "ElimStep",
    "FusedCubic",
    "EliminationDetail",
    "SdpaDetail",
    "ReferenceDetail",
    "Detail",
]


class StepKind(str, Enum):
    """What one printed step does (``str``-valued: ``StepKind.EDGE == "edge"``)."""

    SDPA = "sdpa"
    EDGE = "edge"
    DENSE = "dense"
    FACTORED = "factored"
    FUSED_TRIANGLE = "fused-triangle"
    FUSED_TRIANGLE_ROWWISE = "fused-triangle-rowwise"
    FUSED_TENSOR3 = "fused-tensor3"
    REFERENCE = "reference"
    APPROX_EDGE = "approx_edge"
    APPROX_SUMMARY = "approx_summary"
    APPROX_DIRECT = "approx_direct"
    APPROX_CONTRACT = "approx_contract"

    def __str__(self) -> str:
        return self.value


class EdgeImpl(str, Enum):
    """How one tree edge is computed (chosen from :data:`.capability.EDGE_CAPABILITIES`)."""

    #: ATen's fused CPU flash-attention op with the key bias folded in: O((n_u + n_c) d) memory
    FLASH = "flash"
    #: logits materialised in chunks of parent rows (any device and dtype)
    MATERIALISED = "materialised"
    #: a zero edge without mask or causality: one weight vector shared by every parent row
    BROADCAST = "broadcast"

    def __str__(self) -> str:
        return self.value


class EdgeCausal(str, Enum):
    """How a causal constraint on an edge is applied."""

    NONE = "none"
    #: the flash op's ``is_causal`` (top-left aligned: child position <= parent position)
    KERNEL = "kernel"
    #: ``parent <= child`` as ``is_causal`` after reversing both sequences (needs n_u == n_c)
    FLIPPED = "flipped"
    #: a triangular boolean mask combined with the pair mask
    MASK = "mask"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class EdgePlan:
    """One tree edge ``parent <- child``: attention from the parent's rows over the child's rows.

    ``logits``: a monomial lies on the pair (otherwise a zero edge: logits 0, only constraints).
    ``bias``: the child has children of its own, so its subtree log-mass enters as a key bias.
    ``causal``: ``"child<=parent"``, ``"parent<=child"`` or ``None``; ``causal_via`` says how.
    ``row_chunk``: parent rows per chunk of the materialised implementation (0 for the others).
    """

    parent: int
    child: int
    logits: bool
    bias: bool
    masked: bool
    causal: str | None
    impl: EdgeImpl
    causal_via: EdgeCausal
    row_chunk: int = 0


@dataclass(frozen=True)
class TreeDetail:
    """Message passing: ``edges`` in execution order (children before parents)."""

    parents: tuple[tuple[int, int], ...]  # (child, parent)
    order: tuple[int, ...]  # post-order of the non-root variables
    edges: tuple[EdgePlan, ...]


@dataclass(frozen=True)
class ElimStep:
    """Eliminate ``var``: join the ``factors`` (by scope) and the messages of earlier ``messages``
    (indices into :attr:`EliminationDetail.steps`) over ``scope``, sum ``var`` out.

    ``kind`` is :attr:`StepKind.DENSE` (materialise the join in row chunks, exact max shift) or
    :attr:`StepKind.FACTORED` (BLAS contraction of separately shifted exp-factors; entries whose
    normaliser could have underflowed are recomputed by a dense step on just those rows).
    ``depends_on_query``: x1 is in ``scope``, so the step runs once per query-row chunk; otherwise
    once per value-column chunk, before the query steps.
    """

    var: int
    scope: tuple[int, ...]
    kind: StepKind
    depends_on_query: bool
    factors: tuple[tuple[int, ...], ...]
    messages: tuple[int, ...]
    out_scope: tuple[int, ...]


@dataclass(frozen=True)
class FusedCubic:
    """A fused BLAS kernel for the plain triangle or ``x1*x2*x3`` (:mod:`polyattn.ops.cubic`).

    ``row_chunk`` / ``key_chunk``: query rows / x2 rows per block (row-wise kernels; the separable
    triangle takes all of them); ``col_chunk``: value columns, the ones column included, per GEMM
    (separable triangle; the row-wise kernels take all). ``fallback``: the generic steps of the
    detail recompute the call when a separable-shift normaliser may have underflowed. The same
    blocks run in the forward and in the (custom, recomputing) backward. ``parts``: worker-thread
    parts of the row-wise kernels (1: none) — by ranges of heads when the batch has that many,
    else by ranges of query-row chunks, whose per-part buffers the memory figure counts.
    """

    kind: StepKind
    row_chunk: int
    col_chunk: int
    fallback: bool
    key_chunk: int = 0
    parts: int = 1


@dataclass(frozen=True)
class EliminationDetail:
    """Variable elimination along ``order``.

    ``factors``: scopes of the logit factors (monomials with masks folded in, pair masks and
    causal pairs without a monomial). ``final``: indices of the steps whose messages (scopes
    ``(1,)`` or ``()``) are multiplied into the output. Query rows run in chunks of ``row_chunk``,
    value columns in chunks of ``channel_chunk`` (each chunk also carries the ones column).
    ``fused``: a fused cubic kernel that runs instead (the steps are then its exact fallback).
    """

    order: tuple[int, ...]
    width: int
    row_chunk: int
    channel_chunk: int
    factors: tuple[tuple[int, ...], ...]
    steps: tuple[ElimStep, ...]
    final: tuple[int, ...]
    fused: FusedCubic | None = None


@dataclass(frozen=True)
class SdpaDetail:
    """One ``scaled_dot_product_attention`` call; ``masked``: a boolean mask is passed;
    ``is_causal``: the only constraint is causality, passed as SDPA's ``is_causal`` (fused kernel,
    no ``n x n`` mask; top-left aligned like the causal mask it replaces)."""

    masked: bool
    is_causal: bool = False


@dataclass(frozen=True)
class ReferenceDetail:
    """Brute force over all tuples in ``dtype`` (the specification: float64)."""

    dtype: str = "float64"


Detail = TreeDetail | EliminationDetail | SdpaDetail | ReferenceDetail
