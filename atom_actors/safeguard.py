"""The Brise-Circuit: the ethical circuit breaker in front of every swarm-changing command.

States and what moves them (a :class:`Breaker`, pure: every method takes ``now``, Trio seconds)::

    closed ──trip──▶ open ──cooldown over──▶ half_open ──probe succeeds──▶ closed
       ▲                ▲                        │
       │                └──probe fails / trip────┘
       └──────────── reset (guardians) from any state

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

**A reset is a guardian's deliberate act** (CONTRACT §2.3; ISO 13849-1 and NIST AC-3(2) keep the
reset of a safety interlock apart from its trip): tripping stays automatic and instant, but only
a guardian closes the circuit, and with SAFEGUARD_RESET_QUORUM = n only n distinct guardians
asking within RESET_QUORUM_WINDOW_S do (:meth:`Breaker.approve_reset`). The approvals are part of
the shared state, so every API process counts one quorum.
A probe whose process never reports its outcome (it died) is forgotten after PROBE_TIMEOUT_S.

:class:`BriseCircuit` is the shell: it reads the wall clock, publishes a ``safeguard`` event on the
bus at every state change, and its task (:meth:`BriseCircuit.run`) regroups the swarm to its safe
state on every opening, records every change in the store, and turns the circuit half_open on time.

**One circuit per deployment.** The state and the windows live in the coordinator (a Redis hash in
a deployment), changed only by compare-and-swap: each change reads the stored state, runs the
:class:`Breaker` on it, and writes it back only over the version it read, retrying otherwise. So
N API processes admit exactly the commands one process would, a trip opens it for all of them,
and exactly one process — the one whose swap made the change — carries out its effects (regroup,
record, event). Each process keeps a copy of the state for its synchronous readers (``state``,
``status()``, metrics), refreshed every REFRESH_S; a trip or reset made here (``trip()``,
``reset()``, synchronous: the engine's callbacks and the API call them) changes the copy at once
and is written to the shared state by the next swap, which the task makes at once and which
always applies it first. Its effects are what it changes there: a trip that finds the circuit
open already (another process opened it) changes nothing, so the copy takes the shared state as
it is, and nothing is regrouped, recorded or published twice.

**A reset outranks older alarms.** An alarm may reach the shared state after an operator's reset
although it was raised before it: heard late by one process (every ``safeguard`` event carries
``at``, when it was raised or made), or still on its way in a swap when the reset is made. The
state keeps when an operator last closed the circuit (``reset_at``), and a trip seen before that
changes nothing. Times are the processes' wall clocks: they must agree to within the gap this
is to tell apart.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import trio

from .bus import Bus
from .clock import WallClock
from .config import Settings
from .coordinator import Coordinator, MemoryCoordinator
from .errors import BackendUnavailable, CommandError, SafeguardOpen
from .store import EventRecord, Store
from .supervisor import Report

if TYPE_CHECKING:
    from .swarm_view import SwarmControl

log = logging.getLogger("atom_actors.safeguard")

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
# While half_open, the commands that arrive behind the probe retry after this long.
PROBE_RETRY_S = 1.0
# A probe admitted this long ago whose outcome never came (its process died) is forgotten.
PROBE_TIMEOUT_S = 10.0
# Each process's copy of the shared state is at most this old.
REFRESH_S = 0.5
# Compare-and-swap attempts before a change gives up (BackendUnavailable): contention that high
# means something is wrong, not that three API processes are busy.
SWAP_ATTEMPTS = 20
# Pending state changes for the task that records them; a change beyond it is counted, not kept.
CHANGES_BUFFER = 64
# The reason a guardian's reset gives: the other processes' circuits close on it (and only on it).
RESET_REASON = "reset by an operator"
# A guardian's approval of a reset counts this long; a quorum must gather within it.
RESET_QUORUM_WINDOW_S = 60.0


# Every engine alarm's reason starts so: the API processes of a deployment open the shared circuit
# on the ``safeguard`` events an engine process publishes, not on their own (``is_engine_alarm``).
ENGINE_ALARM = "the engine "


def escalation_reason(report: Report) -> str | None:
    """Why a supervision report opens the circuit (an escalated crash loop), else None."""
    if report.kind != "escalated":
        return None
    return f"{ENGINE_ALARM}gave up on {report.child} after {report.restarts} restarts"


def overload_reason(seconds: float) -> str:
    """Why a compositor that overran its tick budget for ``seconds`` in a row opens the circuit."""
    return f"{ENGINE_ALARM}overran its tick budget for {seconds:.1f} s"


def is_engine_alarm(reason: object) -> bool:
    """Whether a ``safeguard`` event's reason is an engine's alarm (escalation, overload)."""
    return isinstance(reason, str) and reason.startswith(ENGINE_ALARM)


def safeguard_event(state: str, reason: str, at: float) -> dict[str, Any]:
    """The ``safeguard`` event every process publishes when a circuit changes, or an engine
    process when it raises an alarm (CONTRACT §4); ``at``: when, Unix seconds. An API process
    that hears an alarm (or another one's opening) late opens the circuit as of ``at``: not over a
    reset made since."""
    return {"type": "event", "event": "safeguard", "state": state, "reason": reason, "at": at}


def seen_at(event: dict[str, Any]) -> float | None:
    """A ``safeguard`` event's ``at``, if it carries a usable one."""
    at = event.get("at")
    if isinstance(at, (int, float)) and not isinstance(at, bool) and math.isfinite(at):
        return float(at)
    return None


@dataclass(frozen=True, slots=True)
class Change:
    """One state change: ``trigger`` is rate, total, escalation, overload, probe_failed,
    cooldown, probe_ok or reset; ``at`` is Unix seconds."""

    state: str
    reason: str
    trigger: str
    at: float
    # A reset's guardians (pseudonyms), the last one first: who closed it, for the audit.
    guardians: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Approval:
    """Where a reset stands: ``approvals`` of ``needed`` distinct guardians, the oldest one
    counting for ``expires_in_s`` more; ``changes``: the closing, once the quorum is reached."""

    approvals: int
    needed: int
    expires_in_s: float
    changes: tuple[Change, ...]

    @property
    def granted(self) -> bool:
        return self.approvals >= self.needed


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
    """The state machine, without I/O and without a clock of its own (``now``: Unix seconds, so
    that processes sharing it agree). :meth:`dump` / :meth:`load` carry it to the coordinator."""

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
        self.reset_at = -math.inf     # when an operator last closed it
        self._commands: deque[float] = deque()
        self._totals: deque[float] = deque()
        self._generation = 0          # bumped at every change, so stale tickets are ignored
        self._probe_out = False
        self._probe_at = -math.inf
        self._approvals: dict[str, float] = {}   # a guardian's pseudonym → when they asked

    def dump(self) -> bytes:
        """The state and the windows, as JSON bytes (the limits are each process's settings)."""
        return json.dumps({"state": self.state, "reason": self.reason,
                           "changed_at": self.changed_at, "trips": self.trips,
                           "reset_at": self.reset_at, "commands": list(self._commands),
                           "totals": list(self._totals),
                           "generation": self._generation, "probe_out": self._probe_out,
                           "probe_at": self._probe_at, "approvals": self._approvals}).encode()

    def load(self, data: bytes) -> None:
        """Take the state and windows of :meth:`dump`; raises ValueError on anything else."""
        try:
            d = json.loads(data)
            self.state, self.reason = str(d["state"]), str(d["reason"])
            self.changed_at, self.trips = float(d["changed_at"]), int(d["trips"])
            self._commands, self._totals = deque(map(float, d["commands"])), deque(map(float, d["totals"]))
            self._generation, self._probe_out = int(d["generation"]), bool(d["probe_out"])
            self._probe_at = float(d["probe_at"])
            # Absent from a state stored by a process from before it was kept.
            self.reset_at = float(d.get("reset_at", -math.inf))
            self._approvals = {str(k): float(v) for k, v in d.get("approvals", {}).items()}
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a Brise-Circuit state: {exc}") from None
        if self.state not in (CLOSED, OPEN, HALF_OPEN):
            raise ValueError(f"not a Brise-Circuit state: {self.state!r}")

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
        if self._probe_out and now - self._probe_at > PROBE_TIMEOUT_S:
            self._probe_out = False   # its process never said how it went
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
        if probe:
            self._probe_out, self._probe_at = True, now
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

    def trip(self, now: float, trigger: str, reason: str, *,
             seen_at: float | None = None) -> tuple[Change, ...]:
        """Open the circuit for an outside cause (escalation, overload), seen at ``seen_at``
        (default ``now``). No-op when already open, or when the cause was seen before an operator
        last closed it: the reset came after it, so it must not reopen the circuit."""
        seen = now if seen_at is None else seen_at
        if self.state == OPEN or seen < self.reset_at:
            return ()
        return (self._open(now, trigger, reason),)

    def approve_reset(self, now: float, guardian: str, needed: int) -> Approval:
        """``guardian`` (a pseudonym) asks for a reset: it happens (:meth:`reset`) once ``needed``
        distinct guardians have asked within RESET_QUORUM_WINDOW_S; the same one asking again
        counts once (their time is renewed)."""
        horizon = now - RESET_QUORUM_WINDOW_S
        self._approvals = {g: t for g, t in self._approvals.items() if t > horizon}
        self._approvals.pop(guardian, None)
        self._approvals[guardian] = now          # newest last
        count = len(self._approvals)
        oldest = min(self._approvals.values())
        expires = max(0.0, oldest + RESET_QUORUM_WINDOW_S - now)
        if count < needed:
            return Approval(count, needed, expires, ())
        guardians = tuple(reversed(self._approvals))
        self._approvals = {}
        changes = tuple(replace(change, guardians=guardians) for change in self.reset(now))
        return Approval(count, needed, 0.0, changes)

    def reset(self, now: float) -> tuple[Change, ...]:
        """Close the circuit now (the guardians' decision: see :meth:`approve_reset`)."""
        self._commands.clear()
        self._totals.clear()
        if self.state == CLOSED:
            return ()
        self.reset_at = max(self.reset_at, now)
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
    ``coordinator`` holds the state shared with the deployment's other API processes (a private
    memory one when not given).
    """

    def __init__(self, settings: Settings, bus: Bus, store: Store, *,
                 coordinator: Coordinator | None = None, clock: WallClock | None = None) -> None:
        self.settings = settings
        self.breaker = Breaker.from_settings(settings)   # the shared state, as last seen here
        self.bus = bus
        self.store = store
        self.coordinator = coordinator or MemoryCoordinator()
        self.clock = clock or WallClock()
        self.version = 0              # of the shared state the copy was made from
        self.unrecorded = 0           # changes the recording task could not keep up with
        # Changes to carry out; None: a trip or reset made here, to share at once.
        self._send, self._receive = trio.open_memory_channel[Change | None](CHANGES_BUFFER)
        # Trips and resets made here, not yet written to the shared state.
        self._unshared: list[Callable[[Breaker], object]] = []
        # One swap at a time per process: concurrent commands of one process would otherwise
        # all read the same version and all but one retry (contention is for processes only).
        self._swapping = trio.Lock()

    @property
    def state(self) -> str:
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
        """Open the circuit now (here at once; everywhere with the next swap)."""
        self._local(lambda b, now=self.clock.now(): b.trip(now, trigger, reason))

    async def trip_shared(self, trigger: str, reason: str, *, seen_at: float | None = None) -> None:
        """Open the shared circuit, unless it is open already (an alarm several processes hear:
        exactly one of them carries it out) or an operator closed it after ``seen_at`` (when the
        alarm was raised; default now)."""
        now = self.clock.now()
        seen = now if seen_at is None else seen_at
        self._apply(await self._swap(lambda b: b.trip(now, trigger, reason, seen_at=seen)))

    # -- what the API calls ------------------------------------------------------------------------

    @asynccontextmanager
    async def command(self, *, total: bool = False) -> AsyncIterator[None]:
        """Admit one swarm-changing command around the block, or raise SafeguardOpen.

        The block's outcome feeds the half_open probe: it returns → ``ok``; it raises a
        CommandError (the engine refused the arguments) or is cancelled → ``inconclusive``;
        anything else → ``failed``. Errors: the coordinator unreachable → BackendUnavailable,
        before the block runs.
        """
        now = self.clock.now()
        decision = await self._swap(lambda b: b.admit(now, total=total))
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
            if decision.ticket.probe:
                await self._finish(decision.ticket, outcome)

    async def _finish(self, ticket: Ticket, outcome: str) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(2 * REFRESH_S + 1):
            now = self.clock.now()
            try:
                self._apply(await self._swap(lambda b: b.finish(now, ticket, outcome)))
            except BackendUnavailable as exc:
                # The probe is forgotten after PROBE_TIMEOUT_S: the next command probes again.
                log.warning("the probe's outcome was not recorded: %s", exc.detail)

    async def refresh(self) -> None:
        """Bring this process's copy up to date with the shared state now (for an answer that
        must be exact: ``GET /api/v1/safeguard``); the coordinator down: the copy stays."""
        try:
            await self._swap(lambda b: None)
        except BackendUnavailable:
            pass

    def reset(self) -> dict[str, Any]:
        """Close it now (here at once; everywhere with the next swap), with no quorum: the
        process's own decision. Guardians go through :meth:`request_reset`."""
        self._local(lambda b, now=self.clock.now(): b.reset(now))
        return self.status()

    async def request_reset(self, guardian: str) -> Approval:
        """A guardian (``guardian``: their pseudonym) asks to close the circuit: done once
        SAFEGUARD_RESET_QUORUM distinct guardians have asked within RESET_QUORUM_WINDOW_S, on the
        shared state (every API process counts the same approvals). Errors: the coordinator
        unreachable → BackendUnavailable, and nothing counted."""
        now = self.clock.now()
        needed = self.settings.safeguard_reset_quorum
        approval = await self._swap(lambda b: b.approve_reset(now, guardian, needed))
        self._apply(approval.changes)
        return approval

    def status(self) -> dict[str, Any]:
        now = self.clock.now()
        b = self.breaker
        commands, totals = b.window(now)
        retry = b.retry_after(now)
        return {
            "state": b.state,
            "reason": b.reason or None,
            "since": round(b.changed_at, 3) if b.reason else None,
            "retry_after_s": round(retry, 3) if b.state != CLOSED else None,
            "trips": b.trips,
            "window": {"commands": commands, "total_dispersals": totals},
            "limits": {"max_commands": b.max_commands, "max_total": b.max_total,
                       "window_s": b.window_s, "cooldown_s": b.cooldown_s},
        }

    # -- the shared state --------------------------------------------------------------------------

    def _local(self, op: Callable[[Breaker], tuple[Change, ...]]) -> None:
        """A trip or reset made here: applied to the copy now, to the shared state by the next
        swap (before whatever that swap does), which the task makes at once. Its effects are
        those of that swap: what it changes in the shared state (nothing, for a trip that finds
        it open already: the copy then takes the shared state as it is)."""
        op(self.breaker)
        self._unshared.append(op)
        try:
            self._send.send_nowait(None)     # wake the task: share it now
        except trio.WouldBlock:
            pass                             # the task is behind; its next beat shares it

    async def _swap(self, fn: Callable[[Breaker], Any]) -> Any:
        """Run ``fn`` on the shared state, atomically; return what it returned.

        The trips and resets made here go first, and the changes they make there are carried out
        (published, recorded) once the swap is written; ``fn``'s are the caller's to apply. Raises
        BackendUnavailable when the coordinator does not answer or the state is too contended.
        """
        async with self._swapping:
            return await self._swap_once(fn)

    async def _swap_once(self, fn: Callable[[Breaker], Any]) -> Any:
        for _ in range(SWAP_ATTEMPTS):
            version, data = await self.coordinator.load_breaker()
            breaker = Breaker.from_settings(self.settings)
            if data is not None:
                try:
                    breaker.load(data)
                except ValueError as exc:
                    log.error("the shared Brise-Circuit state is unreadable, starting over: %s", exc)
            unshared = list(self._unshared)
            changes = tuple(change for op in unshared for change in op(breaker))
            result = fn(breaker)
            dumped = breaker.dump()
            if dumped == data or await self.coordinator.swap_breaker(version, dumped):
                del self._unshared[:len(unshared)]
                self.breaker, self.version = breaker, version + (dumped != data)
                for op in self._unshared:      # made here while this swap was on its way
                    op(self.breaker)
                self._apply(changes)
                return result
        raise BackendUnavailable(self.coordinator.name, "the Brise-Circuit's state is too contended")

    # -- the task ----------------------------------------------------------------------------------

    async def run(self, control: SwarmControl, *,
                  task_status: trio.TaskStatus[BriseCircuit] = trio.TASK_STATUS_IGNORED) -> None:
        """Carry out the effects of state changes, keep the copy of the shared state fresh, and
        turn it half_open on time, until cancelled.

        On each change made here: record it in the store; on each opening, also regroup the swarm
        through ``control``. Every REFRESH_S (and at the end of a cooldown, and as soon as a trip
        or reset is made here) the shared state is read again, the trips and resets made here
        written to it, and an open circuit whose cooldown is over turned half_open (by exactly
        one process). Cancellation: stops at once; changes not yet shared or recorded are lost
        (an escalation stops the whole process right after its trip, so its record is best
        effort). Errors: a store or coordinator that does not answer is logged and skipped;
        anything else propagates.
        """
        task_status.started(self)
        while True:
            deadline = min(self.clock.to_trio(self.breaker.half_open_at),
                           trio.current_time() + REFRESH_S)
            with trio.move_on_at(deadline):
                change = await self._receive.receive()
                if change is not None:
                    await self._carry_out(change, control)
                if not self._unshared:
                    continue
            now = self.clock.now()
            try:
                self._apply(await self._swap(lambda b: b.poll(now)))
            except BackendUnavailable:
                pass   # the copy stays as it was; the next beat tries again

    async def _carry_out(self, change: Change, control: SwarmControl) -> None:
        if change.state == OPEN:
            await control.regroup(command_id=f"safeguard-{uuid.uuid4().hex}")
        payload: dict[str, Any] = {"state": change.state, "reason": change.reason,
                                   "trigger": change.trigger, "trips": self.breaker.trips}
        by: dict[str, Any] = {}
        if change.guardians:
            payload["guardians"] = list(change.guardians)
            by = {"role": "guardian", "operator": change.guardians[0]}
        try:
            await self.store.record_event(EventRecord(change.at, "safeguard", payload, **by))
        except BackendUnavailable as exc:
            # The swarm is already safe; a missing audit line must not stop the breaker.
            log.warning("safeguard change not recorded: %s", exc)

    def _apply(self, changes: tuple[Change, ...]) -> None:
        for change in changes:
            log.warning("Brise-Circuit %s (%s): %s", change.state, change.trigger, change.reason)
            self.bus.publish_event(safeguard_event(change.state, change.reason, change.at))
            try:
                self._send.send_nowait(change)
            except trio.WouldBlock:
                self.unrecorded += 1
