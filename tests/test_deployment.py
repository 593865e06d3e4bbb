"""One deployment, one truth: ``atom serve --role ...`` processes meeting on a throwaway Redis
(and PostgreSQL where it is stopped). Sessions shared through Redis with PostgreSQL optional, a
revoked or expired session's streams closed 4401 on every ws process, one Brise-Circuit for
three API processes, and every role answering /metrics and readiness on API_PORT."""

from __future__ import annotations

import json

import httpx
import trio

from .operators import bearer
from .servers import atom_env, sql
from .test_broadcaster import open_websocket_url
from .test_guard import closed_with
from .test_roles import url_in

CLOSE_WITHIN_S = 1.0


async def start_roles(atom_processes, env: dict[str, str], *roles: str) -> list[tuple[object, str, str]]:
    """Start ``roles`` in order (the engine first, when there is one); each as (process, its
    API_PORT URL, its ws URL or "")."""
    started = []
    for role in roles:
        process = await atom_processes(["serve", "--role", role], env)
        line = await process.wait_for("serving:")
        started.append((process, url_in(line, "api"), url_in(line, "ws") if role == "ws" else ""))
        if role == "engine" and len([r for r in roles[:len(started)] if r == "engine"]) == 1:
            await process.wait_for("engine leading")
    return started


async def until_ready(http: httpx.AsyncClient, url: str) -> dict:
    while (r := await http.get(f"{url}/api/v1/health/ready")).status_code != 200:
        await trio.sleep(0.1)
    return r.json()


async def session(http: httpx.AsyncClient, api: str) -> str:
    r = await http.post(f"{api}/api/v1/sceau/activate", json={"duration_ms": 2000})
    assert r.status_code == 201, r.text
    return r.json()["session"]


async def test_revoked_and_expired_sessions_close_their_streams_on_every_ws_process(
        atom_processes, redis_server):
    """Split roles with REDIS_URL only (no PostgreSQL): sessions live in Redis."""
    env = atom_env(REDIS_URL=redis_server.url, SESSION_TTL_S="8")
    with trio.fail_after(120):
        _, (_, _, ws1), (_, _, ws2), (_, api, _) = await start_roles(
            atom_processes, env, "engine", "ws", "ws", "api")
        async with httpx.AsyncClient(timeout=10) as http:
            await until_ready(http, api)
            revoked, expiring = [await session(http, api) for _ in range(2)]
            opened = trio.current_time()
            streams = {}
            async with trio.open_nursery() as nursery:
                for token in (revoked, expiring):
                    for ws_url in (ws1, ws2):
                        ws = await nursery.start(_subscriber, f"{ws_url}?session={token}&fps=1")
                        streams[(token, ws_url)] = ws
                r = await http.delete(f"{api}/api/v1/sceau/session",
                                      headers={"X-Sceau-Session": revoked})
                assert r.status_code == 204
                at_revocation = trio.current_time()
                r = await http.get(f"{api}/api/v1/swarm", headers={"X-Sceau-Session": revoked})
                assert r.status_code == 401                       # REST: at once
                for ws_url in (ws1, ws2):
                    code, reason, at = await closed_with(streams[(revoked, ws_url)])
                    assert (code, reason) == (4401, "session ended")
                    assert at - at_revocation < CLOSE_WITHIN_S
                for ws_url in (ws1, ws2):   # the other session's streams go on meanwhile
                    await streams[(expiring, ws_url)].get_message()
                for ws_url in (ws1, ws2):
                    code, _, at = await closed_with(streams[(expiring, ws_url)])
                    assert code == 4401 and 7.0 <= at - opened < 8.0 + CLOSE_WITHIN_S
                r = await http.get(f"{api}/api/v1/swarm", headers={"X-Sceau-Session": expiring})
                assert r.status_code == 401
                nursery.cancel_scope.cancel()


async def _subscriber(url: str, *, task_status) -> None:
    async with open_websocket_url(url) as ws:
        assert json.loads(await ws.get_message())["type"] == "hello"
        task_status.started(ws)
        await trio.sleep_forever()


