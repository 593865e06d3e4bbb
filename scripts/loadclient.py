"""The project's load client for the scripts: ``clients/js/tools/loadclient.js``, N subscribers
that are each a real SDK client (connect, decode every encoding, reconnect with full jitter), in
one Node process, reporting fps, gaps, latency and bytes as one JSON line.

Its one dependency, ``ws``, is a devDependency of ``clients/js``: installed from its lock file
(``npm ci``) when missing. Nothing outside the repository is needed.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SDK = ROOT / "clients" / "js"
LOAD_CLIENT = SDK / "tools" / "loadclient.js"


def prepare() -> Path:
    """The load client's path, its dependencies installed; exits saying what is missing."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        sys.exit("the load client needs Node >= 20 and npm (apt-get install nodejs npm)")
    if not (SDK / "node_modules" / "ws").is_dir():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--silent"], cwd=SDK, check=True,
                       stdout=subprocess.DEVNULL)
    return LOAD_CLIENT


def command(url: str, clients: int, seconds: float, *, ramp_ms: int = 2000,
            warmup_ms: int = 1000, deflate: bool = False, report_every_s: float = 0) -> list[str]:
    """The command line of one load process (``url`` may carry encoding, fps and session)."""
    line = ["node", str(LOAD_CLIENT), "--url", url, "--clients", str(clients),
            "--seconds", str(seconds), "--ramp-ms", str(ramp_ms), "--warmup-ms", str(warmup_ms),
            "--deflate", "1" if deflate else "0"]
    if report_every_s:
        line += ["--report-every-s", str(report_every_s)]
    return line
