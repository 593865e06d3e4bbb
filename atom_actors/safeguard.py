"""The Brise-Circuit: the ethical circuit breaker in front of every swarm-changing command.

States and what moves them (a :class:`Breaker`, pure: every method takes ``now``, Trio seconds)::

    closed ──trip──▶ open ──cooldown over──▶ half_open ──probe succeeds──▶ closed
       ▲                ▲                        │
       │                └──probe fails / trip────┘
       └──────────── reset (an operator) from any state

It trips

* ``rate``: a command beyond SAFEGUARD_MAX_COMMANDS within SAFEGUARD_WINDOW_S (that command is
  refused);
* ``total``: a total dispersal (level ``total``, of the swarm or of one sphere) beyond
  SAFEGUARD_MAX_TOTAL within the window (refused too);
* ``escalation``: the engine's supervisor gives up on a crash loop (a Report of kind ``escalated``);
* ``overload``: the compositor overran its tick budget for 5 s in a row.

While open every command is refused (423 ``brise_circuit_open`` with Retry-After). After
SAFEGUARD_COOLDOWN_S it turns half_open and lets exactly one command through, the probe; the others
wait (Retry-After of one second). The probe decides:

* it succeeds (the engine carried it out) → closed;
* the engine failed it (anything but a refusal of its arguments), or a trip arrives meanwhile →
  open again, for a new cooldown;
* the engine refused its arguments (unknown agent, frequency out of range) → it proved nothing, the
  circuit stays half_open for the next command.

A trip empties the window, so the commands that caused it do not count again after the cooldown.

:class:`BriseCircuit` is the shell: it reads Trio's clock, publishes a ``safeguard`` event on the bus
at every state change, and its task (:meth:`BriseCircuit.run`) regroups the swarm to its safe state
on every opening, records every change in the store, and turns the circuit half_open on time.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from .bus import Bus
from .clock import WallClock
from .config import Settings
from .errors import BackendUnavailable, CommandError, SafeguardOpen
from .store import EventRecord, Store
from .supervisor import Report

if TYPE_CHECKING:
    from .swarm_view import SwarmControl

log = logging.getLogger("atom_actors.safeguard")

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
# While half_open, the commands that arrive behind the probe retry after this long.
PROBE_RETRY_S = 1.0
# Pending state changes for the task that records them; a change beyond it is counted, not kept.
CHANGES_BUFFER = 64
# The reason an operator's reset gives: the other processes' circuits close on it (and only on it).
RESET_REASON = "reset by an operator"


def escalation_reason(report: Report) -> str | None:
    """Why a supervision report opens the circuit (an escalated crash loop), else None."""
    if report.kind != "escalated":
        return None
    return f"the engine gave up on {report.child} after {report.restarts} restarts"


def overload_reason(seconds: float) -> str:
    """Why a compositor that overran its tick budget for ``seconds`` in a row opens the circuit."""
    return f"the engine overran its tick budget for {seconds:.1f} s"


def safeguard_event(state: str, reason: str) -> dict[str, Any]:
    """The ``safeguard`` event every process publishes when a circuit changes (CONTRACT §4)."""
    return {"type": "event", "event": "safeguard", "state": state, "reason": reason}


@dataclass(frozen=True, slots=True)
class Change:
    """One state change: ``trigger`` is rate, total, escalation, overload, probe_failed,
    cooldown, probe_ok or reset; ``at`` is Trio time."""

    state: str
    reason: str
    trigger: str
    at: float


@dataclass(frozen=True, slots=True)
class Ticket:
    """An admitted command. ``probe`` is the half_open circuit's one command."""

    probe: bool
    generation: int


@dataclass(frozen=True, slots=True)
class Decision:
    ticket: Ticket | None            # None: refused
    retry_after_s: float
    changes: tuple[Change, ...]


