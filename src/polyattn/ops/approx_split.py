r"""Feature-space products of the approx tree kernel: materialised, or with the top degree split off.

Both classes give the tree kernel (:mod:`polyattn.ops.approx_tree`) the same five operations on a
chunk of rows (``z = dv+1`` value channels, everything transposed as in that module):

* ``chunk(qt)``: what a chunk needs from ``q^T`` (``[..., d, rows]``);
* ``prepare(a)``: a summary ``A^T`` (``[..., z, r]``, feature order) in the layout ``apply`` reads;
* ``apply(P, ch)``: ``E = A F^T`` for the chunk, ``[..., z, rows]``;
* ``summarize(m, ch, acc)``: ``M F`` for the chunk (``M`` ``[..., z, rows]``), added into ``acc`` in
  place when ``acc`` is given (outside autograd), else returned;
* ``finish(acc)``: the accumulated summary back in feature order, ``[..., z, r]``.

:class:`DenseProducts` materialises ``F^T`` per chunk (:mod:`polyattn.ops.approx_features`).
:class:`SplitProducts` runs the plan's :class:`~polyattn.planning.approx_split.SplitTop`: features
only to degree ``p - 1`` (``G``), slot-stacked summaries ``[..., S z, r_1]`` and one GEMM per
segment; the math, layout and why are in :mod:`polyattn.planning.approx_split`. Under autograd the
same GEMMs run out of place (the chunk is recomputed in backward by the caller's checkpoint).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..planning.approx import ApproxPlan
from ..planning.approx_split import SplitTop, slot_table
from .approx_features import Features, aligned_empty

__all__ = ["DenseProducts", "SplitProducts", "products_for"]


def products_for(plan: ApproxPlan, feats: Features, z: int) -> DenseProducts | SplitProducts:
    """The plain-edge products the plan names (``feats``: the full-degree features, used by the
    materialised form); each knows its rows per chunk (:meth:`chunk_rows`)."""
    if plan.split is not None and plan.split.native:
        from .approx_native import NativeProducts  # it builds on SplitProducts

        return NativeProducts(plan.split, feats.scale, z, feats.device, feats.dtype)
    if plan.split is not None:
        return SplitProducts(plan.split, feats.scale, z, feats.device, feats.dtype)
    return DenseProducts(feats, plan.chunk_rows)


def _grad(*xs: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(x.requires_grad for x in xs)


class DenseProducts:
    """Products with the whole feature matrix of a chunk built (``F^T``, ``[..., r, rows]``)."""

    def __init__(self, feats: Features, rows: int = 1) -> None:
        self.feats = feats
        self.rows = max(1, rows)

    def chunk_rows(self, grad: bool) -> int:
        """Rows per chunk (the plan's), with or without autograd."""
        return self.rows

    def chunk(self, qt: torch.Tensor) -> Any:
        return self.feats.cols(qt)

    def prepare(self, a: torch.Tensor) -> torch.Tensor:
        return a

    def apply(self, p: torch.Tensor, ft: Any) -> torch.Tensor:
        return p @ ft

    def summarize(self, m: torch.Tensor, ft: Any, acc: torch.Tensor | None) -> torch.Tensor:
        part = m @ ft.transpose(-1, -2)
        return part if acc is None else acc.add_(part)

    def finish(self, acc: torch.Tensor) -> torch.Tensor:
        return acc


class SplitProducts:
    """Products with the top degree split off (see the module docstring)."""

    def __init__(self, split: SplitTop, scale: float, z: int, device: torch.device, dtype: torch.dtype) -> None:
        self.rows = split.rows
        d, p = split.d, split.degree
        r1, _, slots = slot_table(d, p)
        self.low = Features(d, p - 1, scale, device, dtype)
        self.S, self.K, self.z = d + 1, r1, z
        self.rank = math.comb(d + p, p)
        self.segments = split.segments
        # a segment where every slot is active (the first top-degree one): apply writes it first
        self.full = next(i for i, (_, _, k) in enumerate(self.segments) if k == self.S)
        self._buffers: dict[tuple[Any, ...], torch.Tensor] = {}
        self._view_cache: dict[str, tuple[torch.Tensor, list[torch.Tensor]]] = {}
        idx = torch.full((self.S, r1), self.rank, dtype=torch.long)
        for s, (a, e, off) in enumerate(slots):
            idx[s, a:e] = torch.arange(off, off + e - a)
        flat = idx.reshape(-1)
        valid = torch.nonzero(flat < self.rank).squeeze(1)
        inv = torch.empty(self.rank, dtype=torch.long)
        inv[flat[valid]] = valid
        self.gather = flat.to(device)  # stacked position -> feature index (rank = the zero column)
        self.inv = inv.to(device)  # feature index -> stacked position
        self.coord = torch.arange(d - 1, -1, -1, device=device)  # slot 1 + j multiplies by q[d - 1 - j]

    def chunk_rows(self, grad: bool) -> int:
        """Rows per chunk (the plan's ``split.rows``), with or without autograd."""
        return self.rows

    def chunk(self, qt: torch.Tensor) -> Any:
        return self.low.cols(qt), qt.index_select(-2, self.coord)

    def prepare(self, a: torch.Tensor) -> torch.Tensor:
        ext = torch.cat([a, a.new_zeros(*a.shape[:-1], 1)], dim=-1)
        st = ext.index_select(-1, self.gather).unflatten(-1, (self.S, self.K))  # [..., z, S, K]
        st = st.transpose(-3, -2).reshape(*a.shape[:-2], self.S * self.z, self.K)
        if _grad(st):
            return st.contiguous()
        return aligned_empty(*st.shape, dtype=st.dtype, device=st.device).copy_(st)

    def finish(self, acc: torch.Tensor) -> torch.Tensor:
        st = acc.unflatten(-2, (self.S, self.z)).transpose(-3, -2)  # [..., z, S, K]
        return st.reshape(*acc.shape[:-2], self.z, self.S * self.K).index_select(-1, self.inv)

    def _buffer(self, name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """A work buffer reused across chunks (outside autograd; one per name and shape)."""
        key = (name, shape, like.dtype, like.device)
        buf = self._buffers.get(key)
        if buf is None:
            if len(self._buffers) >= 8:  # a chunk loop uses two shapes (full and last chunk)
                self._buffers.clear()
            buf = self._buffers[key] = aligned_empty(*shape, dtype=like.dtype, device=like.device)
        return buf

    def _views(self, kind: str, t: torch.Tensor) -> list[torch.Tensor]:
        """Per-segment views of ``t``, cached per ``kind`` while ``t`` is the same tensor (the reused
        chunk buffers and an edge's prepared summary are, chunk after chunk; one kind per tensor, so
        a middle variable's apply and summarize do not evict each other's views)."""
        hit = self._view_cache.get(kind)
        if hit is not None and hit[0] is t:
            return hit[1]
        z = self.z
        if kind == "g":
            views = [t[a:b] for a, b, _ in self.segments]
        elif kind == "gt":
            views = [t[a:b].t() for a, b, _ in self.segments]
        elif kind in ("buf", "mq"):  # apply's and summarize's buffers: the active slots' rows
            views = [t[: k * z] for _, _, k in self.segments]
        else:  # "p" / "out": the active slots' rows of the segment's columns
            views = [t[: k * z, a:b] for a, b, k in self.segments]
        self._view_cache[kind] = (t, views)
        return views

    def apply(self, p: torch.Tensor, ch: Any) -> torch.Tensor:
        g, qs = ch
        if p.dim() == 2 and g.dim() == 2 and not _grad(p, g, qs):
            return self._apply_flat(p, g, qs)
        rows = g.shape[-1]
        batch = torch.broadcast_shapes(p.shape[:-2], g.shape[:-2], qs.shape[:-2])
        acc = torch.zeros(*batch, self.S * self.z, rows, dtype=g.dtype, device=g.device)
        for a, b, k in self.segments:
            acc[..., : k * self.z, :] += p[..., : k * self.z, a:b] @ g[..., a:b, :]
        accv = acc.unflatten(-2, (self.S, self.z))
        return accv[..., 0, :, :] + (accv[..., 1:, :, :] * qs.unsqueeze(-2)).sum(-3)

    def _apply_flat(self, p: torch.Tensor, g: torch.Tensor, qs: torch.Tensor) -> torch.Tensor:
        """``apply`` on 2-D operands outside autograd: one reused buffer, the all-slot segment
        written first (no zero fill), the ``q_c`` multiplies in place, one sum over the slots."""
        rows = g.shape[-1]
        buf = self._buffer("apply", (self.S * self.z, rows), g)
        pv, gv, bv = self._views("p", p), self._views("g", g), self._views("buf", buf)
        torch.mm(pv[self.full], gv[self.full], out=buf)
        for i in range(len(self.segments)):
            if i != self.full:
                bv[i].addmm_(pv[i], gv[i])
        accv = buf.view(self.S, self.z, rows)
        accv[1:].mul_(qs.unsqueeze(1))
        return accv.sum(0)

    def summarize(self, m: torch.Tensor, ch: Any, acc: torch.Tensor | None) -> torch.Tensor:
        g, qs = ch
        flat = not _grad(m, g, qs) and m.dim() == 2 and g.dim() == 2 and (acc is None or acc.dim() == 2)
        if flat:
            mq = self._buffer("summarize", (self.S * self.z, m.shape[-1]), g)
            mqv = mq.view(self.S, self.z, m.shape[-1])
            mqv[0].copy_(m)
            torch.mul(m.unsqueeze(0), qs.unsqueeze(1), out=mqv[1:])
        else:
            m = m.expand(*torch.broadcast_shapes(m.shape[:-2], qs.shape[:-2]), *m.shape[-2:])
            mq = torch.cat([m.unsqueeze(-3), m.unsqueeze(-3) * qs.unsqueeze(-2)], dim=-3)  # [..., S, z, rows]
            mq = mq.reshape(*mq.shape[:-3], self.S * self.z, mq.shape[-1])
        out = acc
        if out is None:
            batch = torch.broadcast_shapes(mq.shape[:-2], g.shape[:-2])
            out = aligned_empty(*batch, self.S * self.z, self.K, dtype=g.dtype, device=g.device, zero=True)
        if flat:
            for ov, mv, gv in zip(self._views("out", out), self._views("mq", mq), self._views("gt", g)):
                ov.addmm_(mv, gv)
            return out
        for a, b, k in self.segments:
            out[..., : k * self.z, a:b] += mq[..., : k * self.z, :] @ g[..., a:b, :].transpose(-1, -2)
        return out
