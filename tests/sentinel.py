"""A real Redis Sentinel deployment on loopback for the tests: one primary, its replicas and
three ``redis-server --sentinel``, each on a free port, each stopped by the test that started it.

A pytest plugin (``conftest.py`` loads it) and helpers::

    async def test_failover(sentinel_cluster):          # started, healthy, torn down after
        url = sentinel_cluster.url                      # redis+sentinel://127.0.0.1:p1,.../atom
        old = sentinel_cluster.primary                  # the Node that is primary now
        await sentinel_cluster.akill(old)               # kill -9
        new = await sentinel_cluster.afailover(old)     # the Node promoted in its place

``SentinelCluster(..., appendonly=True)`` keeps each node's data in an append-only file of its own
directory, so that a killed primary started again (``node.start()``) comes back with its data and
rejoins as a replica, instead of coming back empty (a scenario that restarts a killed node needs
it; the default keeps nothing on disk). ``node.pause()`` / ``node.resume()`` are SIGSTOP / SIGCONT:
a node that hangs without closing its connections (a replica that stops acknowledging, a primary
whose subscribers hear nothing).

Timing: ``down_after_ms`` (1000) is how long the sentinels wait before they call a silent primary
down; a failover then takes about another second on an idle machine, several under load. Every
wait here is bounded (``WAIT_S``) and polls the servers themselves, never a fixed sleep.
"""

from __future__ import annotations

import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
import redis
import trio

from tests.servers import free_port, need_redis_server

MASTER = "atom"
WAIT_S = 30.0          # bound on any start-up or failover wait
POLL_S = 0.05


