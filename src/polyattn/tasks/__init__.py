"""Polyadic tasks (DESIGN §6): seeded, deterministic generators with exact labels.

``make_task(name, **params)`` builds one by name; see each module for the definition.
"""

from __future__ import annotations

from typing import Any

from ..errors import PolyAttentionError
from .base import IGNORE, Batch, Task, rng_for
from .binary_composition import BinaryComposition
from .composition import FunctionComposition
from .match3 import Match3
from .quotient_relation import QuotientRelationComposition
from .relation import RelationComposition

__all__ = [
    "Task", "Batch", "IGNORE", "rng_for", "FunctionComposition", "BinaryComposition", "Match3",
    "RelationComposition", "QuotientRelationComposition", "TASKS", "make_task",
]

TASKS: dict[str, type[Task]] = {
    "composition": FunctionComposition,
    "composition_binary": BinaryComposition,
    "match3": Match3,
    "relation": RelationComposition,
    "quotient_relation": QuotientRelationComposition,
}


def make_task(name: str, **params: Any) -> Task:
    """The task called ``name`` with constructor keyword ``params`` (unknown ones raise)."""
    if name not in TASKS:
        raise PolyAttentionError(f"unknown task {name!r}; choose one of {', '.join(sorted(TASKS))}")
    cls = TASKS[name]
    try:
        return cls(**params)
    except TypeError as e:
        raise PolyAttentionError(f"bad parameters for task {name!r}: {e}") from None
