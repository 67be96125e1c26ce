"""The package's layers and the one direction of imports between them.

core <- upstream <- web <- cli, and sim (the simulator, on core and upstream) used only by the
cli: a module imports its own layer and those below it; nothing imports the command line;
and the running exporter never loads the simulator.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "exporter"
# The layers each layer may import besides itself. Top-level modules are layers of their
# own name; "__init__" (the package itself, for __version__) is open to all.
ALLOWED = {
    "core": set(),
    "upstream": {"core"},
    "web": {"core", "upstream"},
    "sim": {"core", "upstream"},
    "log": set(),
    "signals": set(),
    "healthcheck": set(),
    "check": {"core", "upstream"},
    "cli": {"core", "upstream", "web", "sim", "log", "signals", "check"},
    "__main__": {"signals", "cli"},
    "__init__": set(),
}


def module_of(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports_of(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every `exporter...` module the source imports, at any depth (lazy imports too)."""
    package = module if is_package else module.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                found.add(node.module or "")
                continue
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            found.add(".".join([*base, node.module] if node.module else base))
    return {name for name in found if name == "exporter" or name.startswith("exporter.")}


SOURCES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_follow_the_layers(path: Path) -> None:
    module = module_of(path)
    own = path.stem if path.parent == PACKAGE else layer_of(module)
    allowed = ALLOWED[own] | {own, "__init__"}
    source = path.read_text(encoding="utf-8")
    wrong = sorted(
        name
        for name in imports_of(source, module, path.name == "__init__.py")
        if layer_of(name) not in allowed
    )
    assert not wrong, f"{path.relative_to(PACKAGE)} ({own}) imports {wrong}"


def test_every_module_is_in_a_known_layer() -> None:
    layers = {p.stem if p.parent == PACKAGE else layer_of(module_of(p)) for p in SOURCES}
    assert layers <= set(ALLOWED), layers - set(ALLOWED)


def test_the_checker_catches_a_violation() -> None:
    found = imports_of("from ..web.server import create_app\n", "exporter.core.config")
    assert found == {"exporter.web.server"}
    assert layer_of("exporter.web.server") not in ALLOWED["core"]
    lazy = "def f():\n    from ..sim import simulator\n"
    assert imports_of(lazy, "exporter.web.server") == {"exporter.sim"}


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports, every import included (lazy ones, and
    those under TYPE_CHECKING, which a type checker follows as any other)."""
    modules = {module_of(path): path for path in SOURCES}
    return {
        module: imports_of(path.read_text("utf-8"), module, path.name == "__init__.py")
        & set(modules)
        for module, path in modules.items()
    }


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import circle, each as the path that closes it (depth-first search)."""
    found: list[list[str]] = []
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            found.append([*path[path.index(module) :], module])
            return
        if module in done:
            return
        for imported in sorted(graph.get(module, ())):
            visit(imported, [*path, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
    return found


def test_no_import_circle() -> None:
    """A circle makes import order matter and a module impossible to read on its own; the
    core once had one through a TYPE_CHECKING import (config -> endpoints -> metrics ->
    state -> config), which metric.py (the row type, apart from the table) broke."""
    assert circles(import_graph()) == []


def test_the_circle_finder_finds_one() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(graph) == [["a", "b", "c", "a"]]
    typing_only = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .state import S\n"
    assert imports_of(typing_only, "exporter.core.config") == {"exporter.core.state"}


# Modules still over the limit, each with the issue that splits it; the list only shrinks.
OVER_LIMIT = {"sim/simulator.py", "web/webconfig.py"}
LINE_LIMIT = 500


def test_no_module_over_500_lines() -> None:
    sizes = {
        path.relative_to(PACKAGE).as_posix(): len(path.read_text("utf-8").splitlines())
        for path in SOURCES
    }
    over = {name for name, lines in sizes.items() if lines > LINE_LIMIT}
    assert over <= OVER_LIMIT, {name: sizes[name] for name in over - OVER_LIMIT}
    assert over == OVER_LIMIT, f"{OVER_LIMIT - over} is under {LINE_LIMIT} now: drop it"


def test_the_exporter_does_not_load_the_simulator() -> None:
    code = (
        "import sys, exporter.cli, exporter.__main__\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('exporter.sim'))\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_test_module_imports_another() -> None:
    """Shared helpers live in tests/support.py; fixtures in conftest.py, used as fixtures."""
    tests = Path(__file__).resolve().parent
    offenders = []
    for path in sorted(tests.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            module = node.module if isinstance(node, ast.ImportFrom) else None
            if module and (module == "conftest" or module.startswith("test_")):
                offenders.append(f"{path.name}: from {module}")
    assert not offenders, offenders