class Node:
    """One ``redis-server`` process (a data node or a sentinel) on its own port and directory."""

    def __init__(self, binary: str, role: str, args: list[str], *, directory: Path,
                 config: Path | None = None) -> None:
        self.binary = binary
        self.role = role          # "primary", "replica" or "sentinel" as started (roles change)
        self.port = free_port()
        self.dir = directory
        self.config = config
        self._args = args
        self.proc: subprocess.Popen | None = None
        self.paused = False
        self._drain: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        return "127.0.0.1", self.port

    def client(self, timeout_s: float = 2.0) -> redis.Redis:
        """A plain (synchronous) client of this very node, for the tests' own checks."""
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=timeout_s,
                           socket_connect_timeout=timeout_s)

    def start(self) -> Node:
        """Start (again) and return once it listens."""
        config = [str(self.config)] if self.config else []
        command = [self.binary, *config, "--port", str(self.port), "--bind", "127.0.0.1",
                   "--daemonize", "no", "--dir", str(self.dir), *self._args]
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        ready = "Sentinel ID is" if self.role == "sentinel" else "Ready to accept connections"
        lines = []
        for line in self.proc.stdout:      # blocks until the log says it listens
            lines.append(line)
            if ready in line:
                break
        else:
            raise RuntimeError(f"redis-server ({self.role}) did not start:\n" + "".join(lines))
        self._drain = threading.Thread(target=_drain, args=(self.proc.stdout,), daemon=True)
        self._drain.start()
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """kill -9 (a paused node is killed too)."""
        self._end(signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM, as a restart would."""
        self._end(signal.SIGTERM)

    def pause(self) -> None:
        """SIGSTOP: the node keeps its sockets open and answers nothing."""
        if self.running and not self.paused:
            self.proc.send_signal(signal.SIGSTOP)
            self.paused = True

    def resume(self) -> None:
        if self.running and self.paused:
            self.proc.send_signal(signal.SIGCONT)
        self.paused = False

    def _end(self, sig: int) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            if self.paused and sig != signal.SIGKILL:
                self.proc.send_signal(signal.SIGCONT)
        self.paused = False
        self.proc.wait(timeout=10)
        if self._drain is not None:
            self._drain.join(timeout=10)
        self.proc = None

    def __repr__(self) -> str:
        return f"<{self.role} 127.0.0.1:{self.port}>"


def _drain(stream) -> None:
    with stream:
        for _ in stream:
            pass


class SentinelCluster:
    """A primary, ``replicas`` replicas and ``sentinels`` sentinels monitoring it as ``master``.

    ``url`` is the REDIS_URL of CONTRACT §1 for it. ``nodes`` are the data nodes (the primary
    first, as started); ``primary`` asks the sentinels which one is primary now.
    """

    def __init__(self, *, master: str = MASTER, replicas: int = 2, sentinels: int = 3,
                 down_after_ms: int = 1000, failover_timeout_ms: int = 3000,
                 appendonly: bool = False, password: str | None = None) -> None:
        self.binary = need_redis_server()
        self.master = master
        self.down_after_ms = down_after_ms
        self.password = password
        self.root = Path(tempfile.mkdtemp(prefix="atom-sentinel-"))
        persistence = ["--appendonly", "yes", "--appendfsync", "everysec"] if appendonly \
            else ["--appendonly", "no"]
        auth = ["--requirepass", password, "--masterauth", password] if password else []
        # No 5 s wait before a replica's first sync (Redis's diskless default): tests start faster.
        common = ["--save", "", "--repl-diskless-sync-delay", "0", *persistence, *auth]
        self.nodes: list[Node] = [Node(self.binary, "primary", common,
                                       directory=self._dir("node0"))]
        primary_port = self.nodes[0].port
        for i in range(replicas):
            self.nodes.append(Node(self.binary, "replica",
                                   [*common, "--replicaof", "127.0.0.1", str(primary_port)],
                                   directory=self._dir(f"node{i + 1}")))
        quorum = sentinels // 2 + 1
        self.sentinels: list[Node] = []
        for i in range(sentinels):
            directory = self._dir(f"sentinel{i}")
            config = directory / "sentinel.conf"
            lines = [f"sentinel monitor {master} 127.0.0.1 {primary_port} {quorum}",
                     f"sentinel down-after-milliseconds {master} {down_after_ms}",
                     f"sentinel failover-timeout {master} {failover_timeout_ms}",
                     f"sentinel parallel-syncs {master} 1"]
            if password:
                lines.append(f"sentinel auth-pass {master} {password}")
            config.write_text("\n".join(lines) + "\n")   # sentinels rewrite their own file
            self.sentinels.append(Node(self.binary, "sentinel", ["--sentinel"],
                                       directory=directory, config=config))

    def _dir(self, name: str) -> Path:
        path = self.root / name
        path.mkdir()
        return path

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{auth}{hosts}/{self.master}"

    # -- life ---------------------------------------------------------------------------------

    def start(self) -> SentinelCluster:
        """Start every node, then return once the replicas are in sync and every sentinel sees
        the primary, every replica and every other sentinel (so a failover can happen)."""
        try:
            for node in [*self.nodes, *self.sentinels]:
                node.start()
            self._wait(self._healthy, "the sentinel deployment to be healthy")
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop everything (paused nodes too) and remove the directories."""
        for node in [*self.sentinels, *self.nodes]:
            try:
                node.kill()
            except (OSError, subprocess.TimeoutExpired):
                pass
        subprocess.run(["rm", "-rf", str(self.root)], check=False)

    # -- looking -----------------------------------------------------------------------------------

    def node_at(self, port: int) -> Node:
        return next(n for n in self.nodes if n.port == port)

    def primary_port(self) -> int | None:
        """The primary's port as a majority of the live sentinels tell it, or None."""
        votes: dict[int, int] = {}
        for sentinel in self.sentinels:
            if not sentinel.running or sentinel.paused:
                continue
            try:
                with sentinel.client(0.5) as c:
                    found = c.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master)
            except redis.RedisError:
                continue
            if found:
                port = int(found[1])
                votes[port] = votes.get(port, 0) + 1
        if not votes:
            return None
        port, count = max(votes.items(), key=lambda kv: kv[1])
        return port if count > len(self.sentinels) // 2 else None

    @property
    def primary(self) -> Node:
        port = self.primary_port()
        if port is None:
            raise AssertionError("the sentinels do not agree on a primary")
        return self.node_at(port)

    @property
    def replicas(self) -> list[Node]:
        primary = self.primary
        return [n for n in self.nodes if n is not primary and n.running]

    def _healthy(self) -> bool:
        primary = self.node_at(self.primary_port() or -1) if self.primary_port() else None
        if primary is None:
            return False
        want_replicas = len([n for n in self.nodes if n is not primary and n.running])
        try:
            with primary.client(0.5) as c:
                info = c.info("replication")
            online = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)
                      and v.get("state") == "online"]
            if info.get("role") != "master" or len(online) < want_replicas:
                return False
            for sentinel in self.sentinels:
                with sentinel.client(0.5) as c:
                    state = c.execute_command("SENTINEL", "MASTER", self.master)
                state = dict(zip(state[::2], state[1::2])) if isinstance(state, list) else state
                state = {_text(k): _text(v) for k, v in state.items()}
                if int(state["num-slaves"]) < want_replicas \
                        or int(state["num-other-sentinels"]) < len(self.sentinels) - 1 \
                        or "down" in state["flags"]:
                    return False
        except (redis.RedisError, KeyError, ValueError):
            return False
        return True

    def _wait(self, check, what: str, timeout_s: float = WAIT_S):
        deadline = time.monotonic() + timeout_s
        while True:
            found = check()
            if found:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
            time.sleep(POLL_S)

    # -- faults ------------------------------------------------------------------------------------

    def failover(self, old: Node, timeout_s: float = WAIT_S) -> Node:
        """Wait until the sentinels name another primary than ``old`` and it takes writes."""
        def promoted() -> Node | None:
            port = self.primary_port()
            if port is None or port == old.port:
                return None
            node = self.node_at(port)
            try:
                with node.client(0.5) as c:
                    return node if c.info("replication").get("role") == "master" else None
            except redis.RedisError:
                return None
        return self._wait(promoted, f"a failover away from {old}", timeout_s)

    def wait_demoted(self, node: Node, timeout_s: float = WAIT_S) -> None:
        """Wait until ``node`` (an old primary left running) replicates the new primary."""
        def demoted() -> bool:
            try:
                with node.client(0.5) as c:
                    info = c.info("replication")
            except redis.RedisError:
                return False
            return info.get("role") == "slave" and info.get("master_link_status") == "up"
        self._wait(demoted, f"{node} to replicate the new primary", timeout_s)

    def wait_healthy(self, timeout_s: float = WAIT_S) -> None:
        self._wait(self._healthy, "the sentinel deployment to be healthy", timeout_s)

    async def akill(self, node: Node) -> None:
        await trio.to_thread.run_sync(node.kill)

    async def afailover(self, old: Node, timeout_s: float = WAIT_S) -> Node:
        return await trio.to_thread.run_sync(self.failover, old, timeout_s)

    async def await_demoted(self, node: Node, timeout_s: float = WAIT_S) -> None:
        await trio.to_thread.run_sync(self.wait_demoted, node, timeout_s)

    async def await_healthy(self, timeout_s: float = WAIT_S) -> None:
        await trio.to_thread.run_sync(self.wait_healthy, timeout_s)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@pytest.fixture
def sentinel_cluster():
    """A started :class:`SentinelCluster` (primary, two replicas, three sentinels,
    down-after-milliseconds 1000), killed after the test."""
    cluster = SentinelCluster().start()
    try:
        yield cluster
    finally:
        cluster.close()

