"""The engine on virtual time: cadence, agent tasks, commands, motion, supervision."""

from __future__ import annotations

import numpy as np
import pytest
import trio

from atom_actors.bus import MemoryBus
from atom_actors.engine import Engine
from atom_actors.errors import (FrequencyOutOfRange, SupervisorEscalation, UnknownAgent,
                                UnknownLevel, UnknownSphere)
from atom_actors.protocol import decode_binary
from atom_actors.swarm import FLY_S

from .conftest import make_settings


def tasks_named(prefix: str) -> list[trio.lowlevel.Task]:
    found, todo = [], [trio.lowlevel.current_root_task()]
    while todo:
        task = todo.pop()
        if task.name.startswith(prefix):
            found.append(task)
        for nursery in task.child_nurseries:
            todo.extend(nursery.child_tasks)
    return found


async def collect(bus: MemoryBus, seconds: float) -> list:
    frames = []
    sub = bus.subscribe_frames()
    with trio.move_on_after(seconds):
        while True:
            frames.append(await sub.receive())
    return frames


async def test_sixty_virtual_seconds_make_exactly_3600_frames(autojump_clock, engine):
    start = trio.current_time()
    frames = await collect(engine.bus, 60.0 + 0.5 / 60)
    assert len(frames) == 3600
    seqs = [f.seq for f in frames]
    assert seqs == list(range(seqs[0], seqs[0] + 3600))
    assert trio.current_time() - start == pytest.approx(60.0 + 0.5 / 60)
    times = np.array([f.t for f in frames])
    assert np.allclose(np.diff(times), 1 / 60, atol=1e-6)  # absolute deadlines: no drift
    assert engine.compositor.stats.missed == 0 and engine.compositor.stats.late_spheres == 0


async def test_frames_carry_all_agents_and_move(autojump_clock, engine):
    frames = await collect(engine.bus, 0.5)
    seq, _, first = decode_binary(frames[0].f32)
    _, _, last = decode_binary(frames[-1].f32)
    assert first.shape == (350, 3)
    assert np.all(np.linalg.norm(last - first, axis=1) > 0)


async def test_one_task_per_agent(autojump_clock, engine):
    agents = tasks_named("agent/")
    assert len(agents) == 350
    assert sorted(int(t.name.split("/")[1]) for t in agents) == list(range(350))


@pytest.mark.parametrize("level, sphere, size", [
    ("partial", None, 70), ("sectoral", None, 175), ("total", None, 350),
    ("partial", "transport", 10), ("sectoral", "transport", 25), ("total", "transport", 50),
    ("partial", "dashboard", 1), ("sectoral", "privacy", 4),
])
async def test_dispersal_sizes(autojump_clock, engine, level, sphere, size):
    result = await engine.disperse(level, sphere)
    assert result["dispersed"] == size and result["level"] == level and result["sphere"] == sphere
    await trio.sleep(0.1)
    dispersed = engine.agents(status="dispersed")
    assert len(dispersed) == size
    if sphere:
        assert {a["sphere"] for a in dispersed} == {sphere}


async def test_dispersed_agents_fly_out_dwell_and_come_back(autojump_clock, engine):
    home_before = engine.state.positions.copy()
    result = await engine.disperse("partial")
    await trio.sleep(FLY_S + 0.5)
    ids = [a["id"] for a in engine.agents(status="dispersed")]
    assert len(ids) == result["dispersed"]
    centre = engine.state.centre[ids]
    out = np.linalg.norm(engine.state.positions[ids] - centre, axis=1)
    home_radius = np.linalg.norm(home_before[ids] - centre, axis=1)
    # visibly away: farther from their sphere's centre than any agent's orbit takes it
    assert out.min() > engine.state.radius.max() + 1.0
    await trio.sleep(5.0)  # the dwell is over: they are on their way back
    assert {engine.agent(i)["status"] for i in ids} == {"regrouping"}
    await trio.sleep(FLY_S + 0.1)
    assert {engine.agent(i)["status"] for i in ids} == {"active"}
    back = np.linalg.norm(engine.state.positions[ids] - centre, axis=1)
    assert np.allclose(back, home_radius, atol=0.01)


