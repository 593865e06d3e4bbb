"""``atom serve --role ...`` as real processes meeting on a throwaway Redis: kill -9 of the
engine leader, a clean handover, two ws processes and an api process against one engine, and
a Redis restart under them."""

from __future__ import annotations

import json
import re
from collections import Counter

import httpx
import trio

from atom_actors.bus.redis import RedisBus
from atom_actors.catalog import CATALOG
from atom_actors.coordinator.redis import RedisCoordinator
from atom_actors.errors import BackendUnavailable
from atom_actors.protocol import DeltaDecoder, decode_binary
from atom_actors.remote import RemoteSwarm

from .conftest import make_settings
from tests.operators import bearer
from .servers import atom_env, sql
from .test_broadcaster import open_websocket_url

SETTINGS = make_settings(dispersal_dwell_s=600)
TAKEOVER_S = 3.0


async def api_side(nursery: trio.Nursery, url: str) -> RemoteSwarm:
    """What an api process runs to reach the engine, in the test's own trio.run."""
    bus = await nursery.start(RedisBus(url).run)
    coordinator = await nursery.start(RedisCoordinator(url).run)
    control = await nursery.start(RemoteSwarm(SETTINGS, bus, coordinator).run)
    while not control.ticking:
        await trio.sleep(0.05)
    return control


async def leader_and_standby(atom_processes, env: dict[str, str]):
    leader = await atom_processes(["serve", "--role", "engine"], env)
    await leader.wait_for("engine leading")
    standby = await atom_processes(["serve", "--role", "engine"], env)
    await standby.wait_for("engine standing by")
    return leader, standby


async def next_frame_after(bus: RedisBus, seq: int) -> int:
    sub = bus.subscribe_frames()
    while (frame := await sub.receive()).seq <= seq:
        pass
    return frame.seq


async def test_kill_9_of_the_leader_the_standby_takes_over_and_applies_every_command_once(
        nursery, atom_processes, redis_server, pg_url):
    env = atom_env(REDIS_URL=redis_server.url, DATABASE_URL=pg_url, DISPERSAL_DWELL_S="600")
    with trio.fail_after(120):
        leader, standby = await leader_and_standby(atom_processes, env)
        control = await api_side(nursery, redis_server.url)

        accepted: list[str] = []
        retuned: dict[int, float] = {}
        half_sent, all_sent = trio.Event(), trio.Event()

        async def send() -> None:
            for i in range(60):
                command_id = f"cmd-{i:02d}"
                try:
                    if i % 4 == 0:
                        await control.disperse("partial", CATALOG.spheres[i % 15].name, command_id)
                    else:
                        await control.retune(100 + i, 500.0 + i, command_id)
                        retuned[100 + i] = 500.0 + i
                    accepted.append(command_id)
                except BackendUnavailable:
                    pass
                if i == 24:
                    half_sent.set()
                await trio.sleep(0.03)
            all_sent.set()

        nursery.start_soon(send)
        await half_sent.wait()
        last_seq = control.bus.latest_frame.seq
        leader.kill()                                   # kill -9: no goodbye, the lease just runs out
        killed = trio.current_time()
        await next_frame_after(control.bus, last_seq)   # the standby's frames go on from there
        assert trio.current_time() - killed < TAKEOVER_S
        assert "state from checkpoint" in await standby.wait_for("engine leading")
        await all_sent.wait()
        assert len(accepted) == 60                      # Redis was up: every command accepted

        log = await control.coordinator.applied_log()
        while Counter(log) != Counter(accepted):
            assert not set(log) - set(accepted) and max(Counter(log).values(), default=1) == 1, log
            await trio.sleep(0.1)
            log = await control.coordinator.applied_log()
        while any(control.state.frequency[a] != hz for a, hz in retuned.items()):
            await trio.sleep(0.1)
        # The event log holds each command once, whichever leader applied it.
        # (written behind, within a moment: answers no longer wait for the engine's events)
        while (recorded := Counter(r["id"] for r in await sql(
                pg_url, "SELECT kind, payload->>'command_id' AS id FROM events"))) != Counter(accepted):
            assert not set(recorded) - set(accepted) and max(recorded.values(), default=1) == 1
            await trio.sleep(0.1)
        assert await standby.stop() == 0


