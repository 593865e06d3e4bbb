"""Engine processes over real Redis, simulated in one trio.run: a leader, hot standbys, commands
applied exactly once across a handover, fencing, and a Redis restart under a running leader.
(kill -9 of a real leader process is in test_roles.)"""

from __future__ import annotations

import pytest
import redis
import trio

from atom_actors.bus import Bus, MemoryBus
from atom_actors.bus.redis import RedisBus
from atom_actors.cluster import (DRIFT_MARGIN_S, LEASE_TTL_S, STANDBY_POLL_S, EngineRole,
                                 engine_alarms)
from atom_actors.coordinator import Coordinator, MemoryCoordinator
from atom_actors.coordinator.redis import RedisCoordinator
from atom_actors.errors import BackendUnavailable, SupervisorEscalation
from atom_actors.metrics import Metrics
from atom_actors.remote import RemoteSwarm
from atom_actors.stack import open_service_stack
from atom_actors.store import MemoryStore
from atom_actors.swarm import DISPERSED

from .conftest import make_settings
from .test_metrics import scrape, value
from .servers import SHARED_REDIS

SETTINGS = make_settings(dispersal_dwell_s=600)


class Deployment:
    """Where the processes meet: a Redis namespace, or (``url`` None) shared memory: one
    in-process bus and one memory coordinator's state, each process with a handle of its own."""

    def __init__(self, url: str | None = None, namespace: str = "atom") -> None:
        self.url, self.namespace = url, namespace
        self.memory_bus = MemoryBus()
        self.memory = MemoryCoordinator()
        # A checkpoint's events reach the bus, as the Redis script publishes them.
        self.memory.shared.announce = lambda events: [self.memory_bus.publish_event(e)
                                                      for e in events]

    async def connect(self, stack, *, reader: bool) -> tuple[Bus, Coordinator]:
        if self.url is None:
            return self.memory_bus, MemoryCoordinator(self.memory.shared)
        bus = await stack.start(RedisBus(self.url, namespace=self.namespace, frames=reader,
                                         events=reader).run)
        coordinator = await stack.start(RedisCoordinator(self.url, namespace=self.namespace,
                                                         summaries=reader).run)
        if reader and not bus.up:
            await bus.subscribed.wait()
        return bus, coordinator


class EngineProcess:
    """One engine process: its own connections and role, stopped (or killed) on its own."""

    def __init__(self, deployment: Deployment, store: MemoryStore) -> None:
        self.deployment, self.store = deployment, store
        self.bus: Bus
        self.coordinator: Coordinator
        self.role: EngineRole

    async def start(self, nursery: trio.Nursery) -> EngineProcess:
        self.scope = await nursery.start(self._run)
        return self

    async def _run(self, *, task_status) -> None:
        with trio.CancelScope() as scope:
            async with open_service_stack() as stack:   # the role stops before its connections
                self.bus, self.coordinator = await self.deployment.connect(stack, reader=False)
                self.role = await stack.start(EngineRole(SETTINGS, self.bus, self.coordinator,
                                                         self.store).run)
                task_status.started(scope)
                await trio.sleep_forever()

    def stop(self) -> None:
        self.scope.cancel()

    def kill(self) -> None:
        """As kill -9: its coordinator handle is cut off first, so nothing is given back."""
        assert isinstance(self.coordinator, MemoryCoordinator)
        self.coordinator.sever()
        self.scope.cancel()


async def api_process(nursery: trio.Nursery, deployment: Deployment) -> RemoteSwarm:
    async def run(*, task_status) -> None:
        async with open_service_stack() as stack:
            bus, coordinator = await deployment.connect(stack, reader=True)
            task_status.started(await stack.start(RemoteSwarm(SETTINGS, bus, coordinator).run))
            await trio.sleep_forever()

    return await nursery.start(run)


async def wait_for(predicate, poll_s: float = 0.02) -> None:
    while not predicate():
        await trio.sleep(poll_s)


async def committed(coordinator: Coordinator, expected: list[str]) -> None:
    """Wait until the applied-commands log is ``expected``; it must never hold more."""
    while (log := await coordinator.applied_log()) != expected:
        assert len(log) < len(expected), log
        await trio.sleep(0.02)


def drain(events) -> list[dict]:
    """The events an EventSubscription holds now."""
    found = []
    while True:
        try:
            found.append(events.receive_nowait())
        except trio.WouldBlock:
            return found


