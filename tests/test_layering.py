"""Imports only flow down the architecture (DEVELOPERS.md / DESIGN §3)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "polyattn"

# Lower rank may be imported by higher rank; equal ranks may not import each other
# unless they are the same package.
RANK = {
    "errors": 0,
    "polynomial": 1,
    "planning": 2,
    "ops": 3,
    "functional": 4,
    "nn": 5,
    "theory": 6,
    "constructions": 6,
    "tasks": 1.5,  # numpy-level task generation, labels and encodings (issue 13)
    "train": 7,
    "bench": 7,
    "demo": 8,
    "cli": 9,
    "__init__": 10,
    "__main__": 10,
}
NO_TORCH = {"errors", "polynomial", "planning"}


def _unit(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py")


def _imports(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(path.relative_to(SRC).parts[:-1])
                up = node.level - 1
                base = base[: len(base) - up] if up else base
                mod = ".".join(base + ([node.module] if node.module else []))
                if not mod and node.names:
                    for alias in node.names:
                        yield alias.name
                    continue
                yield mod
            elif node.module:
                if node.module.startswith("polyattn."):
                    yield node.module.removeprefix("polyattn.")
                elif node.module in ("torch",) or node.module.startswith("torch."):
                    yield "<torch>"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("polyattn."):
                    yield alias.name.removeprefix("polyattn.")
                elif alias.name == "torch" or alias.name.startswith("torch."):
                    yield "<torch>"


def test_imports_flow_one_way():
    bad = []
    for path in SRC.rglob("*.py"):
        unit = _unit(path)
        if unit not in RANK:
            bad.append(f"{path}: unit {unit!r} has no rank in the layering test")
            continue
        for mod in _imports(path):
            if mod == "<torch>":
                if unit in NO_TORCH:
                    bad.append(f"{path}: imports torch but {unit} must stay torch-free")
                continue
            target = mod.split(".")[0]
            if not target or target == unit:
                continue
            if target not in RANK:
                continue
            if RANK[target] >= RANK[unit]:
                bad.append(f"{path}: {unit} (rank {RANK[unit]}) imports {target} (rank {RANK[target]})")
    assert not bad, "\n".join(bad)
