"""The tree of app.serve with real backends, in one trio.run: restart restores the swarm from
PostgreSQL, a PostgreSQL outage leaves the stream alone, role all over Redis, and handshakes that
wait on a stalled Redis."""

from __future__ import annotations

import json
import os
import signal
from urllib.parse import urlsplit

import httpx
import pytest
import trio

from atom_actors import app
from atom_actors.broadcaster.pending import PER_ADDRESS, STALE_AFTER_S
from atom_actors.cluster import engine_alarms
from atom_actors.errors import ConfigError
from atom_actors.remote import RemoteSwarm
from atom_actors.sessions import token_hash
from atom_actors.store import EventRecord

from .conftest import make_settings
from tests.operators import bearer
from .test_broadcaster import open_websocket_url, raw_subscribe

KEY = "s" * 40
FREE_PORTS = {"api_port": 0, "ws_port": 0}


async def serving(nursery: trio.Nursery, settings, role: str = "all") -> app.Services:
    async def run(*, task_status) -> None:
        with trio.CancelScope() as scope:
            await app.serve(settings, role=role, task_status=_Started(task_status, scope))

    return await nursery.start(run)


class _Started:
    """Hands the Services and a way to stop that one tree to the test."""

    def __init__(self, task_status, scope: trio.CancelScope) -> None:
        self._task_status, self._scope = task_status, scope

    def started(self, services: app.Services) -> None:
        services.extras["stop"] = self._scope.cancel
        self._task_status.started(services)


async def frames_in(bus, seconds: float) -> int:
    count = 0
    sub = bus.subscribe_frames()
    with trio.move_on_after(seconds):
        while True:
            await sub.receive()
            count += 1
    return count


def test_a_role_the_settings_cannot_run_is_refused_at_start():
    with pytest.raises(ConfigError, match="REDIS_URL"):
        app.check_role(make_settings(), "engine")
    # Split roles need Redis only: the sessions are shared there (PostgreSQL is optional).
    for role in ("engine", "api", "ws"):
        app.check_role(make_settings(redis_url="redis://127.0.0.1:6379", secret_key=KEY), role)
    with pytest.raises(ConfigError, match="--role"):
        app.check_role(make_settings(), "everything")


async def test_a_restart_restores_the_swarm_from_postgres(nursery, pg_url):
    settings = make_settings(database_url=pg_url, secret_key=KEY, dispersal_dwell_s=600, **FREE_PORTS)
    with trio.fail_after(30):
        first = await serving(nursery, settings)
        engine = first.engine
        await engine.disperse("partial", command_id="d1")
        await engine.retune(3, 512.5, command_id="t1")
        await trio.sleep(0.3)
        statuses = engine.state.status.copy()
        first.extras["stop"]()
        await trio.sleep(0.5)        # the tree stops; the last snapshot is written on the way out

        second = await serving(nursery, settings)
        restored = second.engine
        assert restored is not engine
        assert restored.state.status.tolist() == statuses.tolist()
        assert restored.agent(3)["frequency"] == 512.5
        assert len(restored.agents(status="dispersed")) == 70
        events = await second.store.events()
        assert [(e.kind, e.payload["command_id"]) for e in reversed(events)] == [
            ("dispersal", "d1"), ("retune", "t1")]
        second.extras["stop"]()


async def test_postgres_down_leaves_sessions_commands_and_the_stream_alone(nursery, pg_server):
    settings = make_settings(database_url=pg_server.url, secret_key=KEY, **FREE_PORTS)
    with trio.fail_after(60):
        services = await serving(nursery, settings)
        async with httpx.AsyncClient(base_url=services.api_url) as http:
            r = await http.post("/api/v1/sceau/activate", json={"duration_ms": 2000})
            token = r.json()["session"]
            await pg_server.astop()
            # Sessions live in the coordinator: opened and checked without PostgreSQL.
            r = await http.post("/api/v1/sceau/activate", json={"duration_ms": 2000})
            assert r.status_code == 201
            during = r.json()["session"]
            r = await http.post("/api/v1/swarm/regroup", headers=bearer())
            assert r.status_code == 202
            async with open_websocket_url(f"{services.ws_url}?session={token}") as ws:
                assert json.loads(await ws.get_message())["type"] == "hello"
            # Issue 13 finding 6: a 503 says what; where (the database's address) and why stay
            # in the log.
            r = await http.get("/api/v1/health/ready")
            assert r.status_code == 503 and "the database is unavailable" in r.text
            pg_port = str(urlsplit(pg_server.url).port)
            assert pg_port not in r.text and "127.0.0.1" not in r.text
            await services.engine.retune(11, 654.5, command_id="during-outage")
            assert await frames_in(services.bus, 1.5) >= 80   # 60 fps regardless
            await pg_server.astart()
        with trio.fail_after(5):   # the session opened meanwhile is written behind
            while services.sessions.durable_pending:
                await trio.sleep(0.2)
        assert await services.store.get_session(token_hash(during)) is not None
        with trio.fail_after(5):
            while [r.frequency for r in await services.store.load_agents() if r.id == 11] != [654.5]:
                await trio.sleep(0.2)                     # the next snapshot lands
        # The event of the outage was held, not lost.
        with trio.fail_after(5):
            while not await services.store.events("retune"):
                await trio.sleep(0.2)
        assert (await services.store.events("retune"))[0] == EventRecord(
            (await services.store.events("retune"))[0].t, "retune",
            {"command_id": "during-outage", "agent": 11, "frequency": 654.5})
        services.extras["stop"]()


