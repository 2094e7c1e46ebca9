"""The package's module import graph, read from the source (no imports run), and its cycles.

An edge ``a -> b`` means running module ``a`` imports module ``b``: every ``import`` statement counts, those inside
functions too (a lazy import still ties the two modules together). Importing ``rlkit.x.y`` also runs the package
``rlkit.x`` first, so that is an edge as well, unless the importer lives inside ``rlkit.x`` (its package is already
being imported by then). Used by tests/unit/test_imports.py and benchmarks/structure.py.
"""

from __future__ import annotations

import ast
from pathlib import Path


def module_name(path: Path, package: Path) -> str:
    """rlkit/functional/__init__.py -> rlkit.functional; rlkit/forward.py -> rlkit.forward."""
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(target: str, names: list[str], modules: set[str]) -> tuple[set[str], set[str]]:
    """(modules named by an ``import target`` / ``from target import names`` statement, the packages above
    ``target`` that run first), package-internal only."""
    submodules = {f"{target}.{n}" for n in names if f"{target}.{n}" in modules}   # `from pkg import submodule`
    reads_target = not names or len(submodules) < len(names)   # `import target` or a name defined in target
    named = submodules | ({target} if reads_target and target in modules else set())
    parts = target.split(".")
    above = {".".join(parts[:i]) for i in range(1, len(parts))} & modules
    return named, above


def _imports(tree: ast.Module, root: str) -> list[tuple[str, list[str]]]:
    """(target, names) of every import statement of ``root``'s modules in ``tree``, at any depth."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names if a.name.split(".")[0] == root]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.split(".")[0] == root:
            found.append((node.module, [a.name for a in node.names]))
    return found


def module_graph(package: Path) -> dict[str, set[str]]:
    """{module: modules it imports} for every module of ``package`` (a directory holding __init__.py)."""
    files = {module_name(p, package): p for p in sorted(package.rglob("*.py"))}
    modules = set(files)
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        parts = name.split(".")
        own = {".".join(parts[:i]) for i in range(1, len(parts) + 1)}   # itself and the packages it lives in
        edges: set[str] = set()
        for target, names in _imports(ast.parse(path.read_text(), str(path)), package.name):
            named, above = _resolve(target, names, modules)
            edges |= named | (above - own)
        graph[name] = edges - {name}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[tuple[str, ...]]:
    """Strongly connected components of more than one module (Tarjan), each sorted; sorted by size, then name."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[tuple[str, ...]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
                found.append(tuple(sorted(component)))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found, key=lambda c: (-len(c), c))