async def test_three_api_processes_trip_one_brise_circuit_on_exactly_one_process_s_command(
        atom_processes, redis_server):
    env = atom_env(REDIS_URL=redis_server.url, SAFEGUARD_MAX_COMMANDS="7",
                   SAFEGUARD_COOLDOWN_S="600")
    with trio.fail_after(120):
        started = await start_roles(atom_processes, env, "engine", "api", "api", "api")
        apis = [url for _, url, _ in started[1:]]
        async with httpx.AsyncClient(timeout=10) as http:
            for api in apis:
                await until_ready(http, api)
            headers = {"X-Sceau-Session": await session(http, apis[0])}
            operator = bearer()
            statuses = []
            for i in range(9):   # round robin: 7 accepted, the 8th trips it, the 9th finds it open
                r = await http.post(f"{apis[i % 3]}/api/v1/swarm/regroup", headers=operator)
                statuses.append(r.status_code)
            assert statuses == [202] * 7 + [423, 423]
            for api in apis:
                status = (await http.get(f"{api}/api/v1/safeguard", headers=headers)).json()
                assert status["state"] == "open" and status["trips"] == 1
                assert status["reason"] == "more than 7 commands in 60 s"
            # A reset anywhere is seen everywhere within a second.
            assert (await http.post(f"{apis[2]}/api/v1/safeguard/reset",
                                    headers=operator)).status_code == 200
            reset = trio.current_time()
            for api in apis:
                while (await http.get(f"{api}/api/v1/safeguard",
                                      headers=headers)).json()["state"] != "closed":
                    await trio.sleep(0.05)
                assert trio.current_time() - reset < 1.0
            assert (await http.post(f"{apis[0]}/api/v1/swarm/regroup",
                                    headers=operator)).status_code == 202


async def test_every_role_serves_metrics_health_and_readiness_on_its_api_port(
        atom_processes, redis_server):
    env = atom_env(REDIS_URL=redis_server.url)
    with trio.fail_after(120):
        (_, ws, ws_url), = await start_roles(atom_processes, env, "ws")
        async with httpx.AsyncClient(timeout=10) as http:
            # No engine yet: the ws process answers, but is not ready (no frame comes).
            assert (await http.get(f"{ws}/api/v1/health")).json() == {"status": "ok", "role": "ws"}
            r = await http.get(f"{ws}/api/v1/health/ready")
            assert r.status_code == 503 and r.json()["checks"]["frames"] == "no frame yet"
            (_, leader, _), (_, standby, _) = await start_roles(atom_processes, env, "engine", "engine")
            assert (await http.get(f"{leader}/api/v1/health")).json()["engine"] == "leading"
            assert (await http.get(f"{standby}/api/v1/health")).json()["engine"] == "standing by"
            for url in (leader, standby, ws):
                assert (await until_ready(http, url))["status"] == "ready"
            metrics = (await http.get(f"{leader}/metrics")).text
            assert "atom_frames_composed_total" in metrics and "atom_tick_lateness_seconds_bucket" in metrics
            assert 'atom_actor_restarts_total{actor="sphere/transport"}' in metrics
            assert "atom_frames_composed_total" not in (await http.get(f"{standby}/metrics")).text
            ws_metrics = (await http.get(f"{ws}/metrics"))
            assert ws_metrics.headers["content-type"].startswith("text/plain")
            assert "atom_subscribers" in ws_metrics.text
            r = await http.get(f"{ws}/api/v1/swarm")
            assert r.status_code == 404 and r.json()["error"] == "not_found"
            await redis_server.astop()
            r = await http.get(f"{leader}/api/v1/health/ready")
            assert r.status_code == 503 and r.json()["checks"]["coordinator"] != "ok"


async def test_commands_succeed_while_postgresql_is_down_and_are_recorded_after(
        atom_processes, redis_server, pg_server):
    env = atom_env(REDIS_URL=redis_server.url, DATABASE_URL=pg_server.url)
    with trio.fail_after(120):
        _, (_, api, _) = await start_roles(atom_processes, env, "engine", "api")
        async with httpx.AsyncClient(timeout=10) as http:
            await until_ready(http, api)
            before = await session(http, api)
            await pg_server.astop()
            during = await session(http, api)                    # no PostgreSQL: still 201
            ids = []
            for token in (before, during):
                r = await http.post(f"{api}/api/v1/swarm/disperse",
                                    headers={"X-Sceau-Session": token, **bearer()},
                                    json={"level": "partial", "sphere": "transport"})
                assert r.status_code == 202
                ids.append(r.json()["command_id"])
            r = await http.post(f"{api}/api/v1/swarm/regroup", headers=bearer())
            assert r.status_code == 202
            ids.append(r.json()["command_id"])
            await pg_server.astart()
            # Caught up once it is back: each command once in the events table, the session too.
            while sorted(r["id"] for r in await sql(
                    pg_server.url, "SELECT payload->>'command_id' AS id FROM events "
                                   "WHERE kind <> 'safeguard'")) != sorted(ids):
                await trio.sleep(0.2)
            assert len(await sql(pg_server.url, "SELECT id FROM sessions")) == 2
