"""The package's imports: importing any module does nothing but define things, and each module
imports only from the layers below its own (pyproject.toml's import-linter contracts)."""

from __future__ import annotations

import json
import shutil
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


# -- the layers (pyproject.toml's import-linter contracts) ------------------------------------------

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    # Run in ``tree``: the package analysed is the one found there first, not the installed one.
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=tree, capture_output=True,
                          text=True, timeout=120)


def test_the_package_keeps_its_layers():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


def test_an_import_against_the_layers_fails_lint_imports(tmp_path):
    """A module of the pure core importing the engine, even only for its types: both the layers
    contract and the no-cycles contract break, and lint-imports (so CI) fails."""
    shutil.copytree(ROOT / "atom_actors", tmp_path / "atom_actors",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    swarm = tmp_path / "atom_actors" / "swarm.py"
    swarm.write_text(swarm.read_text().replace(
        "from .catalog import Catalog\n",
        "from .catalog import Catalog\n\nif TYPE_CHECKING:\n    from .engine import Engine\n", 1
    ).replace("from typing import Final\n", "from typing import TYPE_CHECKING, Final\n", 1))
    result = lint_imports(tmp_path)
    assert result.returncode == 1
    assert "0 kept, 2 broken" in result.stdout
    assert "atom_actors.swarm is not allowed to import atom_actors.engine" in result.stdout
