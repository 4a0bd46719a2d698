"""Gradients that cannot be differentiated again, refused with a clear error.

Fused kernels (the flash tree edge, the fused cubic kernels) compute their gradients without a
graph. Under ``create_graph=True`` those gradients would silently be constants; instead they are
passed through an identity node whose backward raises :class:`~polyattn.errors.PolyAttentionError`
with the kernel's own message (which methods do support double backward).
"""

from __future__ import annotations

import torch

from ..errors import PolyAttentionError

__all__ = ["mark_no_double_backward"]


class _NoDoubleBackward(torch.autograd.Function):
    """Identity on ``xs``; its backward raises ``message``."""

    generate_vmap_rule = True

    @staticmethod
    def forward(message: str, anchor: torch.Tensor, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # ``anchor`` (an input that requires grad) makes the outputs differentiable, so that a
        # second differentiation reaches this backward and its clear error
        return tuple(x.view_as(x) for x in xs)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # noqa: ANN001
        ctx.message = inputs[0]

    @staticmethod
    def backward(ctx, *gs: torch.Tensor):  # noqa: ANN001, ANN205
        raise PolyAttentionError(ctx.message)


def mark_no_double_backward(
    grads: tuple[torch.Tensor | None, ...], anchor: torch.Tensor, message: str
) -> tuple[torch.Tensor | None, ...]:
    """``grads`` unchanged, except under ``create_graph=True`` (grad mode on in a backward), where
    they are connected to ``anchor`` through a node whose backward raises ``message``."""
    if not torch.is_grad_enabled() or not anchor.requires_grad:
        return grads
    marked = iter(_NoDoubleBackward.apply(message, anchor, *(x for x in grads if x is not None)))
    return tuple(next(marked) if x is not None else None for x in grads)
