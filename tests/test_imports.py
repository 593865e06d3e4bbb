"""The package's imports: importing any module does nothing but define things."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

IMPORT_EVERYTHING = """
import asyncio, importlib, json, pkgutil, sys
opened = []
sys.addaudithook(lambda event, args: opened.append(str(args[0]))
                 if event == "open" and str(args[0]).endswith(".toml") else None)
hook = sys.excepthook
policy = type(asyncio.get_event_loop_policy())
import atom_actors
names = [m.name for m in pkgutil.walk_packages(atom_actors.__path__, "atom_actors.")
         if m.name != "atom_actors.__main__"]   # `python -m atom_actors` runs main()
for name in names:
    importlib.import_module(name)
import structlog
print(json.dumps({"modules": len(names), "trio_asyncio": "trio_asyncio" in sys.modules,
                  "policy": type(asyncio.get_event_loop_policy()) is policy,
                  "structlog": structlog.is_configured(), "excepthook": sys.excepthook is hook,
                  "toml_read": opened}))
"""


def test_importing_every_module_has_no_side_effect():
    """No asyncio policy changed (trio-asyncio not even loaded), no logging configured, no
    excepthook replaced, no catalog file read: all of that happens in main() / with the settings."""
    out = subprocess.run([sys.executable, "-c", IMPORT_EVERYTHING], cwd=ROOT, check=True,
                         capture_output=True, text=True, timeout=60).stdout
    seen = json.loads(out)
    assert seen.pop("modules") >= 40          # every module of the package was imported
    assert seen == {"trio_asyncio": False, "policy": True, "structlog": False, "excepthook": True,
                    "toml_read": []}
