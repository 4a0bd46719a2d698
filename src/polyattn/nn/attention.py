r"""``PolyAttention``: multi-head poly-attention as a ``torch.nn.Module`` (DESIGN §1.2, §4).

For an attention polynomial ``h`` over ``x1..xt`` and ``H`` heads of width ``d_h``::

    Q_j = ctx_j W_j^Q        (one projection per variable j = 1..t, [B, H, n_j, d_h])
    V_j = ctx_j W_j^V        (one projection per non-query variable j = 2..t, [B, H, n_j, d_v])
    O   = poly_attention(h, [Q_1..Q_t], [V_2..V_t])          ([B, H, n_1, d_v])
    y   = concat_heads(O) W^O                                 ([B, n_1, dim])

``ctx_j`` is the layer input ``x`` unless a per-variable context is given (cross-attention: the
variable then ranges over the context's tokens). There are no separate keys: the same ``Q_j``
row enters every monomial containing ``x_j``. With ``h = x1*x2`` this is exactly standard
multi-head attention (``Q_1`` = queries, ``Q_2`` = keys, ``V_2`` = values).

Cost per head is that of the planned poly-attention method (``n^2 d`` for trees, see
:func:`polyattn.plan`); the projections cost ``O(n · dim · H d_h · (2t - 1))``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ..errors import PolyAttentionError
from ..functional import key_padding_masks, poly_attention
from ..planning import plan
from ..planning.placement import check_layer_placement, root_placed_variables
from ..polynomial import AttentionPolynomial, parse
from .cache import DecodeCache
from .decode import attention_step
from .token_mask import check_token_mask

__all__ = ["PolyAttention"]


def _as_polynomial(polynomial: str | AttentionPolynomial) -> AttentionPolynomial:
    if isinstance(polynomial, AttentionPolynomial):
        return polynomial
    if isinstance(polynomial, str):
        return parse(polynomial)
    raise PolyAttentionError(
        f"polynomial must be a string such as 'x1*x2 + x2*x3' or an AttentionPolynomial, "
        f"got {type(polynomial).__name__}"
    )


class PolyAttention(nn.Module):
    """Multi-head poly-attention layer.

    Args:
        dim: model width (last dim of ``x``, and of the output).
        polynomial: attention polynomial, e.g. ``"x1*x2 + x2*x3"`` (tree-attention).
        heads: number of heads ``H``.
        dim_head: per-head query width ``d_h`` (default ``dim // heads``).
        value_dim_head: per-head value width ``d_v`` (default ``d_h``).
        causal: ``False``, ``"tree"``, ``"prefix"`` or ``True`` (= ``"prefix"``), passed to
            :func:`polyattn.poly_attention`.
        dropout: dropout on the layer output (after the output projection). Dropout on the
            attention weights is not offered: the weights over tuples are never materialised.
        context_dims: optional ``{variable: width}`` of contexts fed to variables in
            cross-attention (default: every variable reads a ``dim``-wide input).
        bias: whether the projections have a bias.
        scale: logit scale (default ``1/sqrt(d_h)``, matching SDPA).
        method: poly-attention method (``"auto"`` picks the fastest exact one).
        valueless: non-query variables declared value-less (their value is the all-ones vector,
            DESIGN §1.2), e.g. ``(2,)`` for ``x1*x2 + x2*x3`` so that only the leaf ``x3`` carries
            a value; they get no value projection.
        value_placement: ``"own"`` (the paper's formula), ``"root"`` (the authors' released code:
            x1's internal neighbours' values, e.g. x2's in ``x1*x2 + x2*x3``, are multiplied at the
            query position) or ``{j: "own" | "root"}``; see :func:`polyattn.poly_attention`. A
            root-placed variable must carry a value; its value is projected from the query's input
            ``x`` (read at the query position), its query row from its context (default ``x``).
    """

    def __init__(
        self,
        dim: int,
        polynomial: str | AttentionPolynomial,
        *,
        heads: int = 8,
        dim_head: int | None = None,
        value_dim_head: int | None = None,
        causal: bool | str = False,
        dropout: float = 0.0,
        context_dims: Mapping[int, int] | None = None,
        bias: bool = False,
        scale: float | None = None,
        method: str = "auto",
        valueless: Sequence[int] = (),
        value_placement: str | Mapping[int, str] = "own",
    ) -> None:
        super().__init__()
        if dim < 1 or heads < 1:
            raise PolyAttentionError(f"dim and heads must be positive, got dim={dim}, heads={heads}")
        if dim_head is None:
            if dim % heads:
                raise PolyAttentionError(
                    f"dim={dim} is not divisible by heads={heads}; pass dim_head= explicitly"
                )
            dim_head = dim // heads
        self.polynomial = _as_polynomial(polynomial)
        self.t = self.polynomial.num_variables
        self.dim, self.heads, self.dim_head = dim, heads, dim_head
        self.value_dim_head = value_dim_head or dim_head
        self.causal = causal
        self.scale = scale
        self.method = method
        # Fail at construction, not at the first forward: the method must exist and handle this
        # polynomial with this causal mode (masks given at forward time are checked then).
        plan(self.polynomial, seq_len=2, head_dim=dim_head, causal=causal, method=method)
        cdims = dict(context_dims or {})
        bad = [j for j in cdims if not (isinstance(j, int) and 1 <= j <= self.t)]
        if bad:
            raise PolyAttentionError(f"context_dims keys must be variables 1..{self.t}, got {bad}")
        self.context_dims = {j: int(cdims.get(j, dim)) for j in range(1, self.t + 1)}
        self.valueless = tuple(sorted({int(j) for j in valueless}))
        if any(not 2 <= j <= self.t for j in self.valueless):
            raise PolyAttentionError(
                f"valueless must list non-query variables 2..{self.t}, got {list(valueless)}"
            )
        if len(self.valueless) == self.t - 1:
            raise PolyAttentionError("at least one variable must carry a value; remove one from valueless")
        self._value_vars = [j for j in range(2, self.t + 1) if j not in self.valueless]
        self.value_placement = check_layer_placement(self.polynomial, value_placement, self.valueless)
        self._root_vars = root_placed_variables(self.polynomial, self.value_placement)
        inner_q = heads * dim_head
        inner_v = heads * self.value_dim_head
        # to_q[j-1] projects x_j; to_v[i] projects the i-th value-carrying variable (j >= 2)
        self.to_q = nn.ModuleList(
            nn.Linear(self.context_dims[j], inner_q, bias=bias) for j in range(1, self.t + 1)
        )
        self.to_v = nn.ModuleList(
            nn.Linear(self.context_dims[j], inner_v, bias=bias) for j in self._value_vars
        )
        self.to_out = nn.Linear(inner_v, dim, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def extra_repr(self) -> str:
        return (
            f"polynomial='{self.polynomial}', dim={self.dim}, heads={self.heads}, "
            f"dim_head={self.dim_head}, causal={self.causal!r}, method={self.method!r}"
            + (f", valueless={list(self.valueless)}" if self.valueless else "")
            + (f", value_placement={self.value_placement!r}" if self.value_placement != "own" else "")
        )

    def _split(self, y: torch.Tensor, width: int) -> torch.Tensor:
        b, n, _ = y.shape
        return y.view(b, n, self.heads, width).transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,
        contexts: Mapping[int, torch.Tensor] | Sequence[torch.Tensor | None] | None = None,
        mask: Mapping[tuple[int, int], torch.Tensor] | None = None,
        *,
        cache: DecodeCache | None = None,
        token_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x``: ``[B, N, dim]`` → ``[B, N, dim]``.

        ``contexts`` gives cross-attention inputs per variable, either ``{j: [B, n_j, dim_j]}``
        (1-based) or a length-``t`` sequence whose ``None`` entries mean ``x``. ``mask`` is a
        pair-mask dict as in :func:`polyattn.poly_attention` (True = allowed).
        ``token_mask``: ``[B, n]`` bool, True = real token, over the token set of the non-query
        variables (all of length ``n``); padded positions enter no tuple
        (:func:`polyattn.key_padding_masks`: one row-broadcast mask per variable, trees stay trees).

        Incremental decoding (causal tree-attention, :mod:`polyattn.nn.decode`): with
        ``cache=DecodeCache()`` the call appends ``x``'s positions to the cache and returns their
        outputs, equal to those rows of the full causal forward (``token_mask`` marks padding there too).
        """
        if cache is not None:
            return attention_step(self, x, cache, token_mask=token_mask, contexts=contexts, mask=mask)
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise PolyAttentionError(
                f"x must be [batch, seq, dim={self.dim}], got shape {tuple(x.shape)}"
            )
        ctx: dict[int, torch.Tensor] = {}
        if contexts is not None:
            if isinstance(contexts, Mapping):
                items: list[tuple[int, torch.Tensor | None]] = list(contexts.items())
            else:
                if len(contexts) != self.t:
                    raise PolyAttentionError(
                        f"contexts has {len(contexts)} entries but '{self.polynomial}' has "
                        f"{self.t} variables; pass one per variable (None = x) or a dict"
                    )
                items = [(j + 1, c) for j, c in enumerate(contexts)]
            for j, c in items:
                if c is None:
                    continue
                if not (isinstance(j, int) and 1 <= j <= self.t):
                    raise PolyAttentionError(f"contexts keys must be variables 1..{self.t}, got {j!r}")
                if c.dim() != 3 or c.shape[0] != x.shape[0] or c.shape[-1] != self.context_dims[j]:
                    raise PolyAttentionError(
                        f"context for x{j} must be [batch={x.shape[0]}, n_{j}, {self.context_dims[j]}], "
                        f"got shape {tuple(c.shape)}"
                    )
                ctx[j] = c
        inputs = [ctx.get(j, x) for j in range(1, self.t + 1)]
        queries = [self._split(self.to_q[j](inp), self.dim_head) for j, inp in enumerate(inputs)]
        # a root-placed value is read at the query position: projected from x1's input
        src = {j: inputs[0] if j in self._root_vars else inputs[j - 1] for j in self._value_vars}
        proj = {j: self._split(lin(src[j]), self.value_dim_head) for j, lin in zip(self._value_vars, self.to_v)}
        values = [proj.get(j) for j in range(2, self.t + 1)]
        if token_mask is not None:
            lens = {inputs[j - 1].shape[1] for j in range(2, self.t + 1)}
            if len(lens) > 1:
                raise PolyAttentionError(
                    f"token_mask needs one length for the non-query variables' tokens, got lengths {sorted(lens)}"
                )
            check_token_mask(token_mask, x.shape[0], lens.pop() if lens else x.shape[1], "n")
            pad = key_padding_masks(self.polynomial, token_mask, lengths=[inp.shape[1] for inp in inputs])
            merged = dict(mask or {})
            for k, m in pad.items():
                merged[k] = merged[k] & m if k in merged else m
            mask = merged
        out = poly_attention(
            self.polynomial,
            queries,
            values,
            scale=self.scale,
            causal=self.causal,
            mask=mask,
            method=self.method,
            value_placement=self.value_placement,
        )  # [B, H, n_1, d_v]
        b, _, n1, _ = out.shape
        out = out.transpose(1, 2).reshape(b, n1, self.heads * self.value_dim_head)
        return self.dropout(self.to_out(out))
