"""Real PostgreSQL and Redis for the tests (a pytest plugin, loaded by conftest.py).

* The shared servers of the machine (PostgreSQL 127.0.0.1:5432 with trust auth, Redis
  127.0.0.1:6379) serve the tests that neither stop nor kill a server: each test gets its own
  database (``pg_url``) or its own key namespace (``redis_namespace``), so runs never meet.
* A test that stops, restarts or kills a server gets a throwaway one on a free port:
  ``redis-server --save '' --appendonly no``, or ``initdb`` + ``pg_ctl`` in a temporary directory
  run as a non-root user (PostgreSQL refuses root): ``postgres`` if it exists, else a system user
  made with ``useradd``.

A test skips, with the reason, only when the binaries are absent or the shared server does not
answer; ``.ci/run`` checks both first, so CI cannot skip silently.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import uuid
from pathlib import Path

import pytest
import trio

from tests.operators import OPERATOR_SECRET

SHARED_PG = os.environ.get("ATOM_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
SHARED_REDIS = os.environ.get("ATOM_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
PG_TEST_USER = "atom-pg"
START_TIMEOUT_S = 30


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_bin() -> Path | None:
    """The directory of initdb/pg_ctl/postgres: the newest /usr/lib/postgresql/<v>/bin, or PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def redis_server_bin() -> str | None:
    return shutil.which("redis-server")


def skip(reason: str) -> None:
    """Skip with ``reason``; under .ci/run (ATOM_REQUIRE_SERVERS=1) fail instead."""
    if os.environ.get("ATOM_REQUIRE_SERVERS") == "1":
        pytest.fail(f"{reason} (ATOM_REQUIRE_SERVERS is set: CI must not skip this)")
    pytest.skip(reason)


def need_redis_server() -> str:
    binary = redis_server_bin()
    if binary is None:
        skip("redis-server is not installed (apt-get install redis-server)")
    return binary


def need_pg_bin() -> Path:
    binary = pg_bin()
    if binary is None:
        skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    return binary


def _pg_user() -> str | None:
    """Who runs a throwaway PostgreSQL: ourselves unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", PG_TEST_USER):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            pass
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                    PG_TEST_USER], check=True, capture_output=True)
    return PG_TEST_USER


class RedisServer:
    """A redis-server of our own on a free port, keeping nothing on disk; or, with
    ``appendonly``, everything in an append-only file of its own directory, as a deployment's
    Redis does (the command stream then survives a restart)."""

    def __init__(self, appendonly: bool = False, args: tuple[str, ...] = ()) -> None:
        self.binary = need_redis_server()
        self.args = list(args)     # more of redis-server's options (``--replicaof host port``)
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.dir = tempfile.mkdtemp(prefix="atom-redis-") if appendonly else tempfile.gettempdir()
        # everysec, Redis's default and the deployment's: "always" makes every write wait for
        # the disk, which on a busy machine stalls Redis for seconds (and engines lose leases).
        self.persistence = ["--appendonly", "yes", "--appendfsync", "everysec"] if appendonly \
            else ["--appendonly", "no"]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             *self.persistence, "--daemonize", "no", "--dir", self.dir, *self.args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines = []
        # Its log says when it listens: reading it blocks until then, no polling needed.
        for line in self.proc.stdout:
            lines.append(line)
            if "Ready to accept connections" in line:
                break
        else:
            raise RuntimeError("redis-server did not start:\n" + "".join(lines))
        # Keep draining its log so that it never blocks on a full pipe.
        self._drain = threading.Thread(target=_drain, args=(self.proc.stdout,), daemon=True)
        self._drain.start()
        return self

    def stop(self) -> None:
        """Stop as a restart would (SIGTERM; nothing is saved)."""
        self._end(self.proc.terminate if self.proc else None)

    def kill(self) -> None:
        self._end(self.proc.kill if self.proc else None)

    def _end(self, signal) -> None:
        if self.proc is None:
            return
        signal()
        self.proc.wait(timeout=10)
        self._drain.join(timeout=10)   # it closes the pipe when it reads the end of it
        self.proc = None

    async def astart(self) -> None:
        await trio.to_thread.run_sync(self.start)

    async def astop(self) -> None:
        await trio.to_thread.run_sync(self.stop)


def _drain(stream) -> None:
    with stream:
        for _ in stream:
            pass


class PostgresServer:
    """initdb + pg_ctl in a temporary directory, as a non-root user, on a free port."""

    def __init__(self) -> None:
        self.bin = need_pg_bin()
        self.user = _pg_user()
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="atom-pg-"))
        self.data = self.dir / "data"
        if self.user is not None:
            shutil.chown(self.dir, self.user)
        self._run(self.bin / "initdb", "-D", self.data, "-A", "trust", "-U", "postgres",
                  "--no-sync", "-E", "UTF8")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *cmd: object) -> None:
        done = subprocess.run([str(c) for c in cmd], user=self.user, cwd=self.dir,
                              capture_output=True, text=True, timeout=START_TIMEOUT_S)
        if done.returncode != 0:
            raise RuntimeError(f"{cmd[0]} failed: {done.stdout}{done.stderr}")

    def start(self) -> PostgresServer:
        options = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off")
        self._run(self.bin / "pg_ctl", "-D", self.data, "-o", options, "-l", self.dir / "log",
                  "-w", "-t", START_TIMEOUT_S, "start")
        return self

    def stop(self, mode: str = "fast") -> None:
        self._run(self.bin / "pg_ctl", "-D", self.data, "-m", mode, "-w", "stop")

    async def astart(self) -> None:
        await trio.to_thread.run_sync(self.start)

    async def astop(self) -> None:
        await trio.to_thread.run_sync(self.stop)

    def destroy(self) -> None:
        if (self.data / "postmaster.pid").exists():
            try:
                self.stop("immediate")
            except (RuntimeError, subprocess.TimeoutExpired):
                pass
        shutil.rmtree(self.dir, ignore_errors=True)


# -- direct SQL for the tests' own checks (asyncpg through the same bridge as the store) ---------

async def sql(url: str, query: str, *args: object) -> list[dict]:
    import asyncpg

    from atom_actors.aio import open_bridge

    async def run() -> list[dict]:
        conn = await asyncpg.connect(url, timeout=5)
        try:
            return [dict(r) for r in await conn.fetch(query, *args)]
        finally:
            await conn.close()

    async with open_bridge() as bridge:
        return await bridge.call(run)


def _with_database(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


# -- fixtures ------------------------------------------------------------------------------------

@pytest.fixture
async def pg_url() -> str:
    """A new, empty database on the shared PostgreSQL, dropped after the test."""
    name = f"atom_test_{uuid.uuid4().hex[:12]}"
    try:
        with trio.fail_after(10):
            await sql(SHARED_PG, f'CREATE DATABASE "{name}"')
    except (OSError, trio.TooSlowError) as exc:
        skip(f"the shared PostgreSQL at {SHARED_PG} does not answer: {exc}")
    yield _with_database(SHARED_PG, name)
    with trio.fail_after(10):
        await sql(SHARED_PG, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def redis_namespace() -> str:
    """A key and channel namespace of this test's own on the shared Redis."""
    host, port = SHARED_REDIS.split("//")[1].split("/")[0].split(":")
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except OSError as exc:
        skip(f"the shared Redis at {SHARED_REDIS} does not answer: {exc}")
    return f"atomtest{uuid.uuid4().hex[:10]}"


