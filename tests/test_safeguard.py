"""The Brise-Circuit: its state machine on plain numbers, then with a real engine on virtual time."""

from __future__ import annotations

import json
import math

import pytest
import trio
from trio.testing import wait_all_tasks_blocked

from atom_actors.bus import MemoryBus
from atom_actors.clock import WallClock
from atom_actors.cluster import engine_alarms
from atom_actors.coordinator import Coordinator, MemoryCoordinator
from atom_actors.coordinator.redis import RedisCoordinator
from atom_actors.engine import Engine
from atom_actors.errors import FrequencyOutOfRange, SafeguardOpen, SupervisorEscalation
from atom_actors.remote import follow_engine_alarms
from atom_actors.safeguard import (CLOSED, HALF_OPEN, OPEN, PROBE_RETRY_S, Breaker, BriseCircuit,
                                   overload_reason)
from atom_actors.store import MemoryStore

from .conftest import make_settings
from .servers import SHARED_REDIS

WINDOW, COOLDOWN = 60.0, 30.0


def breaker(**overrides: float) -> Breaker:
    limits = dict(max_commands=30, max_total=3, window_s=WINDOW, cooldown_s=COOLDOWN)
    limits.update(overrides)
    return Breaker(**limits)  # type: ignore[arg-type]


def admit_many(b: Breaker, n: int, now: float, *, total: bool = False) -> None:
    for _ in range(n):
        assert b.admit(now, total=total).ticket is not None


# -- the state machine ------------------------------------------------------------------------------

def test_defaults_are_the_documented_ones():
    settings = make_settings()
    b = Breaker.from_settings(settings)
    assert (b.max_commands, b.max_total, b.window_s, b.cooldown_s) == (30, 3, 60.0, 30.0)


def test_the_command_beyond_the_rate_trips_and_is_refused():
    b = breaker()
    admit_many(b, 30, now=10.0)
    decision = b.admit(10.5, total=False)
    assert decision.ticket is None
    assert decision.retry_after_s == COOLDOWN
    assert [(c.state, c.trigger) for c in decision.changes] == [(OPEN, "rate")]
    assert b.state == OPEN and "30 commands in 60 s" in b.reason and b.trips == 1


def test_commands_older_than_the_window_no_longer_count():
    b = breaker()
    admit_many(b, 30, now=0.0)
    admit_many(b, 30, now=WINDOW + 0.001)
    assert b.state == CLOSED and b.window(WINDOW + 0.001) == (30, 0)


def test_the_total_dispersal_beyond_the_limit_trips():
    b = breaker()
    admit_many(b, 3, now=1.0, total=True)
    admit_many(b, 5, now=1.0)                       # other commands do not count as totals
    decision = b.admit(2.0, total=True)
    assert decision.ticket is None
    assert [(c.state, c.trigger) for c in decision.changes] == [(OPEN, "total")]
    assert "3 total dispersals" in b.reason


def test_open_refuses_until_the_cooldown_then_lets_one_probe_through():
    b = breaker()
    b.trip(100.0, "overload", "test")
    refused = b.admit(110.0, total=False)
    assert refused.ticket is None and refused.retry_after_s == pytest.approx(20.0)
    assert b.poll(129.9) == ()
    assert [c.state for c in b.poll(130.0)] == [HALF_OPEN]
    probe = b.admit(131.0, total=False)
    assert probe.ticket is not None and probe.ticket.probe
    behind = b.admit(131.5, total=False)
    assert behind.ticket is None and behind.retry_after_s == PROBE_RETRY_S
    assert [c.state for c in b.finish(132.0, probe.ticket, "ok")] == [CLOSED]
    assert b.admit(133.0, total=False).ticket is not None


def test_a_failed_probe_reopens_for_a_new_cooldown():
    b = breaker()
    b.trip(0.0, "overload", "test")
    b.poll(COOLDOWN)
    probe = b.admit(COOLDOWN + 1, total=False).ticket
    changes = b.finish(COOLDOWN + 2, probe, "failed")
    assert [(c.state, c.trigger) for c in changes] == [(OPEN, "probe_failed")]
    assert b.retry_after(COOLDOWN + 2) == COOLDOWN and b.trips == 2


