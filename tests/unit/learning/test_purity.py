"""agents/learning/ imports only the standard library, numpy and scipy (docs/agents.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

LEARNING = Path(__file__).resolve().parents[3] / "agents" / "learning"

PROBE = r"""
import builtins, importlib, pathlib, sys
allowed = {"numpy", "scipy"}
real_import = builtins.__import__
def guarded(name, globals=None, locals=None, fromlist=(), level=0):
    importer = (globals or {}).get("__name__", "")
    top = name.split(".")[0]
    if (importer.startswith("agents.learning") and level == 0 and top not in allowed
            and top not in sys.stdlib_module_names and not name.startswith("agents.learning")):
        raise ImportError(f"{importer} may not import {name}")
    return real_import(name, globals, locals, fromlist, level)
builtins.__import__ = guarded
for path in sorted(pathlib.Path(sys.argv[1]).glob("*.py")):
    if path.stem != "__init__":
        importlib.import_module(f"agents.learning.{path.stem}")
print("ok")
"""


def test_learning_modules_import_only_stdlib_numpy_scipy() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(LEARNING)],
        capture_output=True,
        text=True,
        cwd=LEARNING.parents[1],
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
