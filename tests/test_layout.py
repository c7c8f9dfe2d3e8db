"""The package layout stays readable: no import cycles in ``engine/`` and ``kernels/``, kernels never import the
engine, and modules stay small enough to read in one sitting.

The import graph is read from the source with ``ast`` (nothing is imported), counting every import: module level,
inside functions and under ``if TYPE_CHECKING:``. An edge A → B means A names module B in an ``import`` or
``from ... import`` (``from pkg import name`` is an edge to ``pkg.name`` when that is a module, else to ``pkg``).
Importing a submodule also runs its parents' ``__init__``, but that is not an edge: package ``__init__`` files
only re-export their own submodules.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("engine", "kernels")
MAX_LINES = 500  # a module above this explains why in its docstring ("over 500 lines:")


def module_files() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _resolve(current: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module named by a (possibly relative) ``from`` import."""
    if node.level == 0:
        return node.module or ""
    base = current.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):  # every import, wherever it sits
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mod = _resolve(name, path.name == "__init__.py", node)
                targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in modules else mod for a in node.names]
            for t in targets:
                # `import engine.data.cifar` names engine.data.cifar; keep the longest known prefix.
                while t and t not in modules:
                    t = t.rpartition(".")[0]
                if t and t != name:
                    graph[name].add(t)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a list of modules (first == last), or None. Iterative DFS, deterministic order."""
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(graph, white)
    for root in sorted(graph):
        if colour[root] != white:
            continue
        stack: list[tuple[str, list[str]]] = [(root, sorted(graph[root]))]
        path = [root]
        colour[root] = grey
        while stack:
            node, todo = stack[-1]
            if not todo:
                colour[node] = black
                stack.pop()
                path.pop()
                continue
            nxt = todo.pop(0)
            if colour[nxt] == grey:
                return [*path[path.index(nxt):], nxt]
            if colour[nxt] == white:
                colour[nxt] = grey
                stack.append((nxt, sorted(graph[nxt])))
                path.append(nxt)
    return None


def test_the_cycle_finder_finds_cycles() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"a2"}, "a2": {"a2"}}) == ["a2", "a2"]


def test_the_graph_sees_imports_inside_functions(tmp_path: Path) -> None:
    graph = import_graph()
    # engine.runtime.fast imports the kernels inside FastChains.__init__ (lazily, to keep Triton off the
    # reference path); the graph must still have that edge.
    assert "kernels.langevin_update" in graph["engine.runtime.fast"]
    assert "engine.runtime.chains" in graph["engine.learners.damc"]


def test_no_import_cycles() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_kernels_never_import_the_engine() -> None:
    graph = import_graph()
    bad = {m: sorted(t for t in deps if t.startswith("engine")) for m, deps in graph.items() if m.startswith("kernels")}
    assert not any(bad.values()), bad


# README's Layout table, top to bottom: a module imports only modules of its own row or of rows above it.
LAYERS = (
    ("kernels",),
    ("engine.config", "engine.files", "engine.errors", "engine.schema", "engine"),
    ("engine.models",),
    ("engine.sampling",),
    ("engine.runtime",),
    ("engine.learners",),
    ("engine.data",),
    ("engine.run",),
    ("engine.eval",),
    ("engine.export",),
    ("engine.train", "engine.toy", "engine.study", "engine.eval.__main__", "engine.sample", "engine.export.__main__"),
)


def layer_of(module: str) -> int:
    best, rank = -1, -1
    for i, row in enumerate(LAYERS):
        for prefix in row:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), i
    assert rank >= 0, f"{module} is in no layer of tests/test_layout.py: add it (and to README's Layout table)"
    return rank


def test_imports_only_go_up_the_layout_table() -> None:
    upward = [f"{m} -> {t}" for m, deps in import_graph().items() for t in deps if layer_of(t) > layer_of(m)]
    assert not upward, upward


def test_the_learner_is_never_imported_by_what_it_uses() -> None:
    """Algorithm 1 sits above the maths (sampling), the loops (runtime) and the networks (models)."""
    graph = import_graph()
    below = [m for m in graph if m.startswith(("engine.sampling", "engine.runtime", "engine.models", "engine.data"))]
    assert not [m for m in below if any(t.startswith("engine.learners") for t in graph[m])]


@pytest.mark.parametrize("name", sorted(module_files()))
def test_modules_stay_readable(name: str) -> None:
    path = module_files()[name]
    lines = len(path.read_text().splitlines())
    if lines > MAX_LINES:
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        assert f"over {MAX_LINES} lines:" in doc, f"{path.relative_to(REPO)} has {lines} lines and no reason"