def test_an_inconclusive_probe_leaves_it_half_open_for_the_next_command():
    b = breaker()
    b.trip(0.0, "overload", "test")
    b.poll(COOLDOWN)
    probe = b.admit(COOLDOWN, total=False).ticket
    assert b.finish(COOLDOWN, probe, "inconclusive") == ()
    assert b.state == HALF_OPEN
    assert b.admit(COOLDOWN, total=False).ticket.probe


def test_a_trip_while_half_open_reopens_and_the_old_probe_is_ignored():
    b = breaker()
    b.trip(0.0, "overload", "test")
    b.poll(COOLDOWN)
    probe = b.admit(COOLDOWN, total=False).ticket
    assert [c.state for c in b.trip(COOLDOWN + 1, "escalation", "crash loop")] == [OPEN]
    assert b.finish(COOLDOWN + 2, probe, "ok") == ()
    assert b.state == OPEN


def test_a_command_admitted_before_a_trip_does_not_close_it_when_it_ends():
    b = breaker()
    ticket = b.admit(0.0, total=False).ticket
    b.trip(1.0, "overload", "test")
    assert b.finish(2.0, ticket, "ok") == () and b.state == OPEN


def test_a_trip_empties_the_window():
    b = breaker()
    admit_many(b, 30, now=0.0)
    b.admit(1.0, total=False)                       # trips
    b.poll(1.0 + COOLDOWN)
    probe = b.admit(1.0 + COOLDOWN, total=False).ticket
    assert probe is not None, "the commands that caused the trip must not count again"


def test_reset_closes_from_any_state_and_is_silent_when_closed():
    b = breaker()
    assert b.reset(0.0) == ()
    b.trip(0.0, "overload", "test")
    assert [(c.state, c.trigger) for c in b.reset(1.0)] == [(CLOSED, "reset")]
    assert b.admit(1.0, total=False).ticket is not None


def test_a_trip_while_open_changes_nothing():
    b = breaker()
    b.trip(0.0, "overload", "first")
    assert b.trip(5.0, "escalation", "second") == ()
    assert b.reason == "first" and b.trips == 1


def test_a_trip_seen_before_the_last_reset_does_not_reopen_it():
    b = breaker()
    b.trip(10.0, "overload", "first")
    b.reset(10.005)
    assert b.trip(10.010, "alarm", "raised before the reset", seen_at=10.001) == ()
    assert b.trip(10.004, "overload", "made before the reset") == ()
    assert b.state == CLOSED and b.trips == 1
    assert [c.state for c in b.trip(10.010, "alarm", "raised after it", seen_at=10.006)] == [OPEN]


def test_a_reset_of_a_closed_circuit_dismisses_no_alarm():
    b = breaker()
    b.reset(5.0)                                    # nothing was open: the alarm was not seen
    assert [c.state for c in b.trip(5.1, "alarm", "raised before", seen_at=4.9)] == [OPEN]


def test_the_last_reset_survives_the_trip_to_the_shared_state():
    b = breaker()
    b.trip(1.0, "overload", "test")
    b.reset(2.0)
    copy = breaker()
    copy.load(b.dump())
    assert copy.reset_at == 2.0 and copy.trip(3.0, "alarm", "old", seen_at=1.5) == ()
    older = json.loads(b.dump())
    del older["reset_at"]                           # stored by a process from before it was kept
    copy.load(json.dumps(older).encode())
    assert copy.reset_at == -math.inf


# -- the Brise-Circuit with a real engine -----------------------------------------------------------

async def start(nursery: trio.Nursery, **overrides: object):
    settings = make_settings(**overrides)
    bus, store = MemoryBus(), MemoryStore()
    circuit = BriseCircuit(settings, bus, store)
    engine = await nursery.start(Engine(settings, bus, on_report=circuit.on_report,
                                        on_overload=circuit.on_overload).run)
    await nursery.start(circuit.run, engine)
    return circuit, engine, bus, store


