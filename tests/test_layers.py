"""The package's layers, written once and checked from the source (an AST walk, nothing imported).

A module may import from its own package or from a package in a lower layer. Packages that share a
layer are siblings and do not import each other. Imports inside functions count the same as those at
the top of a module, and no two modules may import each other, directly or round a longer loop.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "libs" / "medsynth" / "src" / "medsynth"

#: Bottom first. Each entry is a top-level package (or module) of ``medsynth``; ``medsynth`` itself
#: (its ``__init__``, which holds only the version) sits at the bottom.
LAYERS: list[set[str]] = [
    {"medsynth", "core", "v1"},  # settings, errors, logging, names; the generated protobuf contracts
    {"store", "bus"},  # infrastructure: objects and messages
    {"runtime"},  # HTTP serving and telemetry shared by every service
    {"io", "models", "metrics", "auth"},  # file formats, networks, metrics, who may do what
    {"dicom", "generators", "segmentation"},
    {"datasets", "sampling"},
    {"training", "jobs"},
    {"handlers", "commands"},  # the workers' job handlers; request bodies and the commands they become
    {"studies"},  # the domain engines the API drives: studies (job grids) and reader studies
    {"api", "local"},  # HTTP only; the one-machine stack
    {"bench"},  # benchmarks drive everything below them
]


def module_name(path: Path) -> str:
    parts = ["medsynth", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, name: str, modules: set[str]) -> list[tuple[int, str]]:
    """(line, module) for each ``medsynth`` module that ``path`` imports, anywhere in the file.

    ``from medsynth.x import y`` imports the module ``medsynth.x.y`` when there is one, else the name
    ``y`` of ``medsynth.x``.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.append((node.lineno, submodule if submodule in modules else base))
    return [(line, mod) for line, mod in found if mod in modules and mod != name]


def read_graph() -> dict[str, dict[str, int]]:
    """importer → {imported module: first line} over every module of the package."""
    modules = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
    graph: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        edges: dict[str, int] = {}
        for line, mod in imported_modules(path, name, set(modules)):
            edges.setdefault(mod, line)
        graph[name] = edges
    return graph


def top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "medsynth"


def layer_of() -> dict[str, int]:
    return {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def describe(graph: dict[str, dict[str, int]], importer: str, imported: str) -> str:
    return f"{importer}:{graph[importer][imported]} -> {imported}"


def test_the_walk_reads_the_whole_package() -> None:
    graph = read_graph()
    assert len(graph) > 100, f"only {len(graph)} modules read under {PACKAGE}"
    assert sum(map(len, graph.values())) > 300


def test_every_package_has_one_layer_and_every_layer_entry_exists() -> None:
    packages = {top(m) for m in read_graph()}
    named = [pkg for layer in LAYERS for pkg in layer]
    assert len(named) == len(set(named)), "a package is named in two layers"
    assert sorted(packages - set(named)) == [], "packages with no layer: add each to LAYERS"
    assert sorted(set(named) - packages) == [], "LAYERS names packages that no longer exist"


def test_imports_point_down_only() -> None:
    graph = read_graph()
    layer = layer_of()
    wrong = [
        describe(graph, importer, imported) + f"  (layer {layer[top(importer)]} imports layer {layer[top(imported)]})"
        for importer, edges in graph.items()
        for imported in edges
        if top(importer) != top(imported) and layer[top(imported)] >= layer[top(importer)]
    ]
    assert wrong == [], "imports that point up or sideways:\n" + "\n".join(wrong)


def test_no_import_cycles() -> None:
    graph = read_graph()
    report = []
    for component in cycles(graph):
        members = set(component)
        edges = [describe(graph, a, b) for a in component for b in graph[a] if b in members]
        report.append(" <-> ".join(component) + "\n    " + "\n    ".join(edges))
    assert report == [], "import cycles:\n" + "\n".join(report)


def test_the_checks_catch_what_they_are_for() -> None:
    """The checks on a made-up graph: an upward import and a three-module loop are both found."""
    graph = {
        "medsynth.core.a": {"medsynth.store.b": 3},
        "medsynth.store.b": {"medsynth.store.c": 1},
        "medsynth.store.c": {"medsynth.core.a": 7},
        "medsynth.bus.d": {},
    }
    assert cycles(graph) == [["medsynth.core.a", "medsynth.store.b", "medsynth.store.c"]]
    layer = layer_of()
    assert layer[top("medsynth.store.b")] > layer[top("medsynth.core.a")]
    assert describe(graph, "medsynth.store.c", "medsynth.core.a") == "medsynth.store.c:7 -> medsynth.core.a"
    assert layer[top("medsynth.store.b")] == layer[top("medsynth.bus.d")]  # siblings: neither may import the other
