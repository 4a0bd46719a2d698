r"""Incremental tree message passing: the kernels behind :class:`polyattn.DecodeCache`.

Two entry points, both executing plans made elsewhere:

* :func:`prefill_messages` runs a tree :class:`~polyattn.planning.Plan` (the planned fused edges of
  :mod:`polyattn.ops.tree`) on a whole prompt and returns, besides the output, every non-query
  variable's per-position message: its subtree log-mass ``logZ_c`` and value product ``M_c``.
* :func:`extend_messages` adds ``k`` new positions to cached messages following a
  :class:`~polyattn.planning.decode.DecodePlan`: for each edge ``(u, c)`` in post-order, ``c``'s new
  rows are final (their children ran first) and are appended to the store, then ``u``'s new rows
  attend over all of ``c``'s rows::

      L[i, j] = s * Q_u[P + i] . Q_c[j] + logZ_c[j]      j <= P + i and j a real token (else -inf)
      logZ_u[P + i] += logsumexp_j L[i, j]
      M_u[P + i]    *= softmax_j(L[i]) @ M_c

  Cost per edge ``O(k * n * (d + dv))`` with ``n = P + k`` cached rows: ``O(n * d)`` per new token.
  Masked or multi-row calls run the planned materialised edge of :mod:`polyattn.ops.edge` (an
  explicit mask carries causality and padding); one unpadded new token runs :func:`row_edge`
  (no empty row is possible, so no guards) and, for the edges into x1, :func:`root_row` (one fused
  SDPA call: x1's own log-mass is not needed).

Messages of positions ``<= l`` never depend on later tokens under tree causality
(:mod:`polyattn.planning.decode`), which is what makes the store append-only.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F

from ..planning import Plan, TreeDetail
from ..planning.decode import DecodePlan
from .edge import edge_attention
from .inputs import Problem
from .tree import finish_query, pass_messages

__all__ = ["MessageStore", "prefill_messages", "extend_messages", "finish_root", "row_edge", "root_row"]


class MessageStore(Protocol):
    """Append-only per-variable rows (``[..., n, d]`` keys, ``[..., n, dv]`` messages, ``[..., n]`` logZ).

    ``rows(var)`` returns everything appended so far (``None`` for what the plan does not store);
    ``length`` is the number of positions once the current append is complete.
    """

    length: int

    def append(self, var: int, key: torch.Tensor | None, message: torch.Tensor | None,
               logz: torch.Tensor | None) -> None: ...

    def rows(self, var: int) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]: ...


def finish_root(m1: torch.Tensor | None, lz: torch.Tensor | None, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """The query's output rows: ``M_1`` (ones when nothing carries a value), zero where ``logZ_1 = -inf``."""
    if m1 is None:
        m1 = torch.ones((), dtype=like.dtype, device=like.device).expand(*shape, 1)
    if lz is not None:
        ok = torch.isfinite(lz)
        if not bool(ok.all()):
            m1 = torch.where(ok.unsqueeze(-1), m1, torch.zeros_like(m1))
    return m1.expand(*shape, m1.shape[-1])


def prefill_messages(
    prob: Problem, plan: Plan
) -> tuple[torch.Tensor, dict[int, torch.Tensor | None], dict[int, torch.Tensor]]:
    """Tree message passing (:func:`polyattn.ops.tree.pass_messages`, the full forward's) keeping every message.

    Returns ``(out [..., n_1, dv], messages {c: M_c or None}, logz {c: logZ_c})`` for every
    non-query variable ``c`` (``logz`` only for variables with children). ``M_c`` includes ``V_c``.
    """
    detail = plan.detail
    assert isinstance(detail, TreeDetail)
    msg, logz, final = pass_messages(prob, detail)
    out1 = finish_query(prob, detail, msg.get(1), logz.get(1))
    return out1, final, {c: lz for c, lz in logz.items() if c != 1}