def events_named(sub, name: str) -> list[dict]:
    """The events called ``name`` that ``sub`` has received so far (the others are dropped)."""
    events = []
    while True:
        try:
            event = sub.receive_nowait()
        except trio.WouldBlock:
            return events
        if event["event"] == name:
            events.append(event)


def safeguard_events(sub) -> list[dict]:
    return events_named(sub, "safeguard")


async def test_a_rate_trip_refuses_with_retry_after_regroups_publishes_and_records(
        autojump_clock, nursery):
    circuit, engine, bus, store = await start(nursery, safeguard_max_commands=2)
    with bus.subscribe_events() as sub:
        async with circuit.command():
            await engine.disperse("sectoral")
        async with circuit.command():
            await engine.disperse("partial")
        await trio.sleep(0.1)
        assert engine.counts()["by_status"]["dispersed"] > 0
        with pytest.raises(SafeguardOpen) as refused:
            async with circuit.command():
                pytest.fail("a refused command must not run")
        assert refused.value.retry_after_s == 30.0 and refused.value.status == 423
        await trio.sleep(0.1)
        assert engine.counts()["by_status"]["dispersed"] == 0, "the swarm regroups when it trips"
        assert safeguard_events(sub) == [{"type": "event", "event": "safeguard", "state": "open",
                                          "reason": "more than 2 commands in 60 s",
                                          "at": circuit.breaker.changed_at}]
    [record] = await store.events("safeguard")
    assert record.payload["state"] == "open" and record.payload["trigger"] == "rate"
    assert set(record.payload) == {"state", "reason", "trigger", "trips"}


async def test_the_cooldown_turns_it_half_open_on_time_and_a_probe_closes_it(
        autojump_clock, nursery):
    circuit, engine, bus, store = await start(nursery)
    with bus.subscribe_events() as sub:
        circuit.on_overload(5.0)
        await trio.sleep(29.9)
        assert circuit.breaker.state == OPEN
        await trio.sleep(0.2)
        # Nobody asked: the circuit's own task turned it half_open and said so.
        assert circuit.breaker.state == HALF_OPEN
        async with circuit.command():
            await engine.regroup()
        assert circuit.state == CLOSED
        assert [e["state"] for e in safeguard_events(sub)] == [OPEN, HALF_OPEN, CLOSED]
    await wait_all_tasks_blocked()                  # the circuit's task records the last change
    kinds = [r.payload["trigger"] for r in reversed(await store.events("safeguard"))]
    assert kinds == ["overload", "cooldown", "probe_ok"]


async def test_a_probe_the_engine_fails_reopens_and_a_refused_one_does_not(
        autojump_clock, nursery):
    circuit, engine, bus, store = await start(nursery, safeguard_cooldown_s=10)
    circuit.on_overload(5.0)
    await trio.sleep(10.1)
    with pytest.raises(FrequencyOutOfRange):
        async with circuit.command():
            await engine.retune(0, 10_000.0)
    assert circuit.state == HALF_OPEN
    with pytest.raises(RuntimeError):
        async with circuit.command():
            with pytest.raises(SafeguardOpen) as behind:
                async with circuit.command():
                    pytest.fail("only one probe at a time")
            assert behind.value.retry_after_s == 1.0 and "testing" in behind.value.detail
            raise RuntimeError("the engine did not answer")
    assert circuit.state == OPEN and circuit.status()["retry_after_s"] == 10.0


async def test_an_engine_crash_loop_trips_it(autojump_clock, nursery):
    settings = make_settings()
    bus, store = MemoryBus(), MemoryStore()
    circuit = BriseCircuit(settings, bus, store)
    engine = Engine(settings, bus, on_report=circuit.on_report)
    await nursery.start(circuit.run, engine)       # outlives the engine, as in a process's stack

    async def crash_loop():
        await trio.sleep(0.1)
        for _ in range(10):
            engine.inject_crash("business")
            await trio.sleep(0.2)

    with bus.subscribe_events() as sub:
        with pytest.raises(SupervisorEscalation):
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(crash_loop)
                    await engine.run()
            except* SupervisorEscalation as group:
                raise group.exceptions[0] from None
        assert circuit.breaker.state == OPEN
        await wait_all_tasks_blocked()              # the circuit's task shares and carries it out
        [event] = safeguard_events(sub)
    assert event["state"] == "open" and "sphere/business" in event["reason"]
    [record] = await store.events("safeguard")
    assert record.payload["trigger"] == "escalation"


