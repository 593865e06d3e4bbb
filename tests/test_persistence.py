"""Restore, snapshots, the event log and the state codecs, on virtual time with the memory store
(the PostgreSQL store under the same calls is covered by test_store_postgres and test_app)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import trio

from atom_actors.bus import MemoryBus
from atom_actors.engine import Engine
from atom_actors.errors import BackendUnavailable
from atom_actors.persistence import (EventLog, agent_rows, apply_checkpoint,
                                     decode_checkpoint, decode_summary, encode_checkpoint,
                                     encode_summary, restore_from_store, restore_rows,
                                     snapshot_agents)
from atom_actors.store import MemoryStore
from atom_actors.swarm import FLY_S

from .conftest import make_settings


class FlakyStore(MemoryStore):
    """The memory store, counting writes, and down while ``down`` is true."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.writes: list[float] = []

    async def save_agents(self, rows):
        if self.down:
            raise BackendUnavailable("postgresql", "stopped for the test")
        self.writes.append(trio.current_time())
        await super().save_agents(rows)

    async def record_event(self, record):
        if self.down:
            raise BackendUnavailable("postgresql", "stopped for the test")
        await super().record_event(record)


async def lived_in_engine(nursery: trio.Nursery, **settings) -> Engine:
    """An engine that has dispersed some agents (now out and dwelling) and retuned one."""
    engine = await nursery.start(Engine(make_settings(**settings), MemoryBus()).run)
    await engine.disperse("partial")
    await engine.retune(3, 512.5)
    await trio.sleep(FLY_S + 0.5)
    return engine


async def test_a_snapshot_restores_statuses_frequencies_and_positions(autojump_clock, nursery):
    old = await lived_in_engine(nursery, dispersal_dwell_s=30)
    rows = agent_rows(old.state)
    fresh = Engine(make_settings(dispersal_dwell_s=30), MemoryBus())
    assert restore_rows(fresh.state, rows, fresh.clock.now(), fresh.dwell_s)
    assert fresh.state.status.tolist() == old.state.status.tolist()
    assert fresh.state.frequency.tolist() == pytest.approx(old.state.frequency.tolist())
    assert fresh.state.frequency[3] == 512.5
    # Where the snapshot saw them: same seed, same orbits, so the fit is exact (f32 rounding).
    assert np.allclose(fresh.state.positions, old.state.positions, atol=1e-3)


async def test_restored_dispersed_agents_dwell_again_then_come_home(autojump_clock, nursery):
    old = await lived_in_engine(nursery, dispersal_dwell_s=5)
    store = MemoryStore()
    await store.save_agents(agent_rows(old.state))
    fresh = Engine(make_settings(dispersal_dwell_s=5), MemoryBus())
    assert await restore_from_store(fresh, store)
    await nursery.start(fresh.run)
    assert len(fresh.agents(status="dispersed")) == 70
    await trio.sleep(5 + FLY_S + 0.1)
    assert len(fresh.agents(status="active")) == 350


async def test_another_seed_keeps_statuses_and_frequencies(autojump_clock, nursery):
    old = await lived_in_engine(nursery, swarm_seed=1)
    fresh = Engine(make_settings(swarm_seed=2), MemoryBus())
    assert restore_rows(fresh.state, agent_rows(old.state), fresh.clock.now(), fresh.dwell_s)
    assert fresh.state.status.tolist() == old.state.status.tolist()
    assert fresh.state.frequency.tolist() == pytest.approx(old.state.frequency.tolist())


async def test_rows_of_another_catalog_are_refused_and_change_nothing(autojump_clock):
    engine = Engine(make_settings(), MemoryBus())
    before = engine.state.frequency.copy()
    rows = agent_rows(engine.state)
    other_sphere = [dataclasses.replace(r, sphere="nowhere", frequency=500.0) if r.id == 5 else r
                    for r in rows]
    for bad in (rows[:-1], other_sphere):
        assert not restore_rows(engine.state, bad, engine.clock.now(), 5.0)
    assert np.array_equal(engine.state.frequency, before)
    assert not await restore_from_store(engine, MemoryStore())   # nothing stored yet


