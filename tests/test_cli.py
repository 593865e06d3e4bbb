"""``atom`` as a user runs it: real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import trio

from .servers import free_port

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


def test_a_role_without_redis_stops_with_one_line(tmp_path):
    done = subprocess.run([*ATOM, "serve", "--role", "engine"], env=env(), cwd=tmp_path,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "REDIS_URL" in lines[0], done.stderr


def test_redis_unreachable_at_start_stops_with_one_line(tmp_path):
    """A REDIS_URL that points nowhere is a deployment error: one line, exit 1, once PostgreSQL's
    start deadline has passed (not a process standing by forever). Its password is not said."""
    url = f"redis://:hunter2-password@127.0.0.1:{free_port()}/0"
    done = subprocess.run([*ATOM, "serve", "--role", "engine"],
                          env=env(REDIS_URL=url, SECRET_KEY="k" * 40), cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("atom: redis is unavailable: "), done.stderr
    assert "hunter2" not in done.stderr


async def test_migrate_applies_then_finds_the_database_up_to_date(tmp_path, pg_url):
    for expected in ("applied migrations 1", "the database is up to date"):
        done = await trio.run_process([*ATOM, "migrate"], env=env(DATABASE_URL=pg_url, SECRET_KEY="k" * 40),
                                      cwd=tmp_path, capture_stderr=True, check=False)
        assert done.returncode == 0, done.stderr
        assert expected in done.stderr.decode()


def test_migrate_without_a_database_url_or_server_says_why(tmp_path):
    done = subprocess.run([*ATOM, "migrate"], env=env(), cwd=tmp_path, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 2 and "DATABASE_URL" in done.stderr
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    done = subprocess.run([*ATOM, "migrate"], env=env(DATABASE_URL=url, SECRET_KEY="k" * 40),
                          cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1 and "the database is unavailable" in done.stderr
    assert "Traceback" not in done.stderr
