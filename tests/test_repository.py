"""The repository itself: nothing a merge left half-done."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARKER = re.compile(rb"^(<{7}|>{7})( |$)|^={7}$", re.M)


def test_no_tracked_file_holds_a_merge_conflict_marker() -> None:
    """A conflict resolved in haste once landed on main in the README's layout table."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.split(b"\0")
    marked = [name.decode() for name in files
              if name and (ROOT / name.decode()).is_file()
              and MARKER.search((ROOT / name.decode()).read_bytes())]
    assert marked == []
