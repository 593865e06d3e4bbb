"""The supervisor's OTP semantics, on virtual time."""

from __future__ import annotations

import pytest
import trio

from atom_actors.errors import SupervisorEscalation
from atom_actors.supervisor import (BRUTAL_KILL, ONE_FOR_ALL, ONE_FOR_ONE, REST_FOR_ONE,
                                    TEMPORARY, TRANSIENT, ChildSpec, Report, Supervisor)


class Child:
    """A child that counts its starts and crashes when told to."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.starts = 0
        self.stopped = 0
        self.crash = False
        self.exit = trio.Event()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED):
        self.starts += 1
        self.crash, self.exit = False, trio.Event()
        task_status.started()
        try:
            await self.exit.wait()
        except trio.Cancelled:
            self.stopped += 1
            raise
        if self.crash:
            raise RuntimeError(f"{self.name} crashed")

    def spec(self, **kw) -> ChildSpec:
        return ChildSpec(self.name, self.run, **kw)


def kill(child: Child) -> None:
    child.crash = True
    child.exit.set()


def make(strategy=ONE_FOR_ONE, intensity=3, period=5.0, n=3, **kw):
    children = [Child(f"c{i}") for i in range(n)]
    reports: list[Report] = []
    sup = Supervisor("test", [c.spec(**kw) for c in children], strategy=strategy,
                     intensity=intensity, period=period, on_report=reports.append)
    return sup, children, reports


async def test_one_for_one_restarts_only_the_crashed_child(nursery, autojump_clock):
    sup, (a, b, c), reports = make()
    await nursery.start(sup.run)
    kill(b)
    await trio.sleep(0.01)
    assert (a.starts, b.starts, c.starts) == (1, 2, 1)
    assert a.stopped == c.stopped == 0
    crashed = [r for r in reports if r.kind == "crashed"]
    assert crashed[0].child == "c1" and isinstance(crashed[0].reason, RuntimeError)
    assert [r.child for r in reports if r.kind == "restarted"] == ["c1"]


@pytest.mark.parametrize("strategy, starts, stopped", [
    (ONE_FOR_ALL, (2, 2, 2), (1, 1)),     # every child is stopped and restarted
    (REST_FOR_ONE, (1, 2, 2), (0, 1)),    # only the children started after the crashed one
])
async def test_strategies_restart_their_set(nursery, autojump_clock, strategy, starts, stopped):
    sup, (a, b, c), _ = make(strategy)
    await nursery.start(sup.run)
    kill(b)
    await trio.sleep(0.01)
    assert (a.starts, b.starts, c.starts) == starts
    assert (a.stopped, c.stopped) == stopped


async def test_intensity_exceeded_escalates_after_stopping_everyone(autojump_clock):
    sup, (a, b, c), reports = make(intensity=2, period=5.0)

    async def crash_b_repeatedly():
        await trio.sleep(0.1)
        for _ in range(3):
            kill(b)
            await trio.sleep(1.0)

    escalations = []
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(crash_b_repeatedly)
            await sup.run()
    except* SupervisorEscalation as group:
        escalations = list(group.exceptions)
    assert len(escalations) == 1
    assert escalations[0].supervisor == "test" and escalations[0].child == "c1"
    assert (a.stopped, c.stopped) == (1, 1)
    assert reports[-1].kind == "escalated"


async def test_restarts_older_than_the_period_are_forgotten(nursery, autojump_clock):
    sup, (_, b, _), _ = make(intensity=1, period=5.0)
    await nursery.start(sup.run)
    for _ in range(4):
        kill(b)
        await trio.sleep(6.0)
    assert b.starts == 5


async def test_cancelling_the_supervisor_is_no_crash(autojump_clock):
    sup, children, reports = make(intensity=0)
    with trio.move_on_after(1.0):
        await sup.run()
    assert all(c.stopped == 1 for c in children)
    assert not [r for r in reports if r.kind in ("crashed", "escalated")]


async def test_transient_child_exiting_normally_is_not_restarted(nursery, autojump_clock):
    sup, (a, _, _), reports = make(restart=TRANSIENT)
    await nursery.start(sup.run)
    a.exit.set()
    await trio.sleep(0.01)
    assert a.starts == 1 and not sup.is_running("c0")
    assert [r.kind for r in reports if r.child == "c0"] == ["started", "exited"]


async def test_temporary_child_is_never_restarted(nursery, autojump_clock):
    sup, (a, _, _), _ = make(restart=TEMPORARY)
    await nursery.start(sup.run)
    kill(a)
    await trio.sleep(0.01)
    assert a.starts == 1 and not sup.is_running("c0")


async def test_crash_before_started_counts_and_escalates(autojump_clock):
    attempts = 0

    async def broken(*, task_status=trio.TASK_STATUS_IGNORED):
        nonlocal attempts
        attempts += 1
        raise ValueError("cannot start")

    sup = Supervisor("boot", [ChildSpec("broken", broken)], intensity=2, period=5.0)
    with pytest.raises(SupervisorEscalation):
        await sup.run()
    assert attempts == 3


@pytest.mark.parametrize("strategy", [ONE_FOR_ONE, ONE_FOR_ALL, REST_FOR_ONE])
async def test_a_temporary_sibling_stopped_by_a_restart_stays_down(nursery, autojump_clock,
                                                                   strategy):
    """OTP: a temporary child is never restarted, even when a sibling's crash stops it."""
    a, b, c = Child("a"), Child("b"), Child("c")
    sup = Supervisor("s", [a.spec(), b.spec(), c.spec(restart=TEMPORARY)], strategy=strategy,
                     intensity=3)
    await nursery.start(sup.run)
    kill(a)
    await trio.sleep(0.01)
    assert a.starts == 2 and sup.is_running("a")
    assert c.starts == 1
    assert sup.is_running("c") == (strategy is ONE_FOR_ONE)   # stopped by the others, for good
    assert c.stopped == (0 if strategy is ONE_FOR_ONE else 1)


