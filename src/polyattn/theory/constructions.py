"""Explicit one-layer, one-head poly-attention models with hand-set weights (DESIGN §1.4–§1.5).

Every model is ``embedding -> poly_attention -> linear readout`` and runs on the token layouts of
:mod:`polyattn.tasks` (the batches ``polyattn train`` feeds its models):

* **embedding**: a token is a tuple of integer fields; its embedding is the sum of one lookup
  table per field (like token + position embeddings), ``E[token] = sum_f T_f[token[f]]`` in
  ``R^D``;
* **poly-attention** of the model's polynomial with linear projections ``Q_j = E W_j`` (one per
  variable) and ``V_j = E U_j`` (one per non-query variable), logit scale ``s = 1`` (the scale is
  folded into the weights), float64 so that the large "hard-softmax" scales are exact;
* **readout**: ``logits = out @ R + c`` at the query position(s), prediction = ``argmax``.

Constructions:

* :func:`composition_model` — r-fold function composition ``f_r(...f_1(x))`` on
  :class:`polyattn.tasks.FunctionComposition` tokens ``(value, index, table)`` with the path
  ``h_r`` (any ``r``, any ``m``) or with any polynomial containing the path edges
  ``x1*x2, x2*x3, ..., xr*x(r+1)`` (e.g. Strassen attention for ``r = 2``).
* :func:`match3_model` — Match3 mod ``M`` on :class:`polyattn.tasks.Match3` tokens with
  ``bos=True`` (``[BOS, v_1..v_n]``), with tensor attention ``x1*x2*...*xt`` (``t >= 3``).

Why the composition model is exact. Entry ``f_{i+1}(a) = b`` is the token ``(b, a, i)``; the query
is ``(x, m, r)``, last. Edge ``(x_j, x_{j+1})`` owns a private 4-coordinate block of the head
dimension. There ``Q_j`` holds ``[u, u^2, 1, 1]`` where ``u`` is the token's *value* field (the
query's ``x`` for ``j = 1``, else the selected entry's value ``f_{j-1}(a)``: the number ``x_j``
points to) and ``Q_{j+1}`` holds ``lam * [2a, -1, -a^2, -[table != j-1]]`` where ``a`` is the
token's index field. Their product is ``-lam * ((u - a)^2 + [table != j-1])``: zero for the one
correct entry of table ``j-1`` and ``<= -lam`` for every other token (the query token has table id
``r``). Summing the ``r`` edges, the unique correct tuple (the chain ``x -> f_1(x) -> ...``) has
logit ``0`` and every other tuple ``<= -lam``; with ``lam = r ln n + 40`` the softmax puts mass
``>= 1 - e^-40`` on it. The value of ``x_{r+1}`` is its token's value ``b`` (one channel), all other
values are 1, so the output is ``b* +- m e^-40``; the readout ``logit_c = 2 c y - c^2``
(= ``-(y - c)^2`` up to a class-independent term) picks the nearest integer. Monomials outside
the path get no coordinates, so they contribute 0.

Why the Match3 model is exact (rule of :mod:`polyattn.tasks.match3`: ``j, k`` range over all
positions). With ``z = exp(2 pi i v / M)`` for a token of value ``v``, ``Re(z_1 z_2 z_3)`` is a
trilinear form (4 coordinates) equal to 1 iff ``v_1 + v_2 + v_3 = 0 mod M`` and
``<= cos(2 pi / M) = 1 - delta`` otherwise. A BOS token has ``z = 0`` and adds a fifth coordinate
that gives the tuple ``(i, BOS, BOS)`` the logit ``tau = 1 - delta/2``; mixed tuples get 0. Scaled
by ``lam``, the softmax of query ``i`` concentrates on matching tuples if one exists, otherwise on
``(BOS, BOS)``. Values are ``[token is not BOS]``, so the output is ``~1`` or ``~0`` and the
readout thresholds at 1/2. Extra variables ``x4..xt`` get all-ones query rows (``4``-tensor with
``Q_4 = 1`` is 3-tensor) and all-ones values. Without a BOS token no such model exists: the output
is a convex combination of tuple values ``V_j * V_k`` that do not depend on the query, and every
tuple of two values is a match for some query value, so no linear readout separates "match" from
"no match".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import PolyAttentionError
from ..functional import poly_attention
from ..polynomial import AttentionPolynomial, parse, path

__all__ = [
    "OneLayerModel",
    "composition_model",
    "match3_model",
    "MATCH3_MECHANISMS",
    "COMPOSITION_MARGIN",
]

#: extra log-margin (nats) of the hard-softmax scales: wrong tuples keep total mass <= e^-40
COMPOSITION_MARGIN = 40.0
#: mechanisms :func:`match3_model` builds (Strassen attention's Match3 solution is not constructed)
MATCH3_MECHANISMS = ("tensor",)

_DT = torch.float64


@dataclass(frozen=True)
class OneLayerModel:
    """``embedding -> poly_attention -> readout`` with fixed weights (one layer, one head).

    Shapes: ``tables[f]`` is ``[vocab_f, D]``; ``w_q[j]`` is ``[D, d]`` for variable ``x(j+1)``;
    ``w_v[j]`` is ``[D, dv]`` for ``x(j+2)``; ``readout`` ``[dv, C]``; ``readout_bias`` ``[C]``.
    ``query`` selects the output rows: ``"last"`` (the final token) or ``"all"``.
    """

    polynomial: AttentionPolynomial
    tables: tuple[torch.Tensor, ...]
    w_q: tuple[torch.Tensor, ...]
    w_v: tuple[torch.Tensor, ...]
    readout: torch.Tensor
    readout_bias: torch.Tensor
    query: str
    description: str = ""

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens`` ``[B, n, F]`` integer fields -> embeddings ``[B, n, D]`` (float64)."""
        if tokens.dim() != 3 or tokens.shape[-1] != len(self.tables):
            raise PolyAttentionError(
                f"tokens must be [batch, seq, {len(self.tables)}] integer fields, got {tuple(tokens.shape)}"
            )
        return sum(t[tokens[..., f]] for f, t in enumerate(self.tables))  # type: ignore[return-value]

    def attend(self, tokens: torch.Tensor, *, method: str = "auto") -> torch.Tensor:
        """The poly-attention output at the query rows: ``[B, n_q, dv]``."""
        e = self.embed(tokens)
        e1 = e[:, -1:, :] if self.query == "last" else e
        queries = [e1 @ self.w_q[0]] + [e @ w for w in self.w_q[1:]]
        values = [e @ w for w in self.w_v]
        return poly_attention(self.polynomial, queries, values, scale=1.0, method=method)

    def logits(self, tokens: torch.Tensor, *, method: str = "auto") -> torch.Tensor:
        return self.attend(tokens, method=method) @ self.readout + self.readout_bias

    def predict(self, tokens: torch.Tensor, *, method: str = "auto") -> torch.Tensor:
        """Class predictions ``[B, n_q]`` (``n_q = 1`` for ``query="last"``)."""
        return self.logits(tokens, method=method).argmax(-1)