class Breaker:
    """The state machine, without I/O and without a clock of its own."""

    def __init__(self, *, max_commands: int, max_total: int, window_s: float,
                 cooldown_s: float) -> None:
        self.max_commands = max_commands
        self.max_total = max_total
        self.window_s = window_s
        self.cooldown_s = cooldown_s
        self.state = CLOSED
        self.reason = ""
        self.changed_at = -math.inf
        self.trips = 0
        self._commands: deque[float] = deque()
        self._totals: deque[float] = deque()
        self._generation = 0          # bumped at every change, so stale tickets are ignored
        self._probe_out = False

    @classmethod
    def from_settings(cls, settings: Settings) -> Breaker:
        return cls(max_commands=settings.safeguard_max_commands,
                   max_total=settings.safeguard_max_total,
                   window_s=settings.safeguard_window_s,
                   cooldown_s=settings.safeguard_cooldown_s)

    @property
    def half_open_at(self) -> float:
        """When an open circuit turns half_open (inf unless open)."""
        return self.changed_at + self.cooldown_s if self.state == OPEN else math.inf

    def retry_after(self, now: float) -> float:
        if self.state == OPEN:
            return max(self.half_open_at - now, 0.0)
        if self.state == HALF_OPEN and self._probe_out:
            return PROBE_RETRY_S
        return 0.0

    def window(self, now: float) -> tuple[int, int]:
        """Commands and total dispersals counted in the current window."""
        self._prune(now)
        return len(self._commands), len(self._totals)

    def poll(self, now: float) -> tuple[Change, ...]:
        """Turn an open circuit half_open once its cooldown is over."""
        if self.state == OPEN and now >= self.half_open_at:
            return (self._move(HALF_OPEN, "cooldown over: one command may test the swarm",
                               "cooldown", now),)
        return ()

    def admit(self, now: float, *, total: bool) -> Decision:
        """Count a command and say whether it may run; a command over a limit trips the circuit."""
        changes = list(self.poll(now))
        if self.state == OPEN or (self.state == HALF_OPEN and self._probe_out):
            return Decision(None, self.retry_after(now), tuple(changes))
        self._prune(now)
        if len(self._commands) >= self.max_commands:
            changes.append(self._open(now, "rate", f"more than {self.max_commands} commands "
                                                   f"in {self.window_s:g} s"))
            return Decision(None, self.retry_after(now), tuple(changes))
        if total and len(self._totals) >= self.max_total:
            changes.append(self._open(now, "total", f"more than {self.max_total} total "
                                                    f"dispersals in {self.window_s:g} s"))
            return Decision(None, self.retry_after(now), tuple(changes))
        self._commands.append(now)
        if total:
            self._totals.append(now)
        probe = self.state == HALF_OPEN
        self._probe_out = self._probe_out or probe
        return Decision(Ticket(probe, self._generation), 0.0, tuple(changes))

    def finish(self, now: float, ticket: Ticket, outcome: str) -> tuple[Change, ...]:
        """Report how an admitted command ended: ``ok``, ``failed`` or ``inconclusive``."""
        if not ticket.probe or ticket.generation != self._generation or self.state != HALF_OPEN:
            return ()
        self._probe_out = False
        if outcome == "ok":
            return (self._move(CLOSED, "the probe command succeeded", "probe_ok", now),)
        if outcome == "failed":
            return (self._open(now, "probe_failed", "the probe command failed"),)
        return ()

    def trip(self, now: float, trigger: str, reason: str) -> tuple[Change, ...]:
        """Open the circuit for an outside cause (escalation, overload); no-op when already open."""
        if self.state == OPEN:
            return ()
        return (self._open(now, trigger, reason),)

    def reset(self, now: float) -> tuple[Change, ...]:
        """Close the circuit now (an operator's decision)."""
        self._commands.clear()
        self._totals.clear()
        if self.state == CLOSED:
            return ()
        return (self._move(CLOSED, RESET_REASON, "reset", now),)

    def _open(self, now: float, trigger: str, reason: str) -> Change:
        self.trips += 1
        self._commands.clear()
        self._totals.clear()
        return self._move(OPEN, reason, trigger, now)

    def _move(self, state: str, reason: str, trigger: str, now: float) -> Change:
        if state == CLOSED:
            self._commands.clear()
            self._totals.clear()
        self.state, self.reason, self.changed_at = state, reason, now
        self._generation += 1
        self._probe_out = False
        return Change(state, reason, trigger, now)

    def _prune(self, now: float) -> None:
        horizon = now - self.window_s
        for times in (self._commands, self._totals):
            while times and times[0] <= horizon:
                times.popleft()


