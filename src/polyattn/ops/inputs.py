"""Validate and normalise the tensors of one call into a :class:`Problem`.

Every error names the argument and says what was expected (DESIGN §4): wrong arity, mismatched
head or batch dims, wrong mask shapes, non-float inputs, mixed devices.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from ..errors import PolyAttentionError
from ..planning import ProblemSpec, normalize_causal
from ..polynomial import AttentionPolynomial, parse

__all__ = ["Problem", "prepare", "compute_dtype_for", "check_scale"]


def compute_dtype_for(dtype: torch.dtype) -> torch.dtype:
    """float16/bfloat16 accumulate in float32; float32 and float64 stay as they are."""
    if dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    return dtype


@dataclass
class Problem:
    """Normalised inputs. ``q[j]``/``v[j]`` are indexed by variable (``q[1]`` is x1; ``q[0]`` unused)."""

    spec: ProblemSpec
    q: list[torch.Tensor | None]
    v: list[torch.Tensor | None]
    masks: dict[tuple[int, int], torch.Tensor]  # canonical (a<b) -> bool [..., n_a, n_b]
    causal: frozenset[tuple[int, int]]  # (parent, child): l_child <= l_parent
    scale: float
    batch_shape: torch.Size
    out_dtype: torch.dtype
    dtype: torch.dtype
    device: torch.device

    @property
    def t(self) -> int:
        return self.spec.num_variables

    def n(self, var: int) -> int:
        return self.spec.seq_lens[var - 1]

    @property
    def dv(self) -> int:
        return self.spec.value_dim

    def causal_mask(self, a: int, b: int) -> torch.Tensor | None:
        """Boolean [n_a, n_b] for the causal constraint between a and b (None when there is none)."""
        if (a, b) in self.causal:  # l_b <= l_a
            return torch.ones(self.n(a), self.n(b), dtype=torch.bool, device=self.device).tril()
        if (b, a) in self.causal:  # l_a <= l_b
            return torch.ones(self.n(a), self.n(b), dtype=torch.bool, device=self.device).triu()
        return None

    def pair_mask(self, a: int, b: int) -> torch.Tensor | None:
        """All boolean constraints on the pair (a, b) as one mask [..., n_a, n_b], or None."""
        key = (min(a, b), max(a, b))
        m = self.masks.get(key)
        if m is not None and a > b:
            m = m.transpose(-1, -2)
        c = self.causal_mask(a, b)
        if c is None:
            return m
        return c if m is None else (m & c)

    def constrained_pairs(self) -> set[tuple[int, int]]:
        out = set(self.masks)
        out |= {(min(a, b), max(a, b)) for a, b in self.causal}
        return out


def _shape(x: torch.Tensor) -> str:
    return "[" + ", ".join(map(str, x.shape)) + "]"


def _is_functorch(x: torch.Tensor) -> bool:
    """Whether ``x`` is wrapped by a torch.func transform (vmap's batched tensors)."""
    return bool(torch._C._functorch.is_batchedtensor(x))


def _check_lists(p: AttentionPolynomial, queries: object, values: object) -> tuple[Sequence[torch.Tensor], Sequence[torch.Tensor | None]]:
    t = p.num_variables
    if isinstance(queries, torch.Tensor) or not isinstance(queries, Sequence):
        raise PolyAttentionError(
            f"queries: expected a list of {t} tensors [..., n_j, d] (one per variable x1..x{t} of {p}), "
            f"got {type(queries).__name__}"
        )
    if len(queries) != t:
        raise PolyAttentionError(
            f"queries: expected {t} tensors (one per variable x1..x{t} of {p}), got {len(queries)}"
        )
    if values is None:
        values = [None for _ in range(t - 1)]
    if isinstance(values, torch.Tensor) or not isinstance(values, Sequence):
        raise PolyAttentionError(
            f"values: expected a list of {t - 1} entries (x2..x{t}), each a tensor [..., n_j, dv] or None"
        )
    if len(values) != t - 1:
        raise PolyAttentionError(
            f"values: expected {t - 1} entries (one for each of x2..x{t}; x1 has no value), got {len(values)}"
        )
    return queries, values


def _check_queries(queries: Sequence[torch.Tensor]) -> int:
    """Validate the queries; returns the head dim ``d``."""
    for j, q in enumerate(queries, 1):
        if not isinstance(q, torch.Tensor):
            raise PolyAttentionError(f"queries[{j - 1}] (x{j}): expected a tensor, got {type(q).__name__}")
        if q.dim() < 2:
            raise PolyAttentionError(
                f"queries[{j - 1}] (x{j}): expected shape [..., n, d] with at least 2 dims, got {_shape(q)}"
            )
        if not q.is_floating_point():
            raise PolyAttentionError(f"queries[{j - 1}] (x{j}): expected a floating tensor, got {q.dtype}")
        if q.shape[-1] < 1:
            raise PolyAttentionError(f"queries[{j - 1}] (x{j}): empty head dim, shape {_shape(q)}")
    d = queries[0].shape[-1]
    for j, q in enumerate(queries, 1):
        if q.shape[-1] != d:
            raise PolyAttentionError(
                f"queries[{j - 1}] (x{j}): head dim {q.shape[-1]} does not match queries[0]'s {d}; "
                "every variable's projection must have the same head dim d"
            )
    return int(d)


def _check_values(queries: Sequence[torch.Tensor], values: Sequence[torch.Tensor | None]) -> int | None:
    """Validate the values; returns the common value dim (``None`` when every variable is value-less)."""
    dv: int | None = None
    for j, v in enumerate(values, 2):
        if v is None:
            continue
        if not isinstance(v, torch.Tensor):
            raise PolyAttentionError(f"values[{j - 2}] (x{j}): expected a tensor or None, got {type(v).__name__}")
        if v.dim() < 2 or not v.is_floating_point():
            raise PolyAttentionError(
                f"values[{j - 2}] (x{j}): expected a floating tensor [..., n, dv], got {v.dtype} {_shape(v)}"
            )
        if v.shape[-2] != queries[j - 1].shape[-2]:
            raise PolyAttentionError(
                f"values[{j - 2}] (x{j}): has {v.shape[-2]} rows but queries[{j - 1}] has "
                f"n={queries[j - 1].shape[-2]}; a variable's value and query must cover the same tokens"
            )
        if dv is None:
            dv = v.shape[-1]
        elif v.shape[-1] != dv:
            raise PolyAttentionError(
                f"values[{j - 2}] (x{j}): value dim {v.shape[-1]} differs from the other values' {dv}"
            )
    return dv


def _check_masks(
    mask: object, queries: Sequence[torch.Tensor], t: int, device: torch.device
) -> dict[tuple[int, int], torch.Tensor]:
    """Canonical ``(a < b) -> bool [..., n_a, n_b]``; several masks on one pair are and-ed."""
    masks: dict[tuple[int, int], torch.Tensor] = {}
    if mask is None:
        return masks
    if not isinstance(mask, Mapping):
        raise PolyAttentionError(
            "mask: expected a dict {(a, b): bool tensor [..., n_a, n_b]} with 1-based variables"
        )
    for key, m in mask.items():
        if (
            not isinstance(key, tuple) or len(key) != 2
            or not all(isinstance(k, int) and not isinstance(k, bool) for k in key)
            or key[0] == key[1] or not (1 <= key[0] <= t and 1 <= key[1] <= t)
        ):
            raise PolyAttentionError(
                f"mask key {key!r}: expected a pair (a, b) of distinct 1-based variables in 1..{t}"
            )
        a, b = key
        if not isinstance(m, torch.Tensor) or m.dtype != torch.bool:
            raise PolyAttentionError(
                f"mask[{key}]: expected a bool tensor (True = the pair may attend), got "
                f"{getattr(m, 'dtype', type(m).__name__)}"
            )
        na, nb = queries[a - 1].shape[-2], queries[b - 1].shape[-2]
        if m.dim() < 2 or tuple(m.shape[-2:]) != (na, nb):
            raise PolyAttentionError(
                f"mask[{key}]: expected shape [..., {na}, {nb}] (n_x{a}, n_x{b}), got {_shape(m)}"
            )
        if m.device != device:
            raise PolyAttentionError(f"mask[{key}] is on {m.device}, inputs are on {device}")
        if a > b:
            a, b, m = b, a, m.transpose(-1, -2)
        masks[(a, b)] = masks[(a, b)] & m if (a, b) in masks else m
    return masks


def mask_layout(m: torch.Tensor) -> str:
    """``"rows"``: the same for every row (a key mask, e.g. padding: stride 0 or size 1 on dim -2);
    ``"cols"``: the same for every column; ``"full"``: a genuine ``n_a x n_b`` mask."""
    if m.shape[-2] == 1 or m.stride(-2) == 0:
        return "rows"
    if m.shape[-1] == 1 or m.stride(-1) == 0:
        return "cols"
    return "full"


def check_scale(scale: object, d: int) -> float:
    """The logit scale: ``scale`` validated, or the default ``1/sqrt(d)`` (SDPA's)."""
    if scale is None:
        return 1.0 / math.sqrt(d)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise PolyAttentionError(f"scale: expected a finite float or None (1/sqrt(d)), got {scale!r}")
    return float(scale)


def prepare(
    polynomial: str | AttentionPolynomial,
    queries: Sequence[torch.Tensor],
    values: Sequence[torch.Tensor | None] | None,
    *,
    scale: float | None = None,
    causal: object = False,
    mask: Mapping[tuple[int, int], torch.Tensor] | None = None,
) -> Problem:
    """Validate one call's inputs and derive its torch-free :class:`ProblemSpec` (shapes, dtype,
    device type, mask pairs and layouts, causal mode, functorch transform)."""
    p = parse(polynomial)
    t = p.num_variables
    queries, vals = _check_lists(p, queries, values)
    d = _check_queries(queries)
    dv = _check_values(queries, vals)
    device = queries[0].device
    tensors = [q for q in queries] + [v for v in vals if v is not None]
    for x in tensors:
        if x.device != device:
            raise PolyAttentionError(
                f"all queries and values must be on one device; found {device} and {x.device}"
            )
    out_dtype = queries[0].dtype
    for x in tensors[1:]:
        out_dtype = torch.promote_types(out_dtype, x.dtype)
    dtype = compute_dtype_for(out_dtype)
    masks = _check_masks(mask, queries, t, device)
    # Batch (leading) dims broadcast like SDPA.
    shapes = [tuple(x.shape[:-2]) for x in tensors] + [tuple(m.shape[:-2]) for m in masks.values()]
    try:
        batch_shape = torch.broadcast_shapes(*shapes)
    except RuntimeError:
        desc = ", ".join(f"{list(s)}" for s in shapes)
        raise PolyAttentionError(
            f"batch dims of queries/values/masks do not broadcast: leading shapes {desc}"
        ) from None
    batch = 1
    for s in batch_shape:
        batch *= s
    spec = ProblemSpec.build(
        p,
        seq_len=tuple(q.shape[-2] for q in queries),
        head_dim=d,
        value_dim=dv if dv is not None else 1,
        batch=batch,
        causal=normalize_causal(causal),
        mask_pairs=tuple(masks),
        mask_layouts=tuple(sorted((k, mask_layout(m)) for k, m in masks.items())),
        has_values=tuple(v is not None for v in vals),
        itemsize=torch.empty((), dtype=dtype).element_size(),
        device=device.type,
        dtype=str(dtype).removeprefix("torch."),
        functorch=any(_is_functorch(x) for x in tensors),
    )
    q_list: list[torch.Tensor | None] = [None]
    q_list += [q.to(dtype) for q in queries]
    v_list: list[torch.Tensor | None] = [None, None]
    v_list += [(v.to(dtype) if v is not None else None) for v in vals]
    return Problem(
        spec=spec,
        q=q_list,
        v=v_list,
        masks=masks,
        causal=spec.causal_pairs(),
        scale=check_scale(scale, d),
        batch_shape=batch_shape,
        out_dtype=out_dtype,
        dtype=dtype,
        device=device,
    )
