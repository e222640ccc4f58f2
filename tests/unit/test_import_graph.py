"""The layout's rules, checked on the import graph of the project's own modules.

* no import cycles, counting imports inside functions (a late import hides a cycle, it does
  not remove it);
* ``streams`` (the platform) never imports ``agents`` or ``loopwise``;
* ``agents`` never imports ``loopwise`` (entry points sit on top);
* ``agents.learning`` imports nothing but the standard library, numpy and scipy;
* pure modules import without building the faust App.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from streams.config import REPO_ROOT

PACKAGES = ("agents", "streams", "loopwise", "schemas")
LEARNING_ALLOWED = {"numpy", "scipy", "__future__"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            found[module_name(path)] = path
    return found


MODULES = project_modules()


def imports_of(name: str, path: Path) -> set[str]:
    """Project modules imported anywhere in the module (top level or inside functions)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join([*base, node.module] if node.module else base)
            else:
                prefix = node.module or ""
            # "from pkg import module" imports the module; "from module import name" the module
            targets = [f"{prefix}.{a.name}" for a in node.names] + [prefix]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def external_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            roots.add(node.module.split(".")[0])
    return roots


GRAPH = {name: imports_of(name, path) for name, path in MODULES.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path that returns to its start, or None."""
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(graph, white)
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = grey
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if colour.get(nxt, black) == grey:
                return [*stack[stack.index(nxt) :], nxt]
            if colour.get(nxt) == white:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        colour[node] = black
        return None

    for node in sorted(graph):
        if colour[node] == white:
            found = visit(node)
            if found:
                return found
    return None


def package_graph() -> dict[str, set[str]]:
    """Module imports with a package's ``__init__`` counted as its own node: importing
    ``a.b.c`` runs ``a/__init__`` and ``a/b/__init__`` too, but those are documentation
    only here, so they are not edges."""
    return GRAPH


def test_the_graph_has_no_cycle() -> None:
    cycle = find_cycle(package_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_cycle_finder_finds_a_planted_cycle() -> None:
    graph = {k: set(v) for k, v in GRAPH.items()}
    graph["streams.codecs"] = graph["streams.codecs"] | {"streams.app"}
    assert find_cycle(graph) is not None
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize(
    ("layer", "forbidden"),
    [("streams", ("agents", "loopwise")), ("agents", ("loopwise",)), ("schemas", ("agents",
     "streams", "loopwise"))],
)  # fmt: skip
def test_layers_import_only_downwards(layer: str, forbidden: tuple[str, ...]) -> None:
    wrong = sorted(
        f"{name} -> {target}"
        for name, targets in GRAPH.items()
        if name == layer or name.startswith(layer + ".")
        for target in targets
        if target.split(".")[0] in forbidden
    )
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_learning_imports_only_numpy_scipy_and_the_standard_library() -> None:
    stdlib = set(sys.stdlib_module_names)
    wrong = {}
    for name, path in MODULES.items():
        if not name.startswith("agents.learning"):
            continue
        roots = external_roots(path) - stdlib - LEARNING_ALLOWED - {"agents"}
        inner = {t for t in GRAPH[name] if not t.startswith("agents.learning")}
        if roots or inner:
            wrong[name] = sorted(roots | inner)
    assert not wrong, wrong


@pytest.mark.parametrize(
    "module",
    ["agents.bandits.weights", "agents.preferences.state", "agents.experiments.results",
     "agents.choices.state", "agents.insights.rules", "agents.learning.thompson",
     "streams.codecs", "streams.partitioning"],
)  # fmt: skip
def test_pure_modules_import_without_building_the_app(module: str) -> None:
    code = (
        f"import sys, {module}; "
        "built = [m for m in ('streams.app', 'faust.app') if m in sys.modules]; "
        "print(','.join(built))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "streams.app" not in done.stdout.split(","), f"{module} built the App"