async def leader_and_standby(nursery) -> tuple[Deployment, EngineProcess, EngineProcess]:
    """A memory deployment with a leading engine process and a hot standby."""
    deployment, store = Deployment(), MemoryStore()
    leader = await EngineProcess(deployment, store).start(nursery)
    await leader.role.leading.wait()
    return deployment, leader, await EngineProcess(deployment, store).start(nursery)


# -- the failover logic, on the memory coordinator and virtual time ------------------------------

async def test_a_killed_leader_is_replaced_within_a_lease_and_no_command_is_lost_or_doubled(
        autojump_clock, nursery):
    deployment, leader, standby = await leader_and_standby(nursery)
    control = await api_process(nursery, deployment)
    await wait_for(lambda: control.ticking)

    sent: list[str] = []

    async def send(first: int, last: int) -> None:
        for i in range(first, last):
            await control.retune(i, 500.0 + i, command_id=f"c{i}")
            sent.append(f"c{i}")
            await trio.sleep(0.05)

    await send(0, 10)
    leader.kill()
    killed = trio.current_time()
    async with trio.open_nursery() as sending:
        sending.start_soon(send, 10, 30)       # accepted meanwhile: the stream keeps them
        await standby.role.leading.wait()
        assert trio.current_time() - killed <= LEASE_TTL_S + STANDBY_POLL_S + 0.1
    assert standby.role.restored_from == "checkpoint"
    await committed(standby.coordinator, sent)
    engine = standby.role.engine
    assert [engine.state.frequency[i] for i in range(30)] == [500.0 + i for i in range(30)]


async def test_a_clean_stop_hands_over_at_once_and_nothing_is_applied_twice(autojump_clock, nursery):
    deployment, store = Deployment(), MemoryStore()
    first = await EngineProcess(deployment, store).start(nursery)
    await first.role.leading.wait()
    second = await EngineProcess(deployment, store).start(nursery)
    control = await api_process(nursery, deployment)
    await control.disperse("partial", command_id="d1")
    await committed(first.coordinator, ["d1"])
    first.stop()
    stopped = trio.current_time()
    await second.role.leading.wait()
    assert trio.current_time() - stopped <= STANDBY_POLL_S + 0.1
    await control.regroup(command_id="r1")
    await committed(second.coordinator, ["d1", "r1"])
    assert second.role.commander.applied_count == 1


async def test_a_severed_leader_steps_down_when_it_finds_its_lease_taken(autojump_clock, nursery):
    """A leader cut off from the coordinator longer than its lease finds another leader when it
    comes back, and stands by (its checkpoints would be refused anyway)."""
    deployment, store = Deployment(), MemoryStore()
    first = await EngineProcess(deployment, store).start(nursery)
    await first.role.leading.wait()
    second = await EngineProcess(deployment, store).start(nursery)
    first.coordinator.sever()
    await second.role.leading.wait()
    first.coordinator.severed = False
    await wait_for(lambda: first.role.engine is None)
    assert await first.coordinator.lease_holder() == second.role.lease.token


async def test_a_leader_that_cannot_renew_stops_at_its_own_deadline_before_another_may_lead(
        autojump_clock, nursery):
    """Cut off from the coordinator, the leader stops leading at (last renewal sent) + TTL −
    the drift margin: before its lease expires in the coordinator, so before a standby can
    take it; cut off, it writes nothing after its deadline."""
    deployment, leader, standby = await leader_and_standby(nursery)
    await trio.sleep(1.0)
    leader.coordinator.sever()
    deadline = leader.role.lease.deadline
    expires = deployment.memory.shared.lease[1]
    await wait_for(lambda: leader.role.engine is None, poll_s=0.001)
    stopped = trio.current_time()
    await standby.role.leading.wait()
    took_over = trio.current_time()
    assert deadline <= stopped < deadline + 0.01
    assert expires - stopped >= DRIFT_MARGIN_S - 0.01
    assert took_over >= expires > stopped
    assert standby.role.lease.epoch == leader.role.lease.known_epoch + 1


