"""A supervisor in the vocabulary of Erlang/OTP, for Trio tasks.

A :class:`Supervisor` starts its children left to right, each through ``nursery.start`` (so a
child is "up" when it calls ``task_status.started()``), and watches them:

* strategy ``ONE_FOR_ONE`` restarts only the child that ended; ``ONE_FOR_ALL`` stops every other
  child (right to left) and restarts them all; ``REST_FOR_ONE`` stops and restarts the children
  started after it.
* restart type ``PERMANENT`` children are always restarted, ``TRANSIENT`` ones only after a crash,
  ``TEMPORARY`` ones never — under every strategy, as in OTP: a temporary child stopped because
  a sibling ended is not started again, and neither is a transient or temporary child that had
  already ended for good (a transient one normally, a temporary one at all).
* ``shutdown``: the seconds a stopped child gets to finish after it is cancelled; past them it is
  left to end on its own (Trio cannot kill a task) and the supervisor goes on. ``BRUTAL_KILL``:
  cancelled and not waited for at all.
* more than ``intensity`` restarts within ``period`` seconds (of ``trio.current_time()``, so a
  MockClock drives it) and the supervisor gives up: it stops all its children, right to left, each
  within its ``shutdown`` timeout, and raises :class:`~atom_actors.errors.SupervisorEscalation`.

Cancellation: a ``trio.Cancelled`` that reaches a child from the supervisor's own scopes is a
shutdown, never a crash, and never counts toward the intensity. Cancelling the supervisor stops
its children right to left.

Every start, stop, crash, restart and escalation goes to ``on_report`` (a plain callable), naming the
supervisor, the child and the reason.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from .errors import SupervisorEscalation


class Strategy(enum.Enum):
    ONE_FOR_ONE = "one_for_one"
    ONE_FOR_ALL = "one_for_all"
    REST_FOR_ONE = "rest_for_one"


class Restart(enum.Enum):
    PERMANENT = "permanent"
    TRANSIENT = "transient"
    TEMPORARY = "temporary"


PERMANENT, TRANSIENT, TEMPORARY = Restart.PERMANENT, Restart.TRANSIENT, Restart.TEMPORARY
# A child's ``shutdown`` that gives it no time at all: cancelled, never waited for.
BRUTAL_KILL: float = 0.0
ONE_FOR_ONE, ONE_FOR_ALL, REST_FOR_ONE = Strategy.ONE_FOR_ONE, Strategy.ONE_FOR_ALL, Strategy.REST_FOR_ONE


class ChildStart(Protocol):
    def __call__(self, *, task_status: trio.TaskStatus[Any]) -> Awaitable[object]: ...


@dataclass(frozen=True)
class ChildSpec:
    """How to run one child: ``start(task_status=...)`` must call ``task_status.started()``."""

    id: str
    start: ChildStart
    restart: Restart = PERMANENT
    shutdown: float = 5.0  # seconds a child gets to finish after it is cancelled (BRUTAL_KILL: none)


@dataclass(frozen=True)
class Report:
    """What happened to a child: kind is started, stopped (by its supervisor), crashed, exited,
    restarted or escalated."""

    kind: str
    supervisor: str
    child: str
    reason: BaseException | None = None
    restarts: int = 0


def is_cancellation(exc: BaseException) -> bool:
    """True for ``trio.Cancelled``, or a group made only of them."""
    if isinstance(exc, trio.Cancelled):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(trio.Cancelled)[1] is None
    return False


class _Running:
    __slots__ = ("spec", "scope", "done")

    def __init__(self, spec: ChildSpec) -> None:
        self.spec = spec
        self.scope = trio.CancelScope()
        self.done = trio.Event()


class Supervisor:
    def __init__(self, name: str, children: list[ChildSpec], *, strategy: Strategy = ONE_FOR_ONE,
                 intensity: int = 1, period: float = 5.0,
                 on_report: Callable[[Report], None] | None = None) -> None:
        ids = [c.id for c in children]
        if len(set(ids)) != len(ids):
            raise ValueError(f"supervisor {name!r}: duplicate child ids")
        self.name = name
        self.children = list(children)
        self.strategy = strategy
        self.intensity = intensity
        self.period = period
        self._report = on_report or (lambda report: None)
        self._running: dict[str, _Running] = {}
        self._gone: set[str] = set()   # ended for good: never started again (OTP deletes them)
        self._restarts: deque[float] = deque()
        self.restart_count = 0
        self._ended: trio.MemorySendChannel[tuple[str, BaseException | None]]

    def is_running(self, child_id: str) -> bool:
        return child_id in self._running

    async def run(self, *, task_status: trio.TaskStatus[Supervisor] = trio.TASK_STATUS_IGNORED) -> None:
        """Start every child, then supervise until cancelled or until the intensity is exceeded."""
        send, receive = trio.open_memory_channel[tuple[str, BaseException | None]](math.inf)
        self._ended = send
        escalation: SupervisorEscalation | None = None
        async with trio.open_nursery() as nursery:
            try:
                for spec in self.children:
                    await self._start(nursery, spec)
                task_status.started(self)
                async for child_id, reason in receive:
                    await self._child_ended(nursery, child_id, reason)
            except SupervisorEscalation as exc:
                escalation = exc
            finally:
                with trio.CancelScope(shield=True):
                    await self._stop(list(self._running))
                nursery.cancel_scope.cancel()
        if escalation is not None:
            # Reported once every child has stopped: the escalation is the supervisor's last word.
            self._report(Report("escalated", self.name, escalation.child, escalation.reason,
                                len(self._restarts)))
            # Raised here, outside the nursery, so that callers see it as itself, not in a group.
            raise escalation

    async def _start(self, nursery: trio.Nursery, spec: ChildSpec) -> None:
        running = _Running(spec)
        self._running[spec.id] = running
        try:
            await nursery.start(self._watch, running)
        except BaseException as exc:
            if is_cancellation(exc):
                raise
            # A crash before started(): reported like any other crash (and counted).
            if self._running.get(spec.id) is running:
                del self._running[spec.id]
            self._ended.send_nowait((spec.id, exc))
            return
        self._report(Report("started", self.name, spec.id, restarts=self.restart_count))

    async def _watch(self, running: _Running, task_status: trio.TaskStatus[None]) -> None:
        reason: BaseException | None = None
        status = _TrackedStatus(task_status)
        try:
            with running.scope:
                await running.spec.start(task_status=status)
        except BaseException as exc:
            # Before started() the crash belongs to nursery.start, in _start.
            if is_cancellation(exc) or not status.called:
                raise
            reason = exc
        finally:
            running.done.set()
        if self._running.get(running.spec.id) is running and not running.scope.cancel_called:
            del self._running[running.spec.id]
            self._ended.send_nowait((running.spec.id, reason))

    async def _child_ended(self, nursery: trio.Nursery, child_id: str,
                           reason: BaseException | None) -> None:
        spec = next(c for c in self.children if c.id == child_id)
        self._report(Report("crashed" if reason else "exited", self.name, child_id, reason,
                            self.restart_count))
        if spec.restart is TEMPORARY or (spec.restart is TRANSIENT and reason is None):
            self._gone.add(child_id)
            return
        now = trio.current_time()
        self._restarts.append(now)
        while self._restarts and self._restarts[0] <= now - self.period:
            self._restarts.popleft()
        if len(self._restarts) > self.intensity:
            raise SupervisorEscalation(self.name, child_id, len(self._restarts), self.period,
                                       reason or RuntimeError("exited"))
        self.restart_count += 1
        index = self.children.index(spec)
        if self.strategy is ONE_FOR_ONE:
            to_restart = [spec]
        elif self.strategy is ONE_FOR_ALL:
            to_restart = self.children
        else:
            to_restart = self.children[index:]
        await self._stop([c.id for c in to_restart if c.id in self._running])
        # A temporary sibling stopped for this restart is gone, as in OTP; so is any child that
        # had already ended for good. The child that ended is restarted: it may be.
        self._gone.update(c.id for c in to_restart if c.restart is TEMPORARY)
        for c in to_restart:
            if c.id in self._gone:
                continue
            await self._start(nursery, c)
            if c.id in self._running:
                self._report(Report("restarted", self.name, c.id, reason, self.restart_count))

    async def _stop(self, child_ids: list[str]) -> None:
        """Cancel the children right to left, giving each its shutdown time to finish."""
        order = [c.id for c in self.children]
        for child_id in sorted(child_ids, key=order.index, reverse=True):
            running = self._running.pop(child_id, None)
            if running is None:
                continue
            running.scope.cancel()
            if running.spec.shutdown > 0:
                with trio.move_on_after(running.spec.shutdown):
                    await running.done.wait()
            self._report(Report("stopped", self.name, child_id, restarts=self.restart_count))


class _TrackedStatus:
    """Passes ``started()`` on and remembers that it was called."""

    __slots__ = ("_inner", "called")

    def __init__(self, inner: trio.TaskStatus[Any]) -> None:
        self._inner = inner
        self.called = False

    def started(self, value: Any = None) -> None:
        self.called = True
        self._inner.started(value)
