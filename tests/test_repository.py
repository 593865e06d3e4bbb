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


# A reference to the folder beside the repository (../shared, /work/shared, ROOT.parent / "shared"):
# what a user who clones the repository anywhere does not have.
OUTSIDE = re.compile(r"\.\./shared|/work/shared|[\"']shared[\"']\s*/")
# The one exception: bench_ws.py's optional comparison with peer servers, which works without them.
OPTIONAL_PEERS = "scripts/bench_ws.py"
CONTRACT_MENTION = "../shared/CONTRACT.md"   # the README names where the contract is kept


def test_the_repository_stands_alone() -> None:
    """Nothing in the tests, scripts, benchmarks or code needs a file outside the repository."""
    names = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    here = Path(__file__).resolve().relative_to(ROOT).as_posix()
    found = []
    for name in names:
        path = ROOT / name
        if name in (here, OPTIONAL_PEERS) or not path.is_file():
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if OUTSIDE.search(line.replace(CONTRACT_MENTION, "")):
                found.append(f"{name}:{number}: {line.strip()}")
    assert found == []


def test_the_benchmarks_peer_comparison_is_optional(tmp_path, monkeypatch, capsys) -> None:
    """bench_ws.py --peer without the peer servers: said, and no comparison row (not a failure)."""
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    import bench_ws
    monkeypatch.setattr(bench_ws, "PEERS_SOURCE", tmp_path / "no-such-peers")
    assert bench_ws.prepare_peers(tmp_path / "peers") is None
    assert "no comparison row" in capsys.readouterr().out
