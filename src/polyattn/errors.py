"""Exception hierarchy. Every error polyattn raises on purpose is a :class:`PolyAttentionError`.

This module imports nothing from the rest of the package so that every layer may use it.
"""

from __future__ import annotations

__all__ = [
    "PolyAttentionError",
    "PolynomialSyntaxError",
    "MethodError",
    "ReferenceSizeError",
]


class PolyAttentionError(ValueError):
    """Base class: the input or the requested option is not valid; the message says how to fix it."""


class PolynomialSyntaxError(PolyAttentionError):
    """A polynomial spec could not be parsed. The message shows the spec with a caret under the column."""

    def __init__(self, message: str, spec: str | None = None, column: int = 0, width: int = 1) -> None:
        self.spec = spec
        self.column = column
        self.width = max(1, width)
        self.reason = message
        if spec is not None:
            message = f"{message}\n  {spec}\n  {' ' * column}{'^' * self.width}"
        super().__init__(message)


class MethodError(PolyAttentionError):
    """An explicitly requested method cannot handle this input (polyattn never silently falls back)."""


class ReferenceSizeError(PolyAttentionError):
    """The brute-force reference was asked to enumerate more tuples than its documented limit."""
