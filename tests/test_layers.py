"""The house's import rules (design.md "The house"): imports only go down the layers, and no package has
an import cycle inside it, counting imports made inside functions (a lazy import that dodges a cycle is
still a cycle). `typing.TYPE_CHECKING` blocks are not imports at run time and are left out."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("merging", "store", "zoo", "evaluation", "jobs", "ui")
# What each package may import besides itself; mergelab_home (the workspace's one definition) is a leaf
# every layer may use.
ALLOWED = {
    "merging": {"mergelab_home"},
    "store": {"mergelab_home"},
    "zoo": {"mergelab_home"},
    "evaluation": {"merging", "mergelab_home"},
    "jobs": {"store", "evaluation", "merging", "zoo", "mergelab_home"},
    "ui": {"jobs", "store", "evaluation", "merging", "zoo", "mergelab_home"},
}
# A package's CLI (`python -m pkg`, its __main__) is an entry point like the app: any lower package.
ENTRY_POINT_MAY_USE = {"merging", "store", "zoo", "evaluation", "jobs", "mergelab_home"}
# Cycles still being taken apart by their owner (the worker-process runner, in flight); remove the entry
# when it is gone, and never add one.
KNOWN_CYCLES: list[set[str]] = []


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for f in (ROOT / pkg).rglob("*.py"):
            name = ".".join(f.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            out[name] = f
    out["mergelab_home"] = ROOT / "mergelab_home.py"
    return out


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for inner in node.body:
                lines.update(range(inner.lineno, (inner.end_lineno or inner.lineno) + 1))
    return lines


def _imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    def known(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for mod, path in mods.items():
        tree = ast.parse(path.read_text())
        skip = _type_checking_lines(tree)
        targets: set[str] = set()
        for node in ast.walk(tree):
            if getattr(node, "lineno", None) in skip:
                continue
            if isinstance(node, ast.Import):
                targets.update(filter(None, (known(a.name) for a in node.names)))
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for a in node.names:  # `from pkg import submodule` imports the submodule
                    sub = f"{node.module}.{a.name}"
                    targets.add(sub if sub in mods else known(node.module) or "")
        graph[mod] = {t for t in targets if t and t != mod}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(comp)

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_imports_only_go_down_the_layers():
    graph = _imports(_modules())
    wrong = sorted(
        f"{mod} imports {dep}"
        for mod, deps in graph.items()
        for dep in deps
        if (pkg := mod.split(".")[0]) in ALLOWED
        and (other := dep.split(".")[0]) != pkg
        and other not in (ENTRY_POINT_MAY_USE if mod.endswith(".__main__") else ALLOWED[pkg])
    )
    assert wrong == []


def test_no_import_cycles_inside_a_package():
    cycles = [c for c in _cycles(_imports(_modules())) if c not in KNOWN_CYCLES]
    assert cycles == []


def test_the_cycle_finder_finds_a_lazy_cycle():
    graph = {"a.x": {"a.y"}, "a.y": {"a.x"}, "a.z": {"a.x"}}
    assert _cycles(graph) == [{"a.x", "a.y"}]
