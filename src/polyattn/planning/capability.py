"""Which kernel implementation serves which device type and dtype (a static table, pure Python).

The planner consults this table; kernels never re-check it. Device types and dtypes are the plain
strings of :class:`~polyattn.planning.spec.ProblemSpec` (``"cpu"``, ``"cuda"``; ``"float32"``, ...).
"""

from __future__ import annotations

from .details import EdgeImpl

__all__ = ["EDGE_CAPABILITIES", "edge_impl", "ITEMSIZE"]

#: (device type, compute dtype) pairs served by the fused flash tree edge (ATen's CPU flash op).
#: Other devices use the materialised edge: a CUDA flash path with a key bias and a differentiable
#: log-sum-exp is not written yet because it cannot be tested on this project's machines.
EDGE_CAPABILITIES: frozenset[tuple[str, str]] = frozenset({("cpu", "float32"), ("cpu", "float64")})

#: bytes per element of the compute dtypes (half types compute in float32)
ITEMSIZE = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}


def edge_impl(device: str, dtype: str, *, logits: bool, constrained: bool) -> EdgeImpl:
    """The implementation of one tree edge.

    A zero edge (no monomial on the pair) without mask or causality gives every parent row the
    same weights: :attr:`EdgeImpl.BROADCAST`. Other zero edges are materialised (the flash op
    needs logits). Edges with logits use flash where the table allows it.
    """
    if not logits:
        return EdgeImpl.MATERIALISED if constrained else EdgeImpl.BROADCAST
    if (device, dtype) in EDGE_CAPABILITIES:
        return EdgeImpl.FLASH
    return EdgeImpl.MATERIALISED
