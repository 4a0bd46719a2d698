"""Training I/O: checkpoints (``weights_only=True`` on load), JSON and JSONL, all written atomically
through :mod:`polyattn.atomicio` so a reader (or a run killed with SIGKILL) never sees a
half-written file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..atomicio import atomic_write, atomic_write_bytes, atomic_write_json, atomic_write_jsonl

__all__ = ["atomic_write_bytes", "atomic_write_json", "atomic_write_jsonl", "save_checkpoint",
           "load_checkpoint", "append_jsonl", "read_jsonl"]


def append_jsonl(path: str | Path, row: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    p = Path(path)
    if not p.exists():
        return out
    for line in p.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a torn last line from a killed process
    return out


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """``torch.save`` to a temp file then atomic rename."""
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load with ``weights_only=True`` (tensors and plain containers only; never arbitrary code)."""
    return torch.load(path, map_location="cpu", weights_only=True)