async def test_a_leader_killed_right_after_applying_a_command_its_events_reach_subscribers_once(
        autojump_clock, nursery):
    """The command's events are held until the checkpoint that records it: the killed leader
    announced none of them; the new leader applies the command again and announces it, so
    each event is heard once, with its command_id (the dispersal and each agent's status)."""
    deployment, leader, standby = await leader_and_standby(nursery)
    heard: list[dict] = []

    async def listen(*, task_status) -> None:
        with deployment.memory_bus.subscribe_events() as events:
            task_status.started()
            async for event in events:
                if event.get("command_id") == "d1":
                    heard.append(event)

    await nursery.start(listen)
    await deployment.memory.add_command({"kind": "disperse", "level": "total", "sphere": "privacy",
                                         "command_id": "d1"})
    commander = leader.role.commander
    with trio.fail_after(5):
        await wait_for(lambda: commander.applied_count == 1, poll_s=0.001)
    await trio.sleep(0.01)             # its agents have acted; the checkpoint is SETTLE_S away
    assert heard == []                 # held for the checkpoint
    leader.kill()
    await standby.role.leading.wait()
    await committed(standby.coordinator, ["d1"])
    await trio.sleep(1.0)
    names = sorted(e["event"] for e in heard)
    assert names == ["agent.status"] * 8 + ["swarm.dispersal"]
    assert len({e["agent"] for e in heard if e["event"] == "agent.status"}) == 8
    assert standby.role.commander.applied_count == 1


async def test_a_leader_killed_after_its_checkpoint_announced_the_command_once(
        autojump_clock, nursery):
    deployment, leader, standby = await leader_and_standby(nursery)
    with deployment.memory_bus.subscribe_events() as events:
        await deployment.memory.add_command({"kind": "regroup", "command_id": "r1"})
        await committed(leader.coordinator, ["r1"])
        leader.kill()
        await standby.role.leading.wait()
        await trio.sleep(1.0)
        heard = drain(events)
    assert [e["event"] for e in heard if e.get("command_id") == "r1"] == ["swarm.regroup"]
    assert standby.role.commander.applied_count == 0


async def test_commands_while_the_coordinator_is_unreachable_are_refused_at_once(
        autojump_clock, nursery):
    deployment = Deployment()
    leader = await EngineProcess(deployment, MemoryStore()).start(nursery)
    await leader.role.leading.wait()
    control = await api_process(nursery, deployment)
    control.coordinator.sever()
    with pytest.raises(BackendUnavailable):
        await control.regroup()


# -- the same over real Redis ---------------------------------------------------------------------

async def test_a_standby_takes_over_with_the_state_and_every_command_applied_once(nursery, redis_namespace):
    store = MemoryStore()
    with trio.fail_after(30):
        first = await EngineProcess(Deployment(SHARED_REDIS, redis_namespace), store).start(nursery)
        await first.role.leading.wait()
        second = await EngineProcess(Deployment(SHARED_REDIS, redis_namespace), store).start(nursery)
        metrics = Metrics()   # the second process's, read at scrape time as /metrics is
        metrics.read_engine(lambda: second.role.engine, [], tick_s=1.0 / SETTINGS.tick_hz)
        control = await api_process(nursery, Deployment(SHARED_REDIS, redis_namespace))
        await wait_for(lambda: control.ticking)

        assert (await control.disperse("partial", command_id="d1"))["dispersed"] == 70
        agent = await control.retune(5, 600.0, command_id="t1")
        assert agent["frequency"] == 600.0
        await wait_for(lambda: control.counts()["by_status"]["dispersed"] == 70)
        # Answered once written; applied (and checkpointed) by the leader a moment later.
        await committed(first.coordinator, ["d1", "t1"])
        assert second.role.engine is None          # a hot standby: connected, not running
        assert value(scrape(metrics), "atom_engine_leading") == 0

        first.stop()
        start = trio.current_time()
        await second.role.leading.wait()
        assert trio.current_time() - start < 1.0   # a clean stop hands the lease over at once
        assert second.role.restored_from == "checkpoint"
        assert value(scrape(metrics), "atom_engine_leading") == 1
        engine = second.role.engine
        assert int((engine.state.status == DISPERSED).sum()) == 70
        assert engine.state.frequency[5] == 600.0

        result = await control.regroup(command_id="r1")
        assert result == {"regrouped": 70, "command_id": "r1"}
        await committed(second.coordinator, ["d1", "t1", "r1"])


async def test_commands_accepted_while_no_engine_runs_are_applied_when_one_leads(nursery, redis_namespace):
    with trio.fail_after(30):
        control = await api_process(nursery, Deployment(SHARED_REDIS, redis_namespace))
        predicted = await control.disperse("sectoral", "transport", command_id="early")
        assert predicted["dispersed"] == 25                    # answered without an engine
        engine = await EngineProcess(Deployment(SHARED_REDIS, redis_namespace), MemoryStore()).start(nursery)
        await engine.role.leading.wait()
        await wait_for(lambda: len(control.agents(sphere="transport", status="dispersed")) == 25)
        await committed(engine.coordinator, ["early"])