async def test_role_all_over_redis_runs_the_engine_behind_the_bus(nursery, redis_server, pg_url):
    settings = make_settings(redis_url=redis_server.url, database_url=pg_url, secret_key=KEY, **FREE_PORTS)
    with trio.fail_after(30):
        services = await serving(nursery, settings)
        assert isinstance(services.swarm, RemoteSwarm) and services.engine_role is not None
        await services.engine_role.leading.wait()
        while not services.swarm.ticking:
            await trio.sleep(0.05)
        assert await frames_in(services.bus, 0.5) >= 20     # frames come back through Redis
        result = await services.swarm.disperse("partial", "transport")
        assert result["dispersed"] == 10
        while len(services.swarm.agents(status="dispersed")) != 10:
            await trio.sleep(0.05)
        services.extras["stop"]()


async def test_a_ws_process_whose_redis_hangs_turns_not_ready_and_back(nursery, redis_server):
    """SIGSTOP of Redis: nothing fails, the frames just stop. The ws process's readiness goes
    by the age of the newest frame that *arrived*, so it turns 503 (the leader's too: its
    writes are not acknowledged); on SIGCONT its subscription, found silent (no PONG), has
    been made again, and it is ready once frames arrive again."""
    settings = make_settings(redis_url=redis_server.url, secret_key=KEY, **FREE_PORTS)
    with trio.fail_after(60):
        engine = await serving(nursery, settings, role="engine")
        ws = await serving(nursery, settings, role="ws")
        await engine.engine_role.leading.wait()
        async with httpx.AsyncClient(timeout=10) as http:
            async def ready(services) -> httpx.Response:
                return await http.get(f"{services.api_url}/api/v1/health/ready")

            while (await ready(ws)).status_code != 200:
                await trio.sleep(0.1)
            assert (await ready(engine)).json()["checks"]["writes"] == "ok"
            subscriptions = ws.bus.subscriptions
            os.kill(redis_server.proc.pid, signal.SIGSTOP)
            try:
                stopped = trio.current_time()
                while (r := await ready(ws)).status_code == 200:
                    await trio.sleep(0.1)
                assert trio.current_time() - stopped < app.FRAMES_FRESH_S + 2.5
                assert r.json()["checks"]["frames"].startswith("no frame for")
                assert (await ready(engine)).status_code == 503
                while ws.bus.subscriptions == subscriptions and ws.bus.up:
                    await trio.sleep(0.1)      # the silent subscription is given up
            finally:
                os.kill(redis_server.proc.pid, signal.SIGCONT)
            while (await ready(ws)).status_code != 200:
                await trio.sleep(0.1)
            assert ws.bus.subscriptions > subscriptions
    ws.extras["stop"]()
    engine.extras["stop"]()


async def test_api_processes_share_the_brise_circuit(nursery, redis_server, pg_url):
    settings = make_settings(redis_url=redis_server.url, database_url=pg_url, secret_key=KEY,
                             **FREE_PORTS)
    with trio.fail_after(30):
        await serving(nursery, settings, role="engine")
        first = await serving(nursery, settings, role="api")
        second = await serving(nursery, settings, role="api")
        for services in (first, second):
            if not services.bus.up:
                await services.bus.subscribed.wait()
        first.safeguard.trip("rate", "more than 30 commands in 60 s")
        while second.safeguard.state != "open":
            await trio.sleep(0.02)
        assert second.safeguard.status()["reason"] == "more than 30 commands in 60 s"
        first.safeguard.reset()
        while second.safeguard.state != "closed":
            await trio.sleep(0.02)
        assert first.safeguard.state == "closed"
        # An engine process's alarm: both API processes hear it, the circuit opens once.
        engine_alarms(first.bus)[1](6.0)
        for services in (first, second):
            while services.safeguard.state != "open":
                await trio.sleep(0.02)
        await trio.sleep(1.0)
        assert [s.safeguard.status()["trips"] for s in (first, second)] == [2, 2]


async def test_a_burst_from_one_address_outlasts_a_stalled_session_check(nursery, redis_server):
    """The handshake-flood bound (broadcaster/pending.py) counts only the wait for a client's
    request head, not the server's own work. Redis is stalled for real (SIGSTOP): the session's
    verification waits (a silent Redis fails a call only after 2 s: its 1 s socket timeout, one
    retry, the 2 s bound of every call), and more than PER_ADDRESS complete handshakes from
    127.0.0.1 wait in it longer than STALE_AFTER_S. Once Redis answers, every one gets its 101."""
    settings = make_settings(redis_url=redis_server.url, secret_key=KEY,
                             ws_require_session="true", **FREE_PORTS)
    with trio.fail_after(30):
        services = await serving(nursery, settings)
        async with httpx.AsyncClient(base_url=services.api_url) as http:
            r = await http.post("/api/v1/sceau/activate", json={"duration_ms": 2000})
            token = r.json()["session"]
        port = services.broadcaster.port
        resumed = False
        answers: list[tuple[bytes, bool]] = []   # status line, answered after Redis resumed

        async def subscribe() -> None:
            stream, head, _ = await raw_subscribe(port, f"?session={token}")
            answers.append((head.split(b"\r\n")[0], resumed))
            await stream.aclose()

        os.kill(redis_server.proc.pid, signal.SIGSTOP)
        try:
            async with trio.open_nursery() as clients:
                for _ in range(PER_ADDRESS):
                    clients.start_soon(subscribe)
                await trio.sleep(STALE_AFTER_S + 0.2)    # they wait in verification, all stale
                for _ in range(4):
                    clients.start_soon(subscribe)
                await trio.sleep(0.25)
                resumed = True
                os.kill(redis_server.proc.pid, signal.SIGCONT)
        finally:
            os.kill(redis_server.proc.pid, signal.SIGCONT)
        assert answers == [(b"HTTP/1.1 101 Switching Protocols", True)] * (PER_ADDRESS + 4)
        assert services.broadcaster.stats.refused == {}
        services.extras["stop"]()
