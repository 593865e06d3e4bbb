"""scripts/test.sh's set-up step, on a machine that lacks a tool and cannot install it (no apt-get
on PATH): the run stops at once with ONE line naming what to install, rather than a suite whose
tests skip."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HIDDEN = {"chromium", "apt-get"}


def path_without(tmp_path: Path, hidden: set[str]) -> str:
    """A PATH of one folder holding every command of this machine's PATH but ``hidden``."""
    farm = tmp_path / "bin"
    farm.mkdir()
    for folder in os.environ.get("PATH", "").split(":"):
        if not folder or not Path(folder).is_dir():
            continue
        for entry in Path(folder).iterdir():
            target = farm / entry.name
            if entry.name not in hidden and not target.exists() and os.access(entry, os.X_OK):
                target.symlink_to(entry)
    return str(farm)


def test_a_missing_tool_stops_the_run_with_one_line_naming_it(tmp_path):
    done = subprocess.run(["bash", "scripts/test.sh", "--setup-only"], cwd=ROOT, timeout=60,
                          capture_output=True, text=True,
                          env={**os.environ, "PATH": path_without(tmp_path, HIDDEN)})
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line.startswith("scripts/test.sh: missing ") and " chromium" in line, line
    assert "apt-get install" in line and "chromium" in line.split("apt-get install", 1)[1], line