async def test_a_command_sent_twice_is_applied_and_announced_once(nursery, redis_namespace):
    """Applied once, and its events published once, by the checkpoint's script, on the bus's
    channel (one batch), where every reader hears them."""
    with trio.fail_after(30):
        reader = await nursery.start(RedisBus(SHARED_REDIS, namespace=redis_namespace).run)
        await reader.subscribed.wait()
        engine = await EngineProcess(Deployment(SHARED_REDIS, redis_namespace), MemoryStore()).start(nursery)
        await engine.role.leading.wait()
        with reader.subscribe_events() as events:
            for _ in range(2):
                await engine.coordinator.add_command({"kind": "disperse", "level": "total",
                                                      "sphere": "privacy", "command_id": "same"})
            await engine.coordinator.add_command({"kind": "regroup", "command_id": "after"})
            await committed(engine.coordinator, ["same", "after"])
            await trio.sleep(0.2)
            heard = [(e["event"], e.get("command_id")) for e in drain(events)]
        assert engine.role.commander.applied_count == 2
        assert engine.role.commander.skipped_count == 1
        assert heard.count(("swarm.dispersal", "same")) == 1
        assert heard.count(("agent.status", "same")) == 8
        assert heard.count(("swarm.regroup", "after")) == 1


async def test_a_leader_whose_lease_is_taken_steps_down(nursery, redis_namespace):
    with trio.fail_after(30):
        engine = await EngineProcess(Deployment(SHARED_REDIS, redis_namespace), MemoryStore()).start(nursery)
        await engine.role.leading.wait()
        # Taken over in one step, as a lease that expired and was won elsewhere: a release then an
        # acquire would race the leader's own next acquire.
        with redis.Redis.from_url(SHARED_REDIS) as raw:
            raw.set(engine.coordinator.keys.lease, "intruder", px=60_000)
        await wait_for(lambda: engine.role.engine is None)
        assert await engine.coordinator.lease_holder() == "intruder"   # stepping down left it alone
        await engine.coordinator.lease_release("intruder")
        await engine.role.leading.wait()
        assert engine.role.terms == 2


async def test_the_leader_keeps_its_lease_through_a_redis_restart(nursery, redis_server):
    with trio.fail_after(30):
        store = MemoryStore()
        leader = await EngineProcess(Deployment(redis_server.url), store).start(nursery)
        await leader.role.leading.wait()
        standby = await EngineProcess(Deployment(redis_server.url), store).start(nursery)
        engine = leader.role.engine
        await redis_server.astop()
        await trio.sleep(0.5)
        await redis_server.astart()
        await trio.sleep(LEASE_TTL_S + 0.5)
        assert leader.role.engine is engine and engine.ticking
        assert standby.role.engine is None
        assert await leader.coordinator.lease_holder() == leader.role.lease.token
        control = await api_process(nursery, Deployment(redis_server.url))
        assert (await control.regroup(command_id="after-restart"))["command_id"] == "after-restart"
        await committed(leader.coordinator, ["after-restart"])


async def test_an_engine_crash_loop_raises_the_alarm_for_every_brise_circuit(nursery, redis_namespace):
    escalated = trio.Event()

    async def engine_process(*, task_status) -> None:
        try:
            async with open_service_stack() as stack:
                bus, coordinator = await Deployment(SHARED_REDIS, redis_namespace).connect(
                    stack, reader=False)
                on_report, on_overload = engine_alarms(bus)
                role = await stack.start(EngineRole(SETTINGS, bus, coordinator, MemoryStore(),
                                                    on_report=on_report,
                                                    on_overload=on_overload).run)
                await role.leading.wait()
                task_status.started(role)
                await trio.sleep_forever()
        except* SupervisorEscalation:
            escalated.set()

    with trio.fail_after(20):
        reader = await nursery.start(RedisBus(SHARED_REDIS, namespace=redis_namespace).run)
        await reader.subscribed.wait()
        with reader.subscribe_events() as events:
            engine = (await nursery.start(engine_process)).engine
            while not escalated.is_set():
                engine.inject_crash("transport")
                await trio.sleep(0.02)
            async for event in events:
                if event.get("event") == "safeguard":
                    break
        assert event["state"] == "open" and "sphere/transport" in event["reason"]