@pytest.mark.parametrize("strategy", [ONE_FOR_ONE, ONE_FOR_ALL, REST_FOR_ONE])
@pytest.mark.parametrize("restart", [TRANSIENT, TEMPORARY])
async def test_a_child_that_ended_for_good_is_not_started_by_a_siblings_restart(
        nursery, autojump_clock, strategy, restart):
    """OTP: a transient child that exited normally, or a temporary one that ended, stays down
    whatever a sibling does."""
    a, b = Child("a"), Child("b")
    sup = Supervisor("s", [a.spec(), b.spec(restart=restart)], strategy=strategy, intensity=3)
    await nursery.start(sup.run)
    b.exit.set()                          # ends normally
    await trio.sleep(0.01)
    kill(a)
    await trio.sleep(0.01)
    assert (a.starts, b.starts) == (2, 1)
    assert sup.is_running("a") and not sup.is_running("b")


@pytest.mark.parametrize("strategy", [ONE_FOR_ALL, REST_FOR_ONE])
async def test_a_transient_sibling_still_running_is_restarted_with_the_others(
        nursery, autojump_clock, strategy):
    a, b = Child("a"), Child("b")
    sup = Supervisor("s", [a.spec(), b.spec(restart=TRANSIENT)], strategy=strategy, intensity=3)
    await nursery.start(sup.run)
    kill(a)
    await trio.sleep(0.01)
    assert (a.starts, b.starts) == (2, 2) and b.stopped == 1


class SlowToStop(Child):
    """A child whose cancellation takes ``cleanup_s`` to finish (shielded)."""

    def __init__(self, name: str, cleanup_s: float) -> None:
        super().__init__(name)
        self.cleanup_s = cleanup_s

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED):
        try:
            await super().run(task_status=task_status)
        except trio.Cancelled:
            with trio.CancelScope(shield=True):
                await trio.sleep(self.cleanup_s)
            raise


@pytest.mark.parametrize("shutdown, restarted_after", [(5.0, 3.0), (1.0, 1.0), (BRUTAL_KILL, 0.0)])
async def test_a_stopped_child_gets_its_shutdown_time_and_no_more(nursery, autojump_clock,
                                                                  shutdown, restarted_after):
    """A sibling is waited for up to its ``shutdown``; BRUTAL_KILL is not waited for at all."""
    a, slow = Child("a"), SlowToStop("slow", cleanup_s=3.0)
    sup = Supervisor("s", [a.spec(), slow.spec(shutdown=shutdown)], strategy=ONE_FOR_ALL,
                     intensity=3)
    await nursery.start(sup.run)
    start = trio.current_time()
    kill(a)
    while a.starts < 2:
        await trio.sleep(0.001)
    assert trio.current_time() - start == pytest.approx(restarted_after, abs=0.01)
    assert slow.starts == 2


def test_duplicate_child_ids_are_refused():
    a = Child("x")
    with pytest.raises(ValueError):
        Supervisor("dup", [a.spec(), a.spec()])
