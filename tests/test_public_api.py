"""The exporter stands on the public API of asyncio, ssl, aiohttp and prometheus_client.

A private module or attribute works until a patch release moves it (the old TLS layer
subclassed asyncio.sslproto.SSLProtocol, which CPython does not document). This scans the
package's source: imports of those libraries must name a documented module, and no
attribute starting with one underscore may be read off anything but the code's own objects.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "exporter"
WATCHED = ("asyncio", "ssl", "aiohttp", "prometheus_client")
# Documented modules. aiohttp.http_exceptions is what aiohttp.http re-exports in __all__
# (HttpProcessingError, which log.py quiets).
PUBLIC_MODULES = {
    "asyncio",
    "ssl",
    "aiohttp",
    "aiohttp.web",
    "aiohttp.http_exceptions",
    "prometheus_client",
    "prometheus_client.exposition",
    "prometheus_client.openmetrics",
    "prometheus_client.openmetrics.exposition",
}
# Underscore names that are public all the same, or are the code's own.
ALLOWED_ATTRIBUTES = {"os._exit", "other._value"}


def imported_modules(node: ast.AST) -> list[str]:
    """The modules an import statement loads, `from asyncio import sslproto` included."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom) or node.level or not node.module:
        return []
    modules = [node.module]
    if node.module.split(".")[0] in WATCHED and not node.module.split(".")[-1].startswith("_"):
        for alias in node.names:
            with contextlib.suppress(ImportError, ValueError):
                if importlib.util.find_spec(f"{node.module}.{alias.name}") is not None:
                    modules.append(f"{node.module}.{alias.name}")
    return modules


def findings(source: str, where: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        for module in imported_modules(node):
            if module.split(".")[0] in WATCHED and module not in PUBLIC_MODULES:
                found.append(f"{where}:{node.lineno}: imports {module}")
        if isinstance(node, ast.Attribute):
            name, owner = node.attr, node.value
            private = name.startswith("_") and not name.startswith("__")
            own = isinstance(owner, ast.Name) and owner.id in ("self", "cls")
            if private and not own and ast.unparse(node) not in ALLOWED_ATTRIBUTES:
                found.append(f"{where}:{node.lineno}: reads {ast.unparse(node)}")
    return found


def test_the_package_uses_public_apis_only() -> None:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        found += findings(path.read_text(encoding="utf-8"), str(path.relative_to(PACKAGE)))
    assert found == []


def test_the_scan_finds_what_the_old_edge_did() -> None:
    """The scanner itself: the private uses of the old guard.py must be found."""
    old = (
        "from asyncio import sslproto\n"
        "import aiohttp.web_protocol\n"
        "from aiohttp._http_parser import HttpRequestParser\n"
        "class Lean(sslproto.SSLProtocol):\n    pass\n"
        "size = protocol._ssl_buffer\n"
    )
    assert len(findings(old, "old.py")) == 4