@pytest.fixture
def redis_server():
    """A throwaway redis-server on a free port, for tests that stop or kill it."""
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(scope="module")
def pg_server_module():
    server = PostgresServer()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture
def pg_server(pg_server_module):
    """A throwaway PostgreSQL (shared by a module's tests), running at the start of each test."""
    if not (pg_server_module.data / "postmaster.pid").exists():
        pg_server_module.start()
    return pg_server_module


# -- `atom` processes ----------------------------------------------------------------------------

class AtomProcess:
    """``python -m atom_actors <args>`` with its stderr read line by line as it comes."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.args = args
        self.env = env
        self.lines: list[str] = []
        self._changed = trio.Event()
        self.proc: trio.Process | None = None

    async def start(self, nursery: trio.Nursery) -> AtomProcess:
        import sys
        self.proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "atom_actors", *self.args], env=self.env,
            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
        nursery.start_soon(self._read)
        return self

    async def _read(self) -> None:
        buffer = b""
        async with self.proc.stderr:
            while chunk := await self.proc.stderr.receive_some():
                buffer += chunk
                *complete, buffer = buffer.split(b"\n")
                self.lines += [line.decode(errors="replace") for line in complete]
                self._changed.set()
                self._changed = trio.Event()
        self._changed.set()

    async def wait_for(self, text: str, after: int = 0) -> str:
        """The first line from index ``after`` on containing ``text``; fails if the process ends."""
        while True:
            for line in self.lines[after:]:
                if text in line:
                    return line
            if self.proc.returncode is not None:
                raise AssertionError(f"process ended ({self.proc.returncode}) before {text!r}:\n"
                                     + "\n".join(self.lines))
            changed = self._changed
            with trio.move_on_after(0.2):
                await changed.wait()
            self.proc.poll()

    def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()

    async def stop(self) -> int:
        if self.proc.returncode is None:
            self.proc.terminate()
        with trio.fail_after(10):
            return await self.proc.wait()


def atom_env(**settings: str) -> dict[str, str]:
    """The environment of an ``atom`` process: ours less any AT·OM setting, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.isupper() or k in ("PATH", "HOME", "LANG")}
    env.update({"API_PORT": "0", "WS_PORT": "0", "PYTHONUNBUFFERED": "1", "SWARM_SEED": "7",
                "SECRET_KEY": "x" * 40, "OPERATOR_JWT_SECRET": OPERATOR_SECRET})
    env.update(settings)
    return env


@pytest.fixture
async def atom_processes(nursery):
    """Start ``atom`` processes with ``await start(args, env)``; all killed and reaped after."""
    started: list[AtomProcess] = []

    async def start(args: list[str], env: dict[str, str]) -> AtomProcess:
        process = await AtomProcess(args, env).start(nursery)
        started.append(process)
        return process

    yield start
    with trio.CancelScope(shield=True), trio.fail_after(20):
        for process in started:
            process.kill()
            await process.proc.wait()