class BriseCircuit:
    """The Brise-Circuit of a running AT·OM: :class:`Breaker` plus its effects.

    Create it inside ``trio.run``; hand :meth:`on_report` and :meth:`on_overload` to the Engine;
    start :meth:`run` once the engine is up; wrap every swarm-changing command in :meth:`command`.
    """

    def __init__(self, settings: Settings, bus: Bus, store: Store, *,
                 clock: WallClock | None = None) -> None:
        self.breaker = Breaker.from_settings(settings)
        self.bus = bus
        self.store = store
        self.clock = clock or WallClock()
        self.unrecorded = 0           # changes the recording task could not keep up with
        self._send, self._receive = trio.open_memory_channel[Change](CHANGES_BUFFER)

    @property
    def state(self) -> str:
        self._apply(self.breaker.poll(trio.current_time()))
        return self.breaker.state

    # -- what the engine calls (plain callables: they never block) ---------------------------------

    def on_report(self, report: Report) -> None:
        """Supervision reports: an escalated crash loop trips the circuit."""
        reason = escalation_reason(report)
        if reason is not None:
            self.trip("escalation", reason)

    def on_overload(self, seconds: float) -> None:
        """The compositor overran its tick budget for ``seconds`` in a row."""
        self.trip("overload", overload_reason(seconds))

    def trip(self, trigger: str, reason: str) -> None:
        self._apply(self.breaker.trip(trio.current_time(), trigger, reason))

    # -- what the API calls ------------------------------------------------------------------------

    @asynccontextmanager
    async def command(self, *, total: bool = False) -> AsyncIterator[None]:
        """Admit one swarm-changing command around the block, or raise SafeguardOpen.

        The block's outcome feeds the half_open probe: it returns → ``ok``; it raises a
        CommandError (the engine refused the arguments) or is cancelled → ``inconclusive``;
        anything else → ``failed``.
        """
        decision = self.breaker.admit(trio.current_time(), total=total)
        self._apply(decision.changes)
        if decision.ticket is None:
            reason = self.breaker.reason if self.breaker.state == OPEN else \
                "half open: another command is testing the swarm"
            raise SafeguardOpen(reason, decision.retry_after_s)
        outcome = "inconclusive"
        try:
            yield
            outcome = "ok"
        except CommandError:
            raise
        except Exception:
            outcome = "failed"
            raise
        finally:
            self._apply(self.breaker.finish(trio.current_time(), decision.ticket, outcome))

    def reset(self) -> dict[str, Any]:
        self._apply(self.breaker.reset(trio.current_time()))
        return self.status()

    def status(self) -> dict[str, Any]:
        now = trio.current_time()
        self._apply(self.breaker.poll(now))
        b = self.breaker
        commands, totals = b.window(now)
        retry = b.retry_after(now)
        return {
            "state": b.state,
            "reason": b.reason or None,
            "since": round(self.clock.from_trio(b.changed_at), 3) if b.reason else None,
            "retry_after_s": round(retry, 3) if b.state != CLOSED else None,
            "trips": b.trips,
            "window": {"commands": commands, "total_dispersals": totals},
            "limits": {"max_commands": b.max_commands, "max_total": b.max_total,
                       "window_s": b.window_s, "cooldown_s": b.cooldown_s},
        }

    # -- the task ----------------------------------------------------------------------------------

    async def run(self, control: SwarmControl, *,
                  task_status: trio.TaskStatus[BriseCircuit] = trio.TASK_STATUS_IGNORED) -> None:
        """Carry out the effects of state changes, and open → half_open on time, until cancelled.

        On each change: record it in the store; on each opening, also regroup the swarm through
        ``control``. Cancellation: stops at once; changes not yet recorded are lost (an escalation
        stops the whole process right after its trip, so its record is best effort). Errors: a
        store that does not answer is logged and the change skipped; anything else propagates.
        """
        task_status.started(self)
        while True:
            with trio.move_on_at(self.breaker.half_open_at):
                change = await self._receive.receive()
                await self._carry_out(change, control)
                continue
            self._apply(self.breaker.poll(trio.current_time()))

    async def _carry_out(self, change: Change, control: SwarmControl) -> None:
        if change.state == OPEN:
            await control.regroup(command_id=f"safeguard-{uuid.uuid4().hex}")
        payload = {"state": change.state, "reason": change.reason, "trigger": change.trigger,
                   "trips": self.breaker.trips}
        try:
            await self.store.record_event(
                EventRecord(self.clock.from_trio(change.at), "safeguard", payload))
        except BackendUnavailable as exc:
            # The swarm is already safe; a missing audit line must not stop the breaker.
            log.warning("safeguard change not recorded: %s", exc)

    def _apply(self, changes: tuple[Change, ...]) -> None:
        for change in changes:
            log.warning("Brise-Circuit %s (%s): %s", change.state, change.trigger, change.reason)
            self.bus.publish_event(safeguard_event(change.state, change.reason))
            try:
                self._send.send_nowait(change)
            except trio.WouldBlock:
                self.unrecorded += 1
