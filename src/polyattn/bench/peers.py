"""Adapters for peer packages (optional extra ``peers``), each mapped onto a polyattn problem.

Every adapter states which polynomial it computes in polyattn's terms, so the benchmark can run
both on identical tensors (and check they agree). A package that is not installed is skipped with
the import error as the printed reason; nothing here is required for polyattn itself.

* ``strassen-attention`` 0.1.5, ``strassen_attend(q, k1, k2, v1, v2)``: logits
  ``s q.k1 + s q.k2 + k1.k2`` (``s = d^-1/2``; the ``k1.k2`` term is unscaled), values ``v1 * v2``.
  In polyattn terms: Strassen ``x1*x2 + x1*x3 + x2*x3`` with ``scale=1`` and ``x1 = s q``.
* ``simplicial-attention`` 0.1.6, ``naive_two_simplicial_attend(q, (k1, k2), (v1, v2))``: the
  trilinear ``x1*x2*x3`` with ``s = d^-1/2``, materialising the ``n^3`` logit cube.
* ``poly-attention`` (``poly_attention.poly_attention.reference_poly_attention``): the path
  ``x1*x2 + x2*x3`` with ``x2`` value-less, materialising two ``n x n`` score matrices.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["Peer", "PEERS", "peer_for", "peer_status"]


@dataclass(frozen=True)
class Peer:
    name: str  # PyPI distribution name
    module: str
    polynomial: str  # canonical polyattn polynomial it computes
    note: str

    def load(self) -> Callable[..., torch.Tensor]:
        """Return ``fn(queries, values) -> out`` on polyattn-style lists (raises ImportError if absent)."""
        mod = importlib.import_module(self.module)
        if self.name == "strassen-attention":
            f = mod.strassen_attend

            def run(qs, vs):
                return f(qs[0], qs[1], qs[2], vs[0], vs[1])

        elif self.name == "simplicial-attention":
            f = mod.naive_two_simplicial_attend

            def run(qs, vs):
                return f(qs[0], (qs[1], qs[2]), (vs[0], vs[1]))

        else:
            f = importlib.import_module("poly_attention.poly_attention").reference_poly_attention

            def run(qs, vs):
                return f(qs[0], qs[1], qs[1], qs[2], vs[1])[0]

        return run

    def polyattn_args(self, qs: list[torch.Tensor], vs: list[torch.Tensor]) -> tuple[list, list, dict]:
        """The (queries, values, kwargs) for which ``poly_attention`` computes the same function."""
        if self.name == "strassen-attention":
            s = qs[0].shape[-1] ** -0.5
            return [qs[0] * s, qs[1], qs[2]], list(vs), {"scale": 1.0}
        if self.name == "poly-attention":
            return list(qs), [None, vs[1]], {}
        return list(qs), list(vs), {}


PEERS: tuple[Peer, ...] = (
    Peer("strassen-attention", "strassen_attention", "x1*x2 + x1*x3 + x2*x3",
         "q k1 + q k2 scaled, k1 k2 unscaled; exp without max-shift"),
    Peer("simplicial-attention", "simplicial_attention", "x1*x2*x3", "naive path: n^3 logit cube"),
    Peer("poly-attention", "poly_attention", "x1*x2 + x2*x3", "x2 value-less; materialised n x n scores"),
)


def peer_for(polynomial: str) -> list[Peer]:
    return [p for p in PEERS if p.polynomial == polynomial]


def peer_status(peer: Peer) -> str | None:
    """None when the package imports, else a one-line reason to print."""
    try:
        peer.load()
    except Exception as e:  # ImportError, or a broken dependency of the peer
        return f"{peer.name} not usable ({type(e).__name__}: {e}); install with pip install 'polyattn[peers]'"
    return None
