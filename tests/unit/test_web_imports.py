"""The web server stands apart from the command line: importing it loads neither click, rich
nor `conveyor.cli` (their shared views are `conveyor.views`); and the API's routers and the
dashboard stand apart from each other."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import conveyor.web

# structlog (under conveyor.logging) imports rich when it is installed: rich is blocked, as on
# an install without it, so any import of it left is conveyor's own and fails. `server` runs
# uvicorn, which imports click itself; every other module of the package is imported.
PROBE = """
import importlib, json, pkgutil, sys

sys.modules["rich"] = None
import conveyor.web

for found in pkgutil.walk_packages(conveyor.web.__path__, "conveyor.web."):
    if found.name != "conveyor.web.server":
        importlib.import_module(found.name)
print(json.dumps(sorted(
    name for name, module in sys.modules.items()
    if module is not None
    and (name.partition(".")[0] in ("click", "rich") or name.startswith("conveyor.cli"))
)))
"""


def test_the_web_server_imports_no_cli_library() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


def imported_by(path: Path) -> set[str]:
    """The conveyor modules a source file imports, at any depth of it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {name for name in found if name.startswith("conveyor.")}


def test_the_api_and_the_dashboard_import_neither_each_other_nor_the_assembly() -> None:
    web = Path(conveyor.web.__file__).parent
    for path in (web / "api").glob("*.py"):
        assert not {
            n
            for n in imported_by(path)
            if n.startswith(("conveyor.web.dashboard", "conveyor.web.app"))
        }, path.name
    assert not {
        n
        for n in imported_by(web / "dashboard.py")
        if n.startswith(("conveyor.web.api", "conveyor.web.app"))
    }
