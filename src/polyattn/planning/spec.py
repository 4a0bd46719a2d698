"""``ProblemSpec``: the shape-level description of one poly-attention call (pure Python).

Everything the planner needs and nothing it doesn't: no tensors, so plans are hashable and cached.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import PolyAttentionError
from ..polynomial import AttentionPolynomial, parse
from .capability import ITEMSIZE

__all__ = ["ProblemSpec", "CAUSAL_MODES", "normalize_causal"]

CAUSAL_MODES = (False, "tree", "prefix")


def normalize_causal(causal: object) -> str | bool:
    """``True`` means ``"prefix"`` (DESIGN §4); ``None``/``False`` means no causal mask."""
    if causal is None or causal is False:
        return False
    if causal is True:
        return "prefix"
    if causal in ("tree", "prefix"):
        return str(causal)
    raise PolyAttentionError(
        f"causal must be one of False, True, 'tree', 'prefix' (True means 'prefix'), got {causal!r}"
    )


@dataclass(frozen=True)
class ProblemSpec:
    """Sizes and structure of a call. ``seq_lens[j]`` is ``n`` of variable ``x(j+1)``."""

    polynomial: AttentionPolynomial
    seq_lens: tuple[int, ...]
    head_dim: int
    value_dim: int
    batch: int = 1
    causal: str | bool = False
    mask_pairs: frozenset[tuple[int, int]] = frozenset()
    has_values: tuple[bool, ...] = ()
    itemsize: int = 4
    device: str = "cpu"  # device type of the tensors (plain string: planning stays torch-free)
    dtype: str = "float32"  # compute dtype (float16/bfloat16 inputs compute in float32)
    #: per mask pair: "rows" (same for every row of the first variable, e.g. key padding, kept as
    #: one row), "cols" (same for every column) or "full" (a genuine n_a x n_b mask)
    mask_layouts: tuple[tuple[tuple[int, int], str], ...] = ()
    #: the tensors are wrapped by a torch.func transform (vmap): kernels must not branch on data
    functorch: bool = False

    @classmethod
    def build(
        cls,
        polynomial: str | AttentionPolynomial,
        *,
        seq_len: int | tuple[int, ...] | list[int],
        head_dim: int,
        value_dim: int | None = None,
        batch: int = 1,
        causal: object = False,
        mask_pairs: object = (),
        has_values: tuple[bool, ...] | None = None,
        itemsize: int = 4,
        device: str = "cpu",
        dtype: str | None = None,
        mask_layouts: tuple[tuple[tuple[int, int], str], ...] = (),
        functorch: bool = False,
    ) -> ProblemSpec:
        p = parse(polynomial)
        t = p.num_variables
        if isinstance(seq_len, int):
            lens = (seq_len,) * t
        else:
            lens = tuple(int(n) for n in seq_len)
            if len(lens) != t:
                raise PolyAttentionError(
                    f"seq_len has {len(lens)} entries but {p} has {t} variables"
                )
        if any(n < 0 for n in lens):
            raise PolyAttentionError(f"sequence lengths must be >= 0, got {lens}")
        if head_dim < 1:
            raise PolyAttentionError(f"head_dim must be >= 1, got {head_dim}")
        pairs = set()
        for pair in mask_pairs:  # type: ignore[attr-defined]
            a, b = pair
            if a == b or not (1 <= a <= t and 1 <= b <= t):
                raise PolyAttentionError(
                    f"mask key {pair!r}: expected a pair (a, b) of distinct variables in 1..{t}"
                )
            pairs.add((min(a, b), max(a, b)))
        if dtype is None:
            dtype = {8: "float64"}.get(int(itemsize), "float32")
        elif dtype not in ITEMSIZE:
            raise PolyAttentionError(f"dtype must be one of {', '.join(ITEMSIZE)}, got {dtype!r}")
        else:
            itemsize = ITEMSIZE[dtype]
        hv = tuple(has_values) if has_values is not None else (True,) * (t - 1)
        return cls(
            polynomial=p,
            seq_lens=lens,
            head_dim=int(head_dim),
            value_dim=int(value_dim if value_dim is not None else head_dim),
            batch=int(batch),
            causal=normalize_causal(causal),
            mask_pairs=frozenset(pairs),
            has_values=hv,
            itemsize=int(itemsize),
            device=str(device),
            dtype=dtype,
            mask_layouts=tuple(sorted(mask_layouts)),
            functorch=bool(functorch),
        )

    @property
    def num_variables(self) -> int:
        return self.polynomial.num_variables

    @property
    def empty(self) -> bool:
        """Some variable ranges over no tokens: nothing to compute (SDPA's convention: an empty
        output for ``n_1 = 0``, zeros when a key set is empty)."""
        return any(n == 0 for n in self.seq_lens)

    def mask_layout(self, a: int, b: int) -> str:
        """Layout of the mask on the canonical pair ``(a, b)``, ``a < b`` (``"full"`` by default)."""
        return dict(self.mask_layouts).get((a, b), "full")

    def causal_pairs(self) -> frozenset[tuple[int, int]]:
        """Pairs (a, b) with a constraint ``l_b <= l_a`` added by the causal mode (a is the parent)."""
        from .structure_ext import causal_constraints

        return causal_constraints(self)

    def factor_edges(self) -> tuple[tuple[int, ...], ...]:
        """Hyperedges the planner sees: monomials, mask pairs and causal pairs."""
        edges = set(self.polynomial.monomials)
        edges |= set(self.mask_pairs)
        edges |= {tuple(sorted(p)) for p in self.causal_pairs()}
        return tuple(sorted(edges, key=lambda e: (len(e), e)))
