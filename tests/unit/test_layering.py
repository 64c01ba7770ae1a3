"""The package import graph points one way and has no cycles:

    apf (front end) -> host, guest -> shared -> protocol

Every import counts, including those made inside a function or only for type checking: a cycle
dodged by a late import is still a cycle."""
from __future__ import annotations

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGES = ("apf", "host", "guest", "shared", "protocol")
# What each package may import besides itself.
ALLOWED = {
    "apf": {"host", "guest", "shared", "protocol"},
    "host": {"shared", "protocol"},
    "guest": {"shared", "protocol"},
    "shared": {"protocol"},
    "protocol": set(),
}


def _modules() -> dict[str, str]:
    """Module name -> file path, for every module of the project's packages."""
    found = {}
    for package in PACKAGES:
        for folder, _, files in os.walk(os.path.join(ROOT, package)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    module = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                    found[module.removesuffix(".__init__")] = path
    return found


MODULES = _modules()


def _imports(module: str, path: str) -> set[str]:
    """The project modules `module` imports anywhere in its file (resolved to the longest known name)."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            names += [base] + [f"{base}.{alias.name}" for alias in node.names]
    targets = set()
    for name in names:
        while name and name not in MODULES:
            name = name.rpartition(".")[0]
        if name and name != module:
            targets.add(name)
    return targets


GRAPH = {module: _imports(module, path) for module, path in MODULES.items()}


def test_the_project_has_the_packages_it_checks():
    """The graph covers modules of every package (a renamed package must not pass by being absent)."""
    assert {m.split(".")[0] for m in MODULES} == set(PACKAGES)


@pytest.mark.parametrize("package", PACKAGES)
def test_dependencies_point_one_way(package):
    """No module of `package` imports a package it may not: nothing below the front end imports
    `apf`, host and guest never import each other, shared imports only protocol."""
    wrong = sorted(f"{m} -> {t}" for m, ts in GRAPH.items() if m.split(".")[0] == package
                   for t in ts if t.split(".")[0] not in ALLOWED[package] | {package})
    assert wrong == []


def test_the_module_import_graph_has_no_cycle():
    """No module reaches itself through imports (Tarjan's strongly connected components)."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert cycles == []
