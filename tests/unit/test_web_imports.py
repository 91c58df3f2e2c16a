"""The web server stands apart from the command line: importing it loads neither click, rich
nor `conveyor.cli` (their shared views are `conveyor.views`)."""

from __future__ import annotations

import json
import subprocess
import sys

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
