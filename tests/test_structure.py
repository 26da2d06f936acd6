"""The package's shape: no import cycles, at most eight layers, and no module reaching into another's
private names.

Every import counts, at the top of a module or inside a function (a lazy import still makes the
module depend on what it imports); only imports under `if TYPE_CHECKING:`, which never run, are left
out of the layers. A module's layer is one more than the deepest module it imports; a module that
imports nothing of the package is layer 1."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "musicguide"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def modules() -> dict[str, tuple[Path, ast.Module]]:
    return {module_name(p): (p, ast.parse(p.read_text())) for p in PACKAGE.rglob("*.py")}


def type_checking_only(tree: ast.Module) -> set[ast.AST]:
    """The import statements under `if TYPE_CHECKING:`: annotations only, never run."""
    return {node for block in ast.walk(tree)
            if isinstance(block, ast.If) and getattr(block.test, "id", getattr(block.test, "attr", "")) == "TYPE_CHECKING"
            for statement in block.body for node in ast.walk(statement)}


def imports_of(name: str, path: Path, tree: ast.Module, known: set[str], run_only: bool = False) -> set[str]:
    """The package's modules that `name` imports, at the top or inside a function (lazily); with
    `run_only`, without the imports under `if TYPE_CHECKING:`."""
    found = set()
    skipped = type_checking_only(tree) if run_only else set()
    for node in ast.walk(tree):
        if node in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom):
            target = resolve(name, path.name == "__init__.py", node)
            for alias in node.names:
                full = f"{target}.{alias.name}"
                found.add(full if full in known else target)
    if path.name == "__init__.py":
        found |= named_modules(tree, known)
    return {m for m in found if m in known and m != name}


def named_modules(tree: ast.Module, known: set[str]) -> set[str]:
    """The package's modules a package `__init__` names as strings (`musicguide.lazy_exports`
    imports them on first use): edges of the graph like any import."""
    return {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and node.value in known}


def test_the_import_graph_has_no_cycles():
    found = modules()
    known = set(found)
    graph = {name: imports_of(name, path, tree, known) - {"musicguide"} for name, (path, tree) in found.items()}
    cycles, state = [], {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(trail[trail.index(nxt):] + [nxt] if nxt in trail else [node, nxt])
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


MAX_LAYERS = 8


def deepest_chain(graph: dict[str, set[str]]) -> dict[str, list[str]]:
    """For each module, its longest import chain down to a module that imports nothing."""
    chains: dict[str, list[str]] = {}

    def chain(node: str) -> list[str]:
        if node not in chains:
            below = [chain(nxt) for nxt in sorted(graph[node])]
            chains[node] = [node] + max(below, key=len, default=[])
        return chains[node]

    for node in sorted(graph):
        chain(node)
    return chains


def test_the_package_has_at_most_eight_layers():
    found = modules()
    known = set(found)
    graph = {name: imports_of(name, path, tree, known, run_only=True) - {"musicguide"}
             for name, (path, tree) in found.items()}
    too_deep = sorted((" -> ".join(c) for c in deepest_chain(graph).values() if len(c) > MAX_LAYERS),
                      key=lambda c: -c.count("->"))
    assert too_deep == [], f"{len(too_deep)} modules deeper than {MAX_LAYERS} layers, e.g. {too_deep[0]}"


def test_a_package_imports_its_modules_only_when_asked():
    """Python imports a package before any module in it: an `__init__` that imported its modules at
    the top would make each of them depend on all the others (and `--help` wait for torch)."""
    eager = []
    for name, (path, tree) in modules().items():
        if path.name == "__init__.py":
            eager += [f"{name}: line {node.lineno}" for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))
                      and not (isinstance(node, ast.ImportFrom) and node.module in ("importlib", "musicguide"))]
    assert eager == []


def test_no_module_imports_another_modules_private_names():
    found = modules()
    known = set(found)
    reaching = []
    for name, (path, tree) in found.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and resolve(name, path.name == "__init__.py", node) in known:
                reaching += [f"{name}: from {node.module} import {a.name}" for a in node.names
                             if a.name.startswith("_") and not a.name.startswith("__")]
    assert reaching == []