async def test_snapshots_at_most_once_a_second_retried_through_an_outage(autojump_clock, nursery):
    engine = await nursery.start(Engine(make_settings(), MemoryBus()).run)
    store = FlakyStore()
    async with trio.open_nursery() as snapshots:
        snapshots.start_soon(snapshot_agents, engine, store)
        await trio.sleep(10.5)
        assert len(store.writes) == 10
        assert np.all(np.diff(store.writes) >= 1.0)
        store.down = True
        await engine.retune(9, 600.0)
        await trio.sleep(3)
        assert len(store.writes) == 10
        store.down = False
        await trio.sleep(1)
        assert len(store.writes) == 11
        assert (await store.load_agents())[9].frequency == 600.0
        await engine.retune(9, 700.0)
        snapshots.cancel_scope.cancel()
    # Stopping writes one last snapshot, so a clean restart loses nothing.
    assert (await store.load_agents())[9].frequency == 700.0


async def test_the_event_log_records_commands_in_order_through_an_outage(autojump_clock, nursery):
    store = FlakyStore()
    event_log = await nursery.start(EventLog(store).run)
    bus = MemoryBus()
    engine = await nursery.start(Engine(make_settings(), bus, on_event=event_log.offer).run)
    await engine.disperse("partial", command_id="d1")
    await trio.sleep(0.1)
    store.down = True
    await engine.regroup(command_id="r1")
    await engine.retune(4, 450.0, command_id="t1")
    await trio.sleep(3)
    assert [e.kind for e in await store.events()] == ["dispersal"]
    store.down = False
    await trio.sleep(1.5)
    events = await store.events()
    assert [(e.kind, e.payload["command_id"]) for e in reversed(events)] == [
        ("dispersal", "d1"), ("regroup", "r1"), ("retune", "t1")]
    assert events[-1].payload == {"command_id": "d1", "level": "partial", "sphere": None, "dispersed": 70}
    assert events[1].payload == {"command_id": "r1", "regrouped": 70}
    assert events[0].payload == {"command_id": "t1", "agent": 4, "frequency": 450.0}


async def test_the_event_log_records_who_asked_for_each_command(autojump_clock, nursery):
    """Each command's record carries the role and pseudonym it came with, even though its agents
    emit their own events (with its id) before the one the record is made of."""
    store = MemoryStore()
    event_log = await nursery.start(EventLog(store).run)
    engine = await nursery.start(Engine(make_settings(), MemoryBus(), on_event=event_log.offer).run)
    alice = {"role": "operator", "operator": "0123456789abcdef"}
    for _ in range(3):
        await engine.disperse("total", by=alice)
        await engine.regroup(by=alice)
    await engine.retune(4, 450.0, by=alice)
    await engine.regroup()                      # the server's own: nobody's
    await trio.sleep(1)
    events = await store.events()
    assert [(e.role, e.operator) for e in events[1:]] == [("operator", "0123456789abcdef")] * 7
    assert (events[0].kind, events[0].role, events[0].operator) == ("regroup", None, None)


async def test_a_checkpoint_carries_the_whole_state(autojump_clock, nursery):
    old = await lived_in_engine(nursery, swarm_seed=1)
    data = encode_checkpoint(old.state, 1234, 1_700_000_000.5)
    checkpoint = decode_checkpoint(data)
    assert (checkpoint.seq, checkpoint.t) == (1234, 1_700_000_000.5)
    fresh = Engine(make_settings(swarm_seed=99), MemoryBus())  # other geometry: replaced too
    assert apply_checkpoint(fresh.state, checkpoint)
    t = old.clock.now() + 0.25
    old.state.integrate(slice(0, 350), t)
    fresh.state.integrate(slice(0, 350), t)
    assert np.array_equal(fresh.state.positions, old.state.positions)
    assert np.array_equal(fresh.state.status, old.state.status)
    with pytest.raises(ValueError):
        decode_checkpoint(b"not a checkpoint")


async def test_a_summary_carries_statuses_and_frequencies(autojump_clock, nursery):
    old = await lived_in_engine(nursery)
    summary = decode_summary(encode_summary(old.state, 77, 12.5))
    assert (summary.seq, summary.t) == (77, 12.5)
    assert np.array_equal(summary.status, old.state.status)
    assert np.array_equal(summary.frequency, old.state.frequency)
    for bad in (b"", b"\x02" + bytes(40)):
        with pytest.raises(ValueError):
            decode_summary(bad)
