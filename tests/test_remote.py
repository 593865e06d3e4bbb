"""RemoteSwarm: the SwarmControl of a process without the engine, against a real engine role
over real Redis (shared server, a namespace per test)."""

from __future__ import annotations

import numpy as np
import pytest
import trio

from atom_actors.bus.redis import RedisBus
from atom_actors.cluster import EngineRole
from atom_actors.coordinator.redis import RedisCoordinator
from atom_actors.errors import (BackendUnavailable, FrequencyOutOfRange, UnknownAgent, UnknownLevel,
                                UnknownSphere)
from atom_actors.remote import SUMMARY_STALE_S, RemoteSwarm
from atom_actors.stack import open_service_stack
from atom_actors.store import MemoryStore

from .conftest import make_settings
from .servers import SHARED_REDIS, free_port

SETTINGS = make_settings(dispersal_dwell_s=600)


async def wait_for(predicate, poll_s: float = 0.02) -> None:
    while not predicate():
        await trio.sleep(poll_s)


async def engine_and_control(nursery: trio.Nursery, namespace: str):
    async def engine_process(*, task_status) -> None:
        with trio.CancelScope() as scope:
            async with open_service_stack() as stack:
                bus = await stack.start(RedisBus(SHARED_REDIS, namespace=namespace, frames=False,
                                                 events=False).run)
                coordinator = await stack.start(RedisCoordinator(SHARED_REDIS, namespace=namespace,
                                                                 summaries=False).run)
                role = await stack.start(EngineRole(SETTINGS, bus, coordinator, MemoryStore()).run)
                await role.leading.wait()
                task_status.started((role, scope))
                await trio.sleep_forever()

    role, scope = await nursery.start(engine_process)
    bus = await nursery.start(RedisBus(SHARED_REDIS, namespace=namespace).run)
    coordinator = await nursery.start(RedisCoordinator(SHARED_REDIS, namespace=namespace).run)
    if not bus.up:
        await bus.subscribed.wait()
    control = await nursery.start(RemoteSwarm(SETTINGS, bus, coordinator).run)
    await wait_for(lambda: control.ticking and bus.latest_frame is not None)
    return role, scope, control


async def test_the_mirror_matches_the_engine(nursery, redis_namespace):
    with trio.fail_after(20):
        role, _, control = await engine_and_control(nursery, redis_namespace)
        engine = role.engine
        assert control.roster() == engine.roster()
        assert control.counts() == engine.counts()
        assert control.frequency_stats() == engine.frequency_stats()
        # Positions come from the latest frame on the bus, a tick or two behind the engine.
        here, there = control.agent(17)["position"], engine.agent(17)["position"]
        assert abs(here["x"] - there["x"]) < 0.5 and abs(here["y"] - there["y"]) < 0.5


async def test_commands_answer_like_the_engine(nursery, redis_namespace):
    with trio.fail_after(20):
        role, _, control = await engine_and_control(nursery, redis_namespace)
        result = await control.disperse("sectoral", "transport")
        assert result["dispersed"] == 25 and result["level"] == "sectoral" and result["sphere"] == "transport"
        await wait_for(lambda: len(control.agents(status="dispersed")) == 25)
        assert {a["sphere"] for a in control.agents(status="dispersed")} == {"transport"}
        agent = await control.retune(40, 777.25)
        assert agent["id"] == 40 and agent["frequency"] == 777.25
        await wait_for(lambda: role.engine.agent(40)["frequency"] == 777.25)
        regrouped = await control.regroup()
        assert regrouped["regrouped"] == 25 and len(regrouped["command_id"]) == 32
        await wait_for(lambda: not control.agents(status="dispersed"))


@pytest.mark.parametrize("call, error", [
    (lambda c: c.disperse("everything"), UnknownLevel),
    (lambda c: c.disperse("partial", "atlantis"), UnknownSphere),
    (lambda c: c.retune(350, 500.0), UnknownAgent),
    (lambda c: c.retune(True, 500.0), UnknownAgent),
    (lambda c: c.retune(3, 431.9), FrequencyOutOfRange),
    (lambda c: c.retune(3, float("nan")), FrequencyOutOfRange),
])
async def test_bad_commands_are_refused_here_without_redis(call, error):
    # The bus is not even running: a refusal of the arguments never needs Redis.
    url = f"redis://127.0.0.1:{free_port()}/0"
    control = RemoteSwarm(SETTINGS, RedisBus(url), RedisCoordinator(url))
    with pytest.raises(error):
        await call(control)
    with pytest.raises(UnknownAgent):
        control.agent(-1)
    with pytest.raises(UnknownSphere):
        control.agents(sphere="atlantis")


async def test_a_command_while_redis_is_down_is_a_503_at_once(nursery):
    url = f"redis://127.0.0.1:{free_port()}/0"
    bus = await nursery.start(RedisBus(url).run)
    control = await nursery.start(RemoteSwarm(SETTINGS, bus, await nursery.start(
        RedisCoordinator(url).run)).run)
    assert not control.ticking
    for command in (control.disperse("partial"), control.regroup(), control.retune(1, 500.0)):
        start = trio.current_time()
        with trio.fail_after(5), pytest.raises(BackendUnavailable):
            await command
        assert trio.current_time() - start < 0.5


async def test_ticking_follows_the_engine(nursery, redis_namespace):
    with trio.fail_after(20):
        _, engine_scope, control = await engine_and_control(nursery, redis_namespace)
        assert control.ticking
        engine_scope.cancel()
        stopped = trio.current_time()
        await wait_for(lambda: not control.ticking)
        assert trio.current_time() - stopped < SUMMARY_STALE_S + 0.5
        assert np.all(control.state.frequency >= 432)   # the last known state stays readable