def extend_messages(
    plan: DecodePlan,
    store: MessageStore,
    q_new: dict[int, torch.Tensor],
    v_new: dict[int, torch.Tensor | None],
    *,
    allowed: torch.Tensor | None,
    scale: float,
) -> torch.Tensor:
    """Append ``k`` new positions to ``store`` and return the query's ``k`` new output rows.

    ``q_new[j]``: ``[..., k, d]`` for every variable; ``v_new[j]``: ``[..., k, dv]`` or ``None`` for
    x2..xt as the kernels see them (root-placed values removed). ``store.length`` must already
    count the new positions. ``allowed``: boolean ``[..., k, n]`` (``n = store.length``) combining
    causality (new row ``i`` sees ``j <= n - k + i``) and key padding, or ``None`` when every stored
    row is admissible for every new row (one new token, no padding).
    """
    q1 = q_new[1]
    k, n = q1.shape[-2], store.length
    edges = plan.edges(k, n)
    row = plan.row_kernel(k, allowed is not None)
    logz: dict[int, torch.Tensor] = {}
    msg: dict[int, torch.Tensor] = {}
    for var, edge in zip(plan.vars, edges):
        c, u = var.var, var.parent
        # c's new rows are final: its children's edges ran before (post-order)
        m_c = msg.get(c)
        v_c = v_new.get(c)
        if v_c is not None:
            m_c = v_c if m_c is None else m_c * v_c
        store.append(c, q_new[c] if var.key else None, m_c if var.message else None,
                     logz.get(c) if var.logz else None)
        key, message, lz = store.rows(c)
        if key is None:  # zero edge: the kernel reads only the child's length, dtype and device
            key = torch.zeros((), dtype=q1.dtype, device=q1.device).expand(*q1.shape[:-2], n, 1)
            if lz is None:  # a zero bias gives the zero edge's logits their batch dims
                lz = torch.zeros((), dtype=q1.dtype, device=q1.device).expand(*q1.shape[:-2], n)
        if row and u == 1:
            # x1's log-mass only flags empty rows, which an unconstrained row cannot have: the
            # root edge needs its output alone, one fused SDPA call (nothing at all without values)
            if message is not None:
                r1 = root_row(q_new[1] if var.key else None, key, message, lz, scale=scale)
                msg[1] = r1 if 1 not in msg else msg[1] * r1
            continue
        if row:
            out, lse = row_edge(q_new[u] if var.key else None, key, message, lz, scale=scale)
        else:
            out, lse = edge_attention(
                edge, q_new[u] if var.key else None, key, message, lz,
                mask=allowed, scale=scale, n_parent=k,
            )
        logz[u] = lse if u not in logz else logz[u] + lse
        if out is not None:
            msg[u] = out if u not in msg else msg[u] * out
    return finish_root(msg.get(1), None if row else logz.get(1), tuple(q1.shape[:-1]), q1)


def row_edge(
    q_u: torch.Tensor | None,
    key: torch.Tensor,
    message: torch.Tensor | None,
    bias: torch.Tensor | None,
    *,
    scale: float,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """One unconstrained new row over ``n`` cached rows: ``(softmax(L) @ message, logsumexp(L))``
    with ``L = scale * q_u key^T + bias`` (``[..., 1, n]``); ``q_u is None`` means ``L = bias``.

    Only for rows that cannot be empty (no mask; every bias finite, which holds for an unpadded
    cache: a position always admits itself), so no guard against ``-inf`` is needed and autograd
    stays NaN-free. Five ops, ``O(n (d + dv))``.
    """
    if q_u is not None:
        logits = torch.matmul(q_u, key.transpose(-1, -2))
        logits = logits * scale if bias is None else torch.add(bias.unsqueeze(-2), logits, alpha=scale)
    else:
        assert bias is not None
        logits = bias.unsqueeze(-2)
    lse = torch.logsumexp(logits, dim=-1)
    out = None
    if message is not None:
        out = torch.matmul(torch.exp(logits - lse.unsqueeze(-1)), message)
    return out, lse


def root_row(
    q_1: torch.Tensor | None,
    key: torch.Tensor,
    message: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    scale: float,
) -> torch.Tensor:
    """``softmax(scale * q_1 key^T + bias) @ message`` for one unconstrained query row, without its
    log-sum-exp: one fused ``scaled_dot_product_attention`` call (the bias as an additive mask)."""
    if q_1 is None:
        assert bias is not None
        return torch.matmul(torch.softmax(bias, dim=-1).unsqueeze(-2), message)
    mask = None if bias is None else bias.unsqueeze(-2).to(q_1.dtype)
    return F.scaled_dot_product_attention(q_1, key, message, attn_mask=mask, scale=scale)
