"""Small helpers shared by the kernels: einsum letters, broadcasting factors to a joint scope."""

from __future__ import annotations

import torch

__all__ = ["letters", "expand_to", "NEG_INF", "safe_log", "compact_rows", "under_functorch"]

NEG_INF = float("-inf")
_LETTERS = "abcdefghijklmnopqrstuvwxy"  # 'z' is reserved for the value channel


def letters(vars_: tuple[int, ...]) -> str:
    return "".join(_LETTERS[v - 1] for v in vars_)


def expand_to(x: torch.Tensor, scope: tuple[int, ...], target: tuple[int, ...], trailing: int = 0) -> torch.Tensor:
    """View ``x`` (dims ``[..., n_scope..., trailing...]``) with singleton dims for ``target``'s other vars.

    Both scopes are sorted; the result broadcasts against tensors laid out over ``target``.
    """
    nb = x.dim() - len(scope) - trailing
    shape = list(x.shape[:nb])
    it = iter(x.shape[nb : nb + len(scope)])
    for v in target:
        shape.append(next(it) if v in scope else 1)
    shape += list(x.shape[x.dim() - trailing :]) if trailing else []
    return x.reshape(shape)


def safe_log(x: torch.Tensor) -> torch.Tensor:
    """log that maps 0 to -inf without a NaN gradient path (inputs are non-negative and detached)."""
    return torch.where(x > 0, x, torch.ones_like(x)).log().masked_fill(x <= 0, NEG_INF)


def compact_rows(m: torch.Tensor) -> torch.Tensor:
    """A mask ``[..., n_a, n_b]`` that is the same for every row (a stride-0 view, e.g. key padding)
    as ``[..., 1, n_b]``: what is computed from it stays ``O(n_b)`` instead of ``n_a x n_b``."""
    return m[..., :1, :] if m.shape[-2] > 1 and m.stride(-2) == 0 else m


def under_functorch() -> bool:
    """Whether a torch.func transform (vmap, grad, jacrev, ...) is active on this thread: its
    tensors cannot be branched on (``bool(t.any())`` fails under vmap, also inside ``grad``) and,
    the interpreter stack being thread-local, must not cross to another thread."""
    return torch._C._functorch.maybe_current_level() is not None
