"""``atom serve --role ...`` as real processes meeting on a throwaway Redis: kill -9 of the
engine leader, a clean handover, and the fault of a Redis restart under running processes."""

from __future__ import annotations

from collections import Counter

import trio

from atom_actors.bus.redis import RedisBus
from atom_actors.catalog import CATALOG
from atom_actors.errors import BackendUnavailable
from atom_actors.remote import RemoteSwarm

from .conftest import make_settings
from .servers import atom_env, sql

SETTINGS = make_settings(dispersal_dwell_s=600)
TAKEOVER_S = 3.0


async def api_side(nursery: trio.Nursery, url: str) -> RemoteSwarm:
    """What an api process runs to reach the engine, in the test's own trio.run."""
    bus = await nursery.start(RedisBus(url, summaries=True).run)
    control = await nursery.start(RemoteSwarm(SETTINGS, bus).run)
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

        log = await control.bus.applied_log()
        while Counter(log) != Counter(accepted):
            assert not set(log) - set(accepted) and max(Counter(log).values(), default=1) == 1, log
            await trio.sleep(0.1)
            log = await control.bus.applied_log()
        while any(control.state.frequency[a] != hz for a, hz in retuned.items()):
            await trio.sleep(0.1)
        # The event log holds each command once, whichever leader applied it.
        rows = await sql(pg_url, "SELECT kind, payload->>'command_id' AS id FROM events")
        assert Counter(r["id"] for r in rows) == Counter(accepted)
        assert await standby.stop() == 0


async def test_a_clean_stop_hands_the_lease_over_at_once(nursery, atom_processes, redis_server):
    env = atom_env(REDIS_URL=redis_server.url)
    with trio.fail_after(60):
        first, second = await leader_and_standby(atom_processes, env)
        control = await api_side(nursery, redis_server.url)
        await control.retune(7, 888.0, command_id="before")
        stopping = trio.current_time()
        assert await first.stop() == 0
        assert "state from checkpoint" in await second.wait_for("engine leading")
        assert trio.current_time() - stopping < 1.5
        while control.state.frequency[7] != 888.0 or not control.ticking:
            await trio.sleep(0.05)
        assert await control.bus.applied_log() == ["before"]   # not applied again
        assert await second.stop() == 0
