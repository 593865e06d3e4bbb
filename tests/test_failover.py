"""Redis is no longer a single point of failure (issue 20, part A): ``atom serve`` roles as real
processes on a ``redis+sentinel://`` URL (tests/sentinel.py: a primary, two replicas, three
sentinels, down-after-milliseconds 1000). Discovery, kill -9 of the primary under commands,
a replica that stops acknowledging (REDIS_MIN_ACKS), Idempotency-Key across API processes.
Real time; every test bounded by ``trio.fail_after``; every process stopped by its fixture."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter

import httpx
import trio

from atom_actors.coordinator.redis import RedisCoordinator
from atom_actors.protocol import decode_binary

from .operators import bearer
from .servers import atom_env
from .test_broadcaster import open_websocket_url
from .test_roles import is_frame, url_in

KEY = "Idempotency-Key"


async def operator_headers(http: httpx.AsyncClient) -> dict[str, str]:
    """What an operator allowed to send commands presents (the one place that says how), and a
    Sceau session for the stream."""
    r = await http.post("/api/v1/sceau/activate", json={"duration_ms": 2000})
    assert r.status_code == 201, r.text
    return {"X-Sceau-Session": r.json()["session"], **bearer()}


async def start_role(atom_processes, role: str, env: dict[str, str]) -> str:
    process = await atom_processes(["serve", "--role", role], env)
    line = await process.wait_for("serving:")
    return url_in(line, "ws" if role == "ws" else "api")


async def until_ready(url: str) -> None:
    async with httpx.AsyncClient(base_url=url) as http:
        while (await http.get("/api/v1/health/ready")).status_code != 200:
            await trio.sleep(0.1)


def test_a_bad_sentinel_url_stops_every_role_with_one_line(tmp_path):
    for role in ("engine", "api", "ws"):
        done = subprocess.run(
            [sys.executable, "-m", "atom_actors", "serve", "--role", role], cwd=tmp_path,
            env=atom_env(REDIS_URL="redis+sentinel://:hunter2@127.0.0.1:26379,127.0.0.1:26380"),
            capture_output=True, text=True, timeout=30)
        assert done.returncode == 2
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("atom: bad setting REDIS_URL: names no master")
        assert "hunter2" not in done.stderr


async def test_every_role_finds_the_primary_through_the_sentinels(atom_processes, sentinel_cluster):
    env = atom_env(REDIS_URL=sentinel_cluster.url, DISPERSAL_DWELL_S="600")
    with trio.fail_after(90):
        await start_role(atom_processes, "engine", env)
        ws_url = await start_role(atom_processes, "ws", env)
        api_url = await start_role(atom_processes, "api", env)
        await until_ready(api_url)
        async with httpx.AsyncClient(base_url=api_url, timeout=10) as http:
            headers = await operator_headers(http)
            r = await http.post("/api/v1/swarm/disperse", headers=headers, json={"level": "partial"})
            assert r.status_code == 202, r.text
            async with open_websocket_url(f"{ws_url}?session={headers['X-Sceau-Session']}") as ws:
                assert json.loads(await ws.get_message())["type"] == "hello"
                while not is_frame(await ws.get_message()):
                    pass
    with sentinel_cluster.primary.client() as c:   # the command went to the primary, replicated
        assert c.info("replication")["connected_slaves"] == 2
        assert c.exists("atom:engine:lease") == 1


async def test_kill_9_of_the_primary_loses_no_accepted_command_and_the_stream_resumes(
        atom_processes, sentinel_cluster, nursery):
    """Commands go on through the kill: each is answered 202 or 503 (outcome unknown), never
    202 and lost. Those answered 503 are retried with their key, through the other API
    process, until 202; some answered 202 are retried too and replay their first answer. In the
    end every command is applied exactly once, and the ws process streams again."""
    cluster = sentinel_cluster
    env = atom_env(REDIS_URL=cluster.url, DISPERSAL_DWELL_S="600", SAFEGUARD_MAX_COMMANDS="100000")
    with trio.fail_after(150):
        await start_role(atom_processes, "engine", env)
        ws_url = await start_role(atom_processes, "ws", env)
        api_urls = [await start_role(atom_processes, "api", env) for _ in range(2)]
        for url in api_urls:
            await until_ready(url)
        first = httpx.AsyncClient(base_url=api_urls[0], timeout=10)
        other = httpx.AsyncClient(base_url=api_urls[1], timeout=10)
        async with first, other:
            headers = await operator_headers(first)
            answers: dict[str, list[tuple[int, float]]] = {}   # key -> [(status, seconds)]
            bodies: dict[str, bytes] = {}
            killed_at: list[float] = []
            arrivals: list[tuple[float, float]] = []          # (received, frame's server time)

            async def command(http: httpx.AsyncClient, i: int) -> int:
                key = f"retune-{i:03d}"
                started = trio.current_time()
                r = await http.put(f"/api/v1/swarm/agents/{i}/frequency", json={"frequency": 600 + i},
                                   headers={**headers, KEY: key})
                answers.setdefault(key, []).append((r.status_code, trio.current_time() - started))
                assert r.status_code in (200, 409, 503), r.text
                if r.status_code == 503:   # before the command was sent, or its write unconfirmed
                    assert r.json()["error"] == "backend_unavailable"
                    detail = r.json()["detail"]
                    assert detail == "redis is unavailable" or "outcome is unknown" in detail
                if r.status_code == 200:
                    bodies.setdefault(key, r.content)
                return r.status_code

            async def watch(task_status=trio.TASK_STATUS_IGNORED) -> None:
                url = f"{ws_url}?session={headers['X-Sceau-Session']}"
                async with open_websocket_url(url) as ws:
                    await ws.get_message()
                    task_status.started()
                    while True:
                        message = await ws.get_message()
                        if is_frame(message):
                            arrivals.append((time.time(), decode_binary(message)[1]))

            await nursery.start(watch)
            for i in range(200):
                await command(first, i)
                if i == 40:
                    old = cluster.primary
                    await cluster.akill(old)
                    killed_at.append(time.time())
                if killed_at and i >= 60 and cluster.primary_port() not in (None, old.port) \
                        and any(s == 200 for s, _ in answers[f"retune-{i:03d}"]):
                    break
                await trio.sleep(0.02)
            sent = i + 1
            # Retried with their keys, through the other API process, until answered.
            for key, tried in list(answers.items()):
                while tried[-1][0] != 200:
                    await trio.sleep(0.1)
                    tried = answers[key]
                    await command(other, int(key.split("-")[1]))
            for key in [k for k in bodies][:10]:      # answered already: the first answer again
                r = await other.put(f"/api/v1/swarm/agents/{int(key.split('-')[1])}/frequency",
                                    json={"frequency": 600 + int(key.split('-')[1])},
                                    headers={**headers, KEY: key})
                assert (r.status_code, r.content) == (200, bodies[key])
                assert r.headers["idempotent-replayed"] == "true"

            coordinator = await nursery.start(RedisCoordinator(cluster.url, summaries=False,
                                                               revocations=False).run)
            expected = {f"retune-{i:03d}" for i in range(sent)}
            while True:
                log = await coordinator.applied_log()
                applied = Counter(log)
                if len(applied) >= sent:
                    break
                await trio.sleep(0.2)
            assert max(applied.values()) == 1, "a command applied twice"
            assert len(applied) == sent == len(expected)
            # The stream came back on the ws process: frames composed after the kill arrived.
            while not any(t > killed_at[0] for _, t in arrivals):
                await trio.sleep(0.1)
            resumed = min(received for received, t in arrivals if t > killed_at[0])
            nursery.cancel_scope.cancel()
    refused = sum(1 for tried in answers.values() if tried[0][0] != 200)
    print(f"\nfailover: {sent} commands, {refused} answered 503/409 first and retried with "
          f"their key, stream back {resumed - killed_at[0]:.2f} s after kill -9")


async def test_a_replica_that_stops_acknowledging_gets_503_within_the_bound_and_none_202(
        atom_processes, sentinel_cluster):
    cluster = sentinel_cluster
    env = atom_env(REDIS_URL=cluster.url, REDIS_MIN_ACKS="2", DISPERSAL_DWELL_S="600")
    with trio.fail_after(90):
        await start_role(atom_processes, "engine", env)
        api_url = await start_role(atom_processes, "api", env)
        await until_ready(api_url)
        async with httpx.AsyncClient(base_url=api_url, timeout=10) as http:
            headers = await operator_headers(http)
            r = await http.post("/api/v1/swarm/regroup", headers={**headers, KEY: "before"})
            assert r.status_code == 202
            ids = [r.json()["command_id"]]
            hung = cluster.replicas[0]
            hung.pause()
            try:
                took = []
                for i in range(8):
                    started = trio.current_time()
                    r = await http.post("/api/v1/swarm/regroup", headers={**headers, KEY: f"k{i}"})
                    took.append(trio.current_time() - started)
                    assert r.status_code == 503, r.text
                    assert "outcome is unknown" in r.json()["detail"]
                assert max(took) < 1.5, took    # WAIT's 0.5 s and the request around it
            finally:
                hung.resume()
            for i in range(8):   # retried with their keys once the replica is back: accepted
                while (r := await http.post("/api/v1/swarm/regroup",
                                            headers={**headers, KEY: f"k{i}"})).status_code != 202:
                    await trio.sleep(0.2)
                ids.append(r.json()["command_id"])
    async with trio.open_nursery() as nursery:
        coordinator = await nursery.start(RedisCoordinator(cluster.url, summaries=False,
                                                           revocations=False).run)
        with trio.fail_after(20):
            while len(log := await coordinator.applied_log()) < 9:
                await trio.sleep(0.2)
        # Each once: the 503 ones were in the stream already and their retries carried the
        # same command ids (the key's record), so the engine applied none of them twice.
        assert sorted(log) == sorted(ids) and len(set(log)) == 9
        nursery.cancel_scope.cancel()