async def test_a_clean_stop_hands_the_lease_over_at_once(nursery, atom_processes, redis_server):
    env = atom_env(REDIS_URL=redis_server.url)
    with trio.fail_after(60):
        first, second = await leader_and_standby(atom_processes, env)
        control = await api_side(nursery, redis_server.url)
        await control.retune(7, 888.0, command_id="before")
        # The handover is timed from the stop request to the standby leading; the first
        # process's interpreter may still be exiting meanwhile (seconds on a loaded machine).
        stopping = trio.current_time()
        first.proc.terminate()
        assert "state from checkpoint" in await second.wait_for("engine leading")
        assert trio.current_time() - stopping < 1.5
        assert await first.proc.wait() == 0
        while control.state.frequency[7] != 888.0 or not control.ticking:
            await trio.sleep(0.05)
        assert await control.coordinator.applied_log() == ["before"]   # not applied again
        assert await second.stop() == 0


def url_in(line: str, kind: str) -> str:
    return re.search(rf"{kind} (\S+?)(,|$)", line).group(1)


async def messages_until(ws, predicate, limit: int = 2000):
    """Read ``ws`` until a message satisfies ``predicate``; return it."""
    for _ in range(limit):
        message = await ws.get_message()
        if predicate(message):
            return message
    raise AssertionError("no such message")


def is_frame(message) -> bool:
    return isinstance(message, bytes)


def is_event(name: str, command_id: str):
    def check(message) -> bool:
        if isinstance(message, bytes):
            return False
        event = json.loads(message)
        return event.get("event") == name and event.get("command_id") == command_id
    return check


async def split_deployment(atom_processes, env: dict[str, str], ws_count: int):
    """An engine, ``ws_count`` ws processes and one api process; their URLs."""
    engine = await atom_processes(["serve", "--role", "engine"], env)
    await engine.wait_for("engine leading")
    ws = [await atom_processes(["serve", "--role", "ws"], env) for _ in range(ws_count)]
    api = await atom_processes(["serve", "--role", "api"], env)
    ws_urls = [url_in(await p.wait_for("serving:"), "ws") for p in ws]
    api_url = url_in(await api.wait_for("serving:"), "api")
    return engine, ws_urls, api_url


async def test_two_ws_processes_and_one_api_process_against_one_engine(
        nursery, atom_processes, redis_server, pg_url):
    env = atom_env(REDIS_URL=redis_server.url, DATABASE_URL=pg_url, DISPERSAL_DWELL_S="600")
    with trio.fail_after(90):
        _, ws_urls, api_url = await split_deployment(atom_processes, env, 2)
        async with httpx.AsyncClient(base_url=api_url) as http:
            r = await http.post("/api/v1/sceau/activate", json={"duration_ms": 2000})
            assert r.status_code == 201
            session = {"X-Sceau-Session": r.json()["session"]}
            while (await http.get("/api/v1/health/ready")).status_code != 200:
                await trio.sleep(0.1)
            # The session the api process opened lets a subscriber into both ws processes.
            async with open_websocket_url(f"{ws_urls[0]}?session={session['X-Sceau-Session']}") as a, \
                    open_websocket_url(f"{ws_urls[1]}?session={session['X-Sceau-Session']}") as b:
                hellos = [json.loads(await ws.get_message()) for ws in (a, b)]
                assert hellos[0]["roster"] == hellos[1]["roster"] and len(hellos[0]["roster"]) == 350
                seqs = [decode_binary(await messages_until(ws, is_frame))[0] for ws in (a, b)]
                assert abs(seqs[0] - seqs[1]) < 30        # one engine's frames, in both

                r = await http.post("/api/v1/swarm/disperse", headers=bearer(),
                                    json={"level": "partial", "sphere": "transport"})
                assert r.status_code == 202 and r.json()["dispersed"] == 10
                command_id = r.json()["command_id"]
                for ws in (a, b):
                    event = json.loads(await messages_until(ws, is_event("swarm.dispersal", command_id)))
                    assert event["count"] == 10 and event["sphere"] == "transport"
                # The api process counts the subscribers of every ws process.
                while (await http.get("/api/v1/swarm", headers=session)).json()["subscribers"] != 2:
                    await trio.sleep(0.2)

            r = await http.put("/api/v1/swarm/agents/42/frequency", headers=bearer(),
                               json={"frequency": 701.5})
            assert r.status_code == 200 and r.json()["frequency"] == 701.5
            while len((await http.get("/api/v1/swarm/agents?status=dispersed",
                                      headers=session)).json()) != 10:
                await trio.sleep(0.1)
            summary = (await http.get("/api/v1/swarm", headers=session)).json()
            assert summary["by_status"]["dispersed"] == 10 and summary["ticking"]