def _check_int(name: str, v: object, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise PolyAttentionError(f"{name} must be an integer >= {lo}, got {v!r}")
    return v


# --------------------------------------------------------------------------- composition
def composition_model(
    r: int, m: int, *, polynomial: str | AttentionPolynomial | None = None
) -> OneLayerModel:
    """One-head model solving r-fold composition over domain ``[m] = {0..m-1}``.

    ``polynomial`` defaults to the path ``h_r``; any polynomial containing the monomials
    ``x1*x2, ..., xr*x(r+1)`` works (others get zero weight), e.g. ``"x1*x2+x2*x3+x1*x3"``
    (Strassen) for ``r = 2``. Tokens are those of :class:`polyattn.tasks.FunctionComposition`
    ``(r, m)``: ``[B, r*m + 1, 3]`` fields ``(value, index, table)``, the query token last.
    """
    r = _check_int("r", r, 1)
    m = _check_int("m", m, 1)
    p = path(r) if polynomial is None else parse(polynomial)
    need = [(j, j + 1) for j in range(1, r + 1)]
    missing = [e for e in need if e not in set(p.monomials)]
    if missing:
        raise PolyAttentionError(
            f"composition_model(r={r}) needs the path monomials "
            f"{' + '.join(f'x{a}*x{b}' for a, b in need)} in the polynomial; {p} lacks "
            f"{', '.join(f'x{a}*x{b}' for a, b in missing)}. Use polynomial=None (the path h_{r}) "
            "or a polynomial that contains them"
        )
    t = p.num_variables
    n = r * m + 1
    lam = r * math.log(n) + COMPOSITION_MARGIN
    # embedding features: value field -> (B, B2), index field -> (A, A2), table field -> CONST + one-hot
    CONST, A, A2, B, B2 = 0, 1, 2, 3, 4
    TAB = 5  # one-hot of the table id 0..r (r = the query token)
    D = TAB + r + 1
    val = torch.zeros(m, D, dtype=_DT)
    vals = torch.arange(m, dtype=_DT)
    val[:, B], val[:, B2] = vals, vals**2
    idx = torch.zeros(m + 1, D, dtype=_DT)  # index m marks the query ("no index")
    ivals = torch.arange(m + 1, dtype=_DT)
    idx[:, A], idx[:, A2] = ivals, ivals**2
    tab = torch.zeros(r + 1, D, dtype=_DT)
    tab[:, CONST] = 1.0
    tab[torch.arange(r + 1), TAB + torch.arange(r + 1)] = 1.0
    d = 4 * r
    w_q = [torch.zeros(D, d, dtype=_DT) for _ in range(t)]
    for j in range(1, r + 1):  # edge (x_j, x_{j+1}) owns block 4(j-1) .. 4j-1
        blk = 4 * (j - 1)
        parent = w_q[j - 1]  # points to its value field u: [u, u^2, 1, 1]
        parent[B, blk] = 1.0
        parent[B2, blk + 1] = 1.0
        parent[CONST, blk + 2] = 1.0
        parent[CONST, blk + 3] = 1.0
        child = w_q[j]  # an entry of table j-1 with index a: lam * [2a, -1, -a^2, -[table != j-1]]
        child[A, blk] = 2.0 * lam
        child[CONST, blk + 1] = -lam
        child[A2, blk + 2] = -lam
        child[CONST, blk + 3] = -lam
        child[TAB + j - 1, blk + 3] = lam
    w_v = []
    for j in range(2, t + 1):
        u = torch.zeros(D, 1, dtype=_DT)
        if j == r + 1:
            u[B, 0] = 1.0
        else:
            u[CONST, 0] = 1.0
        w_v.append(u)
    cls = torch.arange(m, dtype=_DT)
    readout = (2.0 * cls).unsqueeze(0)
    bias = -(cls**2)
    return OneLayerModel(
        p, (val, idx, tab), tuple(w_q), tuple(w_v), readout, bias, "last",
        description=f"{r}-fold composition over [{m}] with {p} (lambda = {lam:.1f})",
    )


# ------------------------------------------------------------------------------- match3
def match3_model(
    modulus: int, *, mechanism: str = "tensor", t: int = 3, seq_len: int = 64
) -> OneLayerModel:
    """One-head model solving Match3 mod ``modulus`` for sequences of up to ``seq_len`` tokens.

    ``mechanism="tensor"`` uses ``x1*x2*...*xt`` (``t >= 3``). Tokens are those of
    :class:`polyattn.tasks.Match3` with ``bos=True`` (``[B, n + 1, 1]``: BOS = 0, then the values);
    the model predicts a label for every position (BOS's label is ``IGNORE`` in the task).
    """
    if mechanism not in MATCH3_MECHANISMS:
        raise PolyAttentionError(
            f"match3_model: unsupported mechanism {mechanism!r}; choose one of "
            f"{', '.join(repr(x) for x in MATCH3_MECHANISMS)}"
        )
    M = _check_int("modulus", modulus, 3)
    t = _check_int("t", t, 3)
    seq_len = _check_int("seq_len", seq_len, 1)
    p = AttentionPolynomial([tuple(range(1, t + 1))])
    delta = 1.0 - math.cos(2.0 * math.pi / M)
    tau = 1.0 - delta / 2.0
    margin = min(delta / 2.0, tau)
    tuples = (seq_len + 1) ** (t - 1)
    lam = (math.log(tuples) + COMPOSITION_MARGIN) / margin
    CONST, RE, IM, BOS, REAL = 0, 1, 2, 3, 4
    D = 5
    table = torch.zeros(M, D, dtype=_DT)  # token 0 = BOS, 1..M-1 = values
    v = torch.arange(1, M, dtype=_DT)
    table[:, CONST] = 1.0
    table[1:, RE] = torch.cos(2 * math.pi * v / M)
    table[1:, IM] = torch.sin(2 * math.pi * v / M)
    table[0, BOS] = 1.0
    table[1:, REAL] = 1.0
    # Re(z1 z2 z3) = a1a2a3 - a1b2b3 - b1a2b3 - b1b2a3 over 4 coordinates, plus the BOS coordinate.
    w1 = torch.zeros(D, 5, dtype=_DT)
    w1[RE, 0], w1[RE, 1], w1[IM, 2], w1[IM, 3] = lam, -lam, -lam, -lam
    w1[CONST, 4] = lam * tau
    w2 = torch.zeros(D, 5, dtype=_DT)
    w2[RE, 0], w2[IM, 1], w2[RE, 2], w2[IM, 3], w2[BOS, 4] = 1, 1, 1, 1, 1
    w3 = torch.zeros(D, 5, dtype=_DT)
    w3[RE, 0], w3[IM, 1], w3[IM, 2], w3[RE, 3], w3[BOS, 4] = 1, 1, 1, 1, 1
    w_rest = torch.zeros(D, 5, dtype=_DT)
    w_rest[CONST, :] = 1.0  # all-ones query rows: x4..xt drop out of the product
    w_q = (w1, w2, w3, *([w_rest] * (t - 3)))
    u_real = torch.zeros(D, 1, dtype=_DT)
    u_real[REAL, 0] = 1.0
    u_ones = torch.zeros(D, 1, dtype=_DT)
    u_ones[CONST, 0] = 1.0
    w_v = (u_real, u_real, *([u_ones] * (t - 3)))
    readout = torch.tensor([[-1.0, 1.0]], dtype=_DT)
    bias = torch.tensor([0.5, -0.5], dtype=_DT)
    return OneLayerModel(
        p, (table,), w_q, w_v, readout, bias, "all",
        description=f"Match3 mod {M} with {p} (lambda = {lam:.3g}, seq_len <= {seq_len})",
    )