async def test_overload_trips_it(autojump_clock, nursery):
    circuit, engine, bus, store = await start(nursery)
    circuit.on_overload(5.2)
    assert circuit.state == OPEN and "overran its tick budget for 5.2 s" in circuit.breaker.reason


async def test_reset_closes_it_and_says_so(autojump_clock, nursery):
    circuit, engine, bus, store = await start(nursery)
    with bus.subscribe_events() as sub:
        circuit.trip("overload", "test")
        status = circuit.reset()
        assert status["state"] == CLOSED and status["reason"] == "reset by an operator"
        await wait_all_tasks_blocked()              # said once the shared state has both
        assert [e["state"] for e in safeguard_events(sub)] == [OPEN, CLOSED]
    async with circuit.command():
        await engine.regroup()


# -- one circuit, several API processes (coordinators sharing one state) ---------------------------

class DistantCoordinator(MemoryCoordinator):
    """A memory coordinator one network round trip away, as Redis is (on virtual time)."""

    async def load_breaker(self):
        await trio.sleep(0.005)
        return await super().load_breaker()


async def api_processes(nursery: trio.Nursery, *coordinators: Coordinator):
    """One API process per coordinator (each with its own bus), sharing one store and one engine
    (the swarm every process regroups), like the API processes of one deployment."""
    settings = make_settings()
    store, clock = MemoryStore(), WallClock()
    engine_bus = MemoryBus()
    engine = await nursery.start(Engine(settings, engine_bus).run)
    circuits = []
    for coordinator in coordinators:
        circuit = BriseCircuit(settings, MemoryBus(), store, coordinator=coordinator, clock=clock)
        await nursery.start(circuit.run, engine)
        await nursery.start(follow_engine_alarms, circuit, circuit.bus)
        circuits.append(circuit)
    return circuits, engine, engine_bus, store


async def test_a_local_trip_that_finds_the_shared_circuit_open_adopts_it_without_repeating_it(
        autojump_clock, nursery):
    first = MemoryCoordinator()
    (one, other), engine, engine_bus, store = await api_processes(
        nursery, first, MemoryCoordinator(first.shared))
    with engine_bus.subscribe_events() as swarm, one.bus.subscribe_events() as one_says, \
            other.bus.subscribe_events() as other_says:
        await one.trip_shared("overload", "opened by the first process")
        assert other.state == CLOSED                   # its copy is not refreshed yet
        other.trip("escalation", "the second process's own alarm")
        await trio.sleep(1.0)
        assert one.state == other.state == OPEN
        assert other.status()["reason"] == "opened by the first process"
        assert [c.status()["trips"] for c in (one, other)] == [1, 1]
        assert len(events_named(swarm, "swarm.regroup")) == 1, "the swarm regroups once per opening"
        assert [e["state"] for e in safeguard_events(one_says) + safeguard_events(other_says)] \
            == [OPEN]
    [record] = await store.events("safeguard")
    assert record.payload["reason"] == "opened by the first process"


async def test_a_reset_is_not_undone_by_an_alarm_whose_swap_was_in_flight(autojump_clock, nursery):
    """A process that heard the alarm is still swapping it in when an operator resets the
    circuit there: the alarm came first, so it must not open the circuit after the reset."""
    first = MemoryCoordinator()
    (near, far), engine, engine_bus, store = await api_processes(
        nursery, first, DistantCoordinator(first.shared))
    reason = overload_reason(5.0)
    await near.trip_shared("alarm", reason)           # the process that heard it first opens it
    nursery.start_soon(far.trip_shared, "alarm", reason)
    await trio.sleep(0.001)
    assert far.state == CLOSED                        # its swap is on its way
    far.reset()                                       # an operator, through that process
    await trio.sleep(1.0)
    assert near.state == far.state == CLOSED
    await near.refresh()
    assert near.state == CLOSED and near.status()["trips"] == 1