async def test_redis_restarted_broadcasters_keep_their_clients_and_commands_fail_fast(
        nursery, atom_processes, redis_server, pg_url):
    env = atom_env(REDIS_URL=redis_server.url, DATABASE_URL=pg_url)
    with trio.fail_after(90):
        _, ws_urls, api_url = await split_deployment(atom_processes, env, 1)
        async with httpx.AsyncClient(base_url=api_url) as http:
            r = await http.post("/api/v1/sceau/activate", json={"duration_ms": 2000})
            session = {"X-Sceau-Session": r.json()["session"]}
            async with open_websocket_url(f"{ws_urls[0]}?session={session['X-Sceau-Session']}") as ws:
                await messages_until(ws, is_frame)
                await redis_server.astop()
                start = trio.current_time()
                r = await http.post("/api/v1/swarm/disperse", headers=bearer(), json={"level": "partial"})
                assert trio.current_time() - start < 1.0
                assert r.status_code == 503 and r.json()["error"] == "backend_unavailable"
                # Drain what was in flight, then nothing comes while Redis is away.
                with trio.move_on_after(0.5):
                    while True:
                        await ws.get_message()
                await redis_server.astart()
                back = trio.current_time()
                last = None
                while True:   # the same connection: the client was kept
                    message = await ws.get_message()
                    if is_frame(message):
                        break
                assert trio.current_time() - back < 2.0
                last = decode_binary(message)[0]
                assert decode_binary(await messages_until(ws, is_frame))[0] > last
            r = await http.post("/api/v1/swarm/disperse", headers=bearer(), json={"level": "partial"})
            assert r.status_code == 202


async def test_a_ws_process_streams_delta_exactly_across_an_engine_failover(
        nursery, atom_processes, redis_server):
    """A ``ws`` process fed through Redis derives q16 and the deltas from the frames it receives;
    when the engine leader is killed and the standby goes on (a seq jump, maybe a pause), every
    delta frame still decodes to the q16 frame of the same seq."""
    env = atom_env(REDIS_URL=redis_server.url, WS_REQUIRE_SESSION="false")
    with trio.fail_after(120):
        leader, _ = await leader_and_standby(atom_processes, env)
        ws_process = await atom_processes(["serve", "--role", "ws"], env)
        url = url_in(await ws_process.wait_for("serving:"), "ws")
        truth: dict[int, bytes] = {}
        decoded: list[tuple[int, bytes]] = []
        decoder = DeltaDecoder()
        async with open_websocket_url(f"{url}?encoding=q16") as q16, \
                open_websocket_url(f"{url}?encoding=delta") as delta:
            assert json.loads(await delta.get_message())["encoding"] == "delta"
            await q16.get_message()

            async def read_q16() -> None:
                while True:
                    frame = await messages_until(q16, is_frame)
                    truth[decode_binary(frame)[0]] = frame[16:]

            async def read_delta(count: int) -> None:
                while len(decoded) < count:
                    seq, _, q = decoder.decode(await messages_until(delta, is_frame))
                    decoded.append((seq, q.tobytes()))

            async with trio.open_nursery() as readers:
                readers.start_soon(read_q16)
                await read_delta(60)
                leader.kill()
                await read_delta(len(decoded) + 180)   # the standby's frames, three seconds
                readers.cancel_scope.cancel()
    seqs = [seq for seq, _ in decoded]
    assert max(b - a for a, b in zip(seqs, seqs[1:])) > 1, "the failover skipped frames"
    compared = [seq for seq, q in decoded if seq in truth]
    assert len(compared) > 200
    assert all(truth[seq] == q for seq, q in decoded if seq in truth), "a delta frame differs"