async def test_regroup_brings_dispersed_agents_home_early(autojump_clock, engine):
    await engine.disperse("total")
    await trio.sleep(FLY_S)
    result = await engine.regroup()
    assert result["regrouped"] == 350
    await trio.sleep(FLY_S + 0.1)
    assert engine.counts()["by_status"]["active"] == 350


async def test_events_report_dispersal_and_status_changes(autojump_clock, engine):
    with engine.bus.subscribe_events() as events:
        result = await engine.disperse("partial", "transport")
        await trio.sleep(0.1)
        received = []
        while True:
            try:
                received.append(events.receive_nowait())
            except trio.WouldBlock:
                break
    kinds = [e["event"] for e in received]
    assert kinds.count("swarm.dispersal") == 1 and kinds.count("agent.status") == 10
    dispersal = next(e for e in received if e["event"] == "swarm.dispersal")
    assert dispersal == {"type": "event", "event": "swarm.dispersal", "level": "partial",
                         "sphere": "transport", "count": 10, "command_id": result["command_id"]}


async def test_retune_changes_frequency_and_speed_without_a_jump(autojump_clock, engine):
    await trio.sleep(0.1)
    before = engine.state.positions[217].copy()
    agent = await engine.retune(217, 999)
    assert agent["frequency"] == 999 and agent["id"] == 217
    await trio.sleep(1 / 60)
    assert np.linalg.norm(engine.state.positions[217] - before) < 0.5
    assert engine.frequency_stats()["max"] == 999


@pytest.mark.parametrize("call, error", [
    (lambda e: e.disperse("half"), UnknownLevel),
    (lambda e: e.disperse("partial", "atlantis"), UnknownSphere),
    (lambda e: e.retune(350, 500), UnknownAgent),
    (lambda e: e.retune(-1, 500), UnknownAgent),
    (lambda e: e.retune(1, 431.9), FrequencyOutOfRange),
    (lambda e: e.retune(1, 1000), FrequencyOutOfRange),
    (lambda e: e.retune(1, float("nan")), FrequencyOutOfRange),
])
async def test_bad_commands_raise_project_errors(autojump_clock, engine, call, error):
    with pytest.raises(error):
        await call(engine)


async def test_crashed_sphere_restarts_within_a_tick_and_keeps_its_agents(autojump_clock, engine):
    await engine.disperse("total", "transport")
    await trio.sleep(0.5)
    status_before = engine.state.status[226:276].copy()
    freq_before = engine.state.frequency[226:276].copy()
    sub = engine.bus.subscribe_frames()
    previous = (await sub.receive()).positions.copy()
    engine.inject_crash("transport")
    for _ in range(3):  # every frame around the crash: the other spheres keep moving
        frame = await sub.receive()
        others = np.r_[0:226, 276:350]
        assert np.all(np.linalg.norm(frame.positions[others] - previous[others], axis=1) > 0)
        previous = frame.positions.copy()
    assert engine.supervisor.restart_count == 1
    assert engine.slots[9].incarnation == 2 and engine.slots[0].incarnation == 1
    assert len(tasks_named("agent/")) == 350
    assert np.array_equal(engine.state.status[226:276], status_before)
    assert np.array_equal(engine.state.frequency[226:276], freq_before)
    frame = await sub.receive()  # and the restarted sphere moves again
    assert np.all(np.linalg.norm(frame.positions[226:276] - previous[226:276], axis=1) > 0)
    # its agents' timers survived the crash: they come home on time
    await trio.sleep(engine.dwell_s + 2 * FLY_S)
    assert engine.counts()["by_status"]["active"] == 350


async def test_crash_loop_escalates_and_the_engine_stops(autojump_clock):
    engine = Engine(make_settings(), MemoryBus())

    async def crash_loop():
        await trio.sleep(0.1)
        for _ in range(10):
            engine.inject_crash("business")
            await trio.sleep(0.2)

    escalations = []
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(crash_loop)
            await engine.run()
    except* SupervisorEscalation as group:
        escalations = list(group.exceptions)
    assert len(escalations) == 1
    assert escalations[0].child == "sphere/business"
    assert not engine.ticking
    assert tasks_named("agent/") == []
