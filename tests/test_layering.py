"""Imports only flow down the architecture (DEVELOPERS.md / DESIGN §3), and modules form no loops.

The checker resolves every form an import can take inside the package: relative imports at any
level (``from .. import x``, ``from ..planning import Plan``), absolute ones (``import polyattn``,
``from polyattn import poly_attention``, ``import polyattn.ops.tree``), and string imports
(``importlib.import_module("polyattn.x")``, ``__import__``). ``from pkg import name`` counts as an
import of ``pkg/__init__`` unless ``name`` is a submodule. Module-level imports must form no cycle
(imports inside functions and ``if TYPE_CHECKING:`` blocks are deferred and may point anywhere the
layering allows). A self-test runs the checker on small synthetic packages with each violation.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "polyattn"

# Lower rank may be imported by higher rank; equal ranks may not import each other
# unless they are the same unit.
RANK = {
    "errors": 0,
    "atomicio": 0,
    "timing": 0,
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
NO_TORCH = {"errors", "atomicio", "timing", "polynomial", "planning"}


def _modname(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)  # "" is the package root


def _is_package(root: Path, mod: str) -> bool:
    return (root.joinpath(*mod.split(".")) / "__init__.py").exists() if mod else True


def _exists(root: Path, mod: str) -> bool:
    if not mod:
        return True
    p = root.joinpath(*mod.split("."))
    return p.with_suffix(".py").exists() or (p / "__init__.py").exists()


def _unit(mod: str) -> str:
    return mod.split(".")[0] if mod else "__init__"


def _deferred_nodes(tree: ast.Module) -> set[int]:
    """ids of import nodes inside functions or ``if TYPE_CHECKING:`` blocks."""
    out: set[int] = set()
    for node in ast.walk(tree):
        deferred = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        if isinstance(node, ast.If):
            t = node.test
            deferred = (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
                isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")
        if deferred:
            out |= {id(n) for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom, ast.Call))}
    return out


def module_imports(root: Path, path: Path, pkg: str = "polyattn") -> list[tuple[str, bool]]:
    """``(target module inside the package, or "<torch>", deferred?)`` for every import in ``path``."""
    me = _modname(root, path)
    here = me if path.name == "__init__.py" else ".".join(me.split(".")[:-1])
    tree = ast.parse(path.read_text())
    deferred = _deferred_nodes(tree)
    out: list[tuple[str, bool]] = []

    def absolute(name: str) -> str | None:
        if name == pkg:
            return ""
        if name.startswith(pkg + "."):
            return name[len(pkg) + 1:]
        return None

    def add_from(base: str, names: list[str], late: bool) -> None:
        for n in names:
            sub = f"{base}.{n}" if base else n
            if n != "*" and _exists(root, sub):
                out.append((sub, late))
            else:
                out.append((base, late))

    for node in ast.walk(tree):
        late = id(node) in deferred
        if isinstance(node, ast.ImportFrom):
            names = [a.name for a in node.names]
            if node.level:
                parts = here.split(".") if here else []
                up = node.level - 1
                parts = parts[: len(parts) - up] if up else parts
                base = ".".join(parts + ([node.module] if node.module else []))
                add_from(base, names, late)
            elif node.module:
                rel = absolute(node.module)
                if rel is not None:
                    add_from(rel, names, late)
                elif node.module == "torch" or node.module.startswith("torch."):
                    out.append(("<torch>", late))
        elif isinstance(node, ast.Import):
            for a in node.names:
                rel = absolute(a.name)
                if rel is not None:
                    out.append((rel, late))
                elif a.name == "torch" or a.name.startswith("torch."):
                    out.append(("<torch>", late))
        elif isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            if name in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
                arg = node.args[0].value
                if isinstance(arg, str):
                    rel = absolute(arg)
                    if rel is not None:
                        out.append((rel, late))
                    elif arg == "torch" or arg.startswith("torch."):
                        out.append(("<torch>", late))
    return out


def check(root: Path, rank: dict[str, int] = RANK, no_torch: set[str] = NO_TORCH, pkg: str = "polyattn") -> list[str]:
    """Every layering violation and module-level import cycle under ``root`` (the package dir)."""
    bad: list[str] = []
    graph: dict[str, set[str]] = {}
    for path in sorted(root.rglob("*.py")):
        me = _modname(root, path)
        unit = _unit(me) if path.name != "__init__.py" or me else "__init__"
        if unit not in rank:
            bad.append(f"{path}: unit {unit!r} has no rank in the layering test")
            continue
        graph.setdefault(me, set())
        for target, late in module_imports(root, path, pkg):
            if target == "<torch>":
                if unit in no_torch:
                    bad.append(f"{path}: imports torch but {unit} must stay torch-free")
                continue
            if not late and target != me:
                graph[me].add(target)
            tunit = _unit(target)
            if tunit == unit or tunit not in rank:
                continue
            if rank[tunit] >= rank[unit]:
                bad.append(f"{path}: {unit} (rank {rank[unit]}) imports {target or pkg} ({tunit}, rank {rank[tunit]})")
    bad += [f"import cycle: {' -> '.join(c)}" for c in _cycles(graph)]
    return bad


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), as sorted lists."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


#: TEMPORARY (lead, issue 13): bench/kernels.py still does `import polyattn`; it is being rewritten on
#: another branch and this list must be empty after that merge.


def test_imports_flow_one_way():
    bad = check(SRC)
    assert not bad, "\n".join(bad)


# ------------------------------------------------------------------------------- self-test
def _package(tmp: Path, files: dict[str, str]) -> Path:
    root = tmp / "polyattn"
    for name, text in {"__init__.py": "", **files}.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    for d in {p.parent for p in root.rglob("*.py")}:
        (d / "__init__.py").touch()
    return root


def test_checker_catches_each_kind_of_violation(tmp_path):
    cases = {
        "package root, absolute": {"polynomial/a.py": "import polyattn\n"},
        "package root, from": {"planning/a.py": "from polyattn import poly_attention\n"},
        "package root, relative": {"ops/a.py": "from .. import something\n"},
        "upward relative": {"planning/a.py": "from ..ops import run\n"},
        "upward absolute": {"planning/a.py": "import polyattn.ops.tree\n"},
        "importlib": {"ops/a.py": "import importlib\nimportlib.import_module('polyattn.nn')\n"},
        "torch in planning": {"planning/a.py": "import torch\n"},
        "unranked unit": {"mystery.py": "x = 1\n"},
        "cycle": {"ops/a.py": "from . import b\n", "ops/b.py": "from .a import x\n"},
    }
    for i, (what, files) in enumerate(cases.items()):
        root = _package(tmp_path / str(i), files)
        assert check(root), what
    # allowed: downward imports, submodule imports, deferred imports inside functions
    ok = _package(tmp_path / "ok", {
        "errors.py": "",
        "ops/a.py": "from ..planning import p\nfrom . import b\nimport torch\n",
        "ops/b.py": "def f():\n    from .a import x\n",
        "planning/p.py": "from ..errors import E\n",
    })
    assert check(ok) == []