async def heard_late(prompt: BriseCircuit, late: BriseCircuit, announced_by: str) -> None:
    """An engine's alarm opens the circuit through ``prompt``; an operator resets it there; then
    ``late`` hears the alarm (the engine's own event, or ``prompt``'s announcement of the
    opening, which every API process hears too): it must stay closed."""
    alarm_bus = MemoryBus()
    with alarm_bus.subscribe_events() as alarms, prompt.bus.subscribe_events() as announced:
        engine_alarms(alarm_bus, clock=prompt.clock)[1](5.0)   # one clock: virtual time
        alarm = alarms.receive_nowait()
        prompt.bus.publish_event(alarm)
        while prompt.state != OPEN:
            await trio.sleep(0.001)
        await trio.sleep(0.05)
        heard, announcement = safeguard_events(announced)
        assert heard is alarm and announcement["state"] == OPEN
    event = alarm if announced_by == "engine" else announcement
    prompt.reset()                                    # an operator, through the prompt process
    await trio.sleep(0.1)
    while late.state != CLOSED:                       # its copy has seen the reset
        await trio.sleep(0.01)
    late.bus.publish_event(event)
    await trio.sleep(1.0)
    await late.refresh()
    assert prompt.state == late.state == CLOSED
    assert late.status()["trips"] == 1


@pytest.mark.parametrize("announced_by", ["engine", "api"])
async def test_an_alarm_raised_before_a_reset_does_not_reopen_it_when_heard_after(
        autojump_clock, nursery, announced_by):
    first = MemoryCoordinator()
    (prompt, late), engine, engine_bus, store = await api_processes(
        nursery, first, MemoryCoordinator(first.shared))
    await heard_late(prompt, late, announced_by)


async def test_on_redis_an_alarm_raised_before_a_reset_does_not_reopen_it_when_heard_after(
        nursery, redis_namespace):
    coordinators = [
        await nursery.start(RedisCoordinator(SHARED_REDIS, namespace=redis_namespace).run)
        for _ in range(2)]
    with trio.fail_after(20):
        for coordinator in coordinators:
            if not coordinator.up:
                await coordinator.subscribed.wait()
        (prompt, late), engine, engine_bus, store = await api_processes(nursery, *coordinators)
        await heard_late(prompt, late, "api")


async def test_an_opening_is_recorded_whatever_its_regroup_meets(nursery, redis_server):
    """With split roles the regroup on opening is written to the command stream on Redis; here
    Redis is stopped, so the regroup is refused (or waits out its bound). The opening is
    recorded all the same, and the circuit's task goes on (it used to end on the refusal)."""
    import os
    import signal

    from atom_actors.coordinator.redis import RedisCoordinator
    from atom_actors.remote import RemoteSwarm
    from atom_actors.safeguard import REFRESH_S
    settings = make_settings()
    bus, store = MemoryBus(), MemoryStore()
    stream = await nursery.start(RedisCoordinator(redis_server.url).run)
    assert stream.timeout_s > REFRESH_S
    swarm = await nursery.start(RemoteSwarm(settings, bus, stream).run)
    circuit = BriseCircuit(settings, bus, store, coordinator=MemoryCoordinator())
    await nursery.start(circuit.run, swarm)
    os.kill(redis_server.proc.pid, signal.SIGSTOP)
    try:
        circuit.trip("overload", "test")
        with trio.fail_after(stream.timeout_s + 5):
            while not await store.events("safeguard"):
                await trio.sleep(0.05)
    finally:
        os.kill(redis_server.proc.pid, signal.SIGCONT)
    [opening] = await store.events("safeguard")
    assert opening.payload["state"] == OPEN and opening.payload["trigger"] == "overload"
