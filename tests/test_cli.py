"""``atom`` as a user runs it: real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import trio

ATOM = [sys.executable, "-m", "atom_actors"]


def env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.isupper() or k in ("PATH", "HOME", "LANG")}
    base.update({"API_PORT": "0", "WS_PORT": "0", "PYTHONUNBUFFERED": "1"}, **extra)
    return base


@pytest.mark.parametrize("setting, value", [("API_PORT", "http"), ("ESSAIM_SIZE", "351"),
                                            ("REDIS_URL", "ftp://x")])
def test_bad_setting_stops_with_one_line(tmp_path, setting, value):
    done = subprocess.run([*ATOM, "serve"], env=env(**{setting: value}), cwd=tmp_path,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and setting in lines[0], done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
async def test_signal_stops_serve_cleanly(tmp_path, signum):
    proc = await trio.lowlevel.open_process([*ATOM, "serve"], env=env(), cwd=tmp_path,
                                            stderr=subprocess.PIPE)
    buffer = b""
    with trio.fail_after(20):
        while b"serving" not in buffer:
            chunk = await proc.stderr.receive_some()
            assert chunk, buffer
            buffer += chunk
    proc.send_signal(signum)
    with trio.fail_after(5):  # the contract says within a second; leave room for a loaded CI
        code = await proc.wait()
        while chunk := await proc.stderr.receive_some():
            buffer += chunk
    assert code == 0, buffer
    assert b"stopped" in buffer and b"Traceback" not in buffer
