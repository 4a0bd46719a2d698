"""Execution trace: kernels report what they ran, so tests can hold them to the plan.

Kernels call :func:`emit` at each planned unit of work (an edge, an elimination step on a chunk,
a fused-kernel chunk). Outside :func:`record` this is one global read, so it costs nothing
measurable. ``tests/test_plan_execution.py`` records the events over the property corpus and
asserts that they are exactly the steps and chunks that ``print(plan)`` shows.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["record", "emit", "Event"]

Event = tuple[str, dict[str, Any]]
_SINK: list[Event] | None = None


@contextmanager
def record() -> Iterator[list[Event]]:
    """Collect the events of the kernels run inside the block (not thread-safe; tests only)."""
    global _SINK
    prev, _SINK = _SINK, []
    try:
        yield _SINK
    finally:
        _SINK = prev


def emit(event: str, **info: Any) -> None:
    if _SINK is not None:
        _SINK.append((event, info))
