"""The engine role of a Redis deployment: one leader among the engine processes, the rest hot
standbys. Plain Trio over a :class:`~atom_actors.coordinator.Coordinator` (Redis in a deployment;
the memory one in the failover tests, under a MockClock), publishing on the bus.

Tree of one engine process::

    EngineRole.run                  forever: stand by until the lease is ours, lead until it is not
    └── leading (one nursery; losing the lease cancels it)
        ├── Lease.keep              renews every RENEW_S
        ├── EventLog.run            command events → store
        ├── Engine.run              restored from the Redis checkpoint, else the store's snapshot
        ├── snapshot_agents         all agents → store, once a second
        └── Commander.run           commands from the stream → engine; checkpoints

**Exactly once.** A command is acknowledged in the stream only by a checkpoint, the atomic script
that also stores the swarm state it produced (``Coordinator.checkpoint``). Between applying commands
and checkpointing them the commander waits SETTLE_S, so that the agent tasks have acted on them,
and applies nothing else: a checkpoint's state holds the effect of exactly the commands it
acknowledges. A leader killed before its checkpoint leaves those commands pending; the next
leader restores the last checkpoint (which has none of their effects), claims them and applies
each once. Ids already recorded as applied are acknowledged without being applied again.

**Leases.** ``SET NX PX`` with a TTL of LEASE_TTL_S and a fencing epoch (``Coordinator``: one
above every epoch seen, confirmed by the replicas), renewed every RENEW_S; a standby asks every
STANDBY_POLL_S, so a dead leader is replaced within LEASE_TTL_S + STANDBY_POLL_S (+ restore).
Every write of the leader carries its epoch and is refused once a newer one exists. A leader
that finds the lease held by another, or a newer epoch, stops at once.

**Its own deadline.** A leader counts its lease from the moment it *sent* its last successful
renewal (Redis counts from when it received it, later): at that moment + LEASE_TTL_S −
DRIFT_MARGIN_S without another success, it stops leading by itself, before the key can expire in
Redis and before anyone else may take it. So a Redis outage longer than that (or a failover)
stops the engine; a standby, once Redis answers again, waits a whole TTL before it asks, while a
leader that stepped down for want of a renewal asks at once, so the incumbent leads again first.

**Events.** The events of the commands being applied (those carrying their ``command_id``) are
held in the :class:`Outbox`, not published, and go out with the checkpoint that records their
commands as applied, atomically and fenced like it: a leader killed before its checkpoint has
announced nothing, and the next leader, applying the commands again, announces them; one killed
after has announced them once. Every other event (an agent home after its dwell, an alarm) goes
on the bus at once, a tick's events together (``bus/redis.py``).
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Callable
from typing import Any

import trio

from .audit import checked_by
from .bus import Bus
from .clock import WallClock
from .config import Settings
from .coordinator import Coordinator
from .engine import Engine
from .errors import BackendUnavailable, CommandError
from .persistence import (EventLog, apply_checkpoint, decode_checkpoint, encode_checkpoint,
                          encode_summary, restore_from_store, snapshot_agents)
from .safeguard import OPEN, escalation_reason, overload_reason, safeguard_event
from .store import Store
from .supervisor import Report
from .swarm import Checkpoint

log = logging.getLogger("atom_actors.cluster")

LEASE_TTL_S = 1.5
DRIFT_MARGIN_S = 0.1      # the lease counted this much shorter here than in Redis: clock rates
RENEW_S = 0.25
STANDBY_POLL_S = 0.25
CHECKPOINT_S = 0.5        # a checkpoint (and a summary for the other processes) at least this often
SETTLE_S = 0.05           # applied commands reach every agent task within a few scheduler passes
RETRY_S = 0.2
FINAL_CHECKPOINT_S = 1.0


class Lease:
    """The right to be the one engine: a token for this life, the epoch of the current term
    (0 while standing by), and the deadline by which this process stops leading unless renewed
    (Trio time)."""

    def __init__(self, coordinator: Coordinator, ttl_s: float = LEASE_TTL_S) -> None:
        self.coordinator = coordinator
        self.ttl_s = ttl_s
        self.token = uuid.uuid4().hex[:12]   # this process's, for this life
        self.epoch = 0
        self.known_epoch = 0                 # the newest this process has held
        self.deadline = -math.inf
        self.expired = False                 # the last term ended at its own deadline
        self.renewed_at = -math.inf          # Trio time of the last acknowledged renewal

    async def acquire(self) -> None:
        """Return once this process holds the lease (hot standby until then).

        A process whose last term ended at its own deadline (Redis unreachable) asks at once;
        the others keep quiet a whole TTL after an outage, so the incumbent leads again first."""
        quiet_until = trio.current_time()
        first = self.expired
        self.expired = False
        while True:
            try:
                if first or trio.current_time() >= quiet_until:
                    sent = trio.current_time()
                    epoch = await self.coordinator.lease_acquire(self.token, self.ttl_s,
                                                                 self.known_epoch)
                    if epoch:
                        self.epoch = self.known_epoch = epoch
                        self._renewed(sent)
                        return
                else:
                    await self.coordinator.ping()
            except BackendUnavailable:
                # Once Redis is back, give the incumbent a whole TTL to renew before asking.
                if not first:
                    quiet_until = trio.current_time() + self.ttl_s
            await trio.sleep(STANDBY_POLL_S)

    def _renewed(self, sent: float) -> None:
        self.deadline = sent + self.ttl_s - DRIFT_MARGIN_S
        self.renewed_at = trio.current_time()

    async def keep(self, leading: trio.CancelScope, *,
                   task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Renew every RENEW_S until cancelled; cancel ``leading`` when another process holds
        the lease or a newer epoch exists, or when the deadline passes without a renewal.

        Errors: an outage is ridden out until the deadline (renewal retried every RENEW_S)."""
        task_status.started()
        while True:
            with trio.move_on_at(self.deadline) as timer:
                await trio.sleep(RENEW_S)
                sent = trio.current_time()
                try:
                    result = await self.coordinator.lease_renew(self.token, self.ttl_s, self.epoch)
                except BackendUnavailable:
                    continue
                if result == 0:
                    log.error("engine lease (epoch %d) held by another process or superseded: "
                              "stepping down", self.epoch)
                    leading.cancel()
                    return
                self._renewed(sent)
                if result == 2:
                    log.warning("engine lease taken back after Redis came back")
            if timer.cancelled_caught:
                log.error("engine lease (epoch %d) not renewed in time: stepping down at its "
                          "deadline", self.epoch)
                self.expired = True
                leading.cancel()
                return

    async def release(self) -> None:
        """Give the lease up (a clean stop), so that a standby takes over at once."""
        self.epoch = 0
        self.deadline = -math.inf
        if self.expired:
            return   # nothing to give back: it is past its deadline (Redis may be gone)
        with trio.CancelScope(shield=True), trio.move_on_after(1.0):
            try:
                await self.coordinator.lease_release(self.token)
            except BackendUnavailable:
                pass


class Outbox:
    """The events of the commands being applied, held for the checkpoint that records them.

    ``take`` is the engine's ``hold``: it keeps an event of a command in flight (returning True:
    not to be published now) and lets every other one go."""

    def __init__(self) -> None:
        self.in_flight: set[str] = set()
        self.events: list[dict] = []

    def take(self, event: dict) -> bool:
        if event.get("command_id") in self.in_flight:
            self.events.append(event)
            return True
        return False


class Commander:
    """Applies the stream's commands to the leading engine and checkpoints, in one task."""

    def __init__(self, engine: Engine, coordinator: Coordinator, lease: Lease,
                 leading: trio.CancelScope, outbox: Outbox | None = None) -> None:
        self.engine = engine
        self.coordinator = coordinator
        self.lease = lease
        self.leading = leading
        self.outbox = outbox or Outbox()
        self.checkpointed_at = -math.inf   # Trio time of the last acknowledged checkpoint
        self.consumer = lease.token
        self.applied_count = 0
        self.skipped_count = 0      # duplicates and unreadable entries, acknowledged only
        self._acks: list[tuple[str, str]] = []
        self._settled = True        # every applied command has had SETTLE_S to reach its agents

    async def run(self, *, task_status: trio.TaskStatus[Commander] = trio.TASK_STATUS_IGNORED) -> None:
        """Apply commands and checkpoint until cancelled.

        First the commands that a previous leader received but never checkpointed, then new
        ones. Errors: a Redis outage pauses reading and checkpointing (retried every RETRY_S);
        the applied but unacknowledged commands stay pending here until a checkpoint succeeds.
        Losing the lease (a refused checkpoint) cancels the leading scope. Cancellation: the
        commands applied and settled are checkpointed (bounded), so that a clean handover
        applies none of them again; unsettled ones are left to the next leader.
        """
        try:
            await self._retry(self.coordinator.ensure_group)
            claimed = await self._retry(self.coordinator.claim_commands, self.consumer)
            if claimed:
                log.warning("taking over %d unacknowledged commands", len(claimed))
                await self._apply(claimed)
            await self._checkpoint()
            task_status.started(self)
            due = trio.current_time() + CHECKPOINT_S
            while True:
                try:
                    entries = await self.coordinator.read_commands(self.consumer)
                except BackendUnavailable:
                    await trio.sleep(RETRY_S)
                    entries = []
                if entries:
                    await self._apply(entries)
                if entries or self._acks or trio.current_time() >= due:
                    await self._checkpoint()
                    due = trio.current_time() + CHECKPOINT_S
        finally:
            if self._acks and self._settled:
                with trio.CancelScope(shield=True), trio.move_on_after(FINAL_CHECKPOINT_S):
                    await self._checkpoint()

    async def _retry(self, fn: Callable[..., Any], *args: Any) -> Any:
        while True:
            try:
                return await fn(*args)
            except BackendUnavailable:
                await trio.sleep(RETRY_S)

    async def _apply(self, entries: list[tuple[str, dict | None]]) -> None:
        ids = [c["command_id"] for _, c in entries if c and isinstance(c.get("command_id"), str)]
        done = await self._retry(self.coordinator.applied, ids)
        self._settled = False
        pending = {c for _, c in self._acks}
        for entry, command in entries:
            command_id = command.get("command_id") if command else None
            if not isinstance(command_id, str) or command_id in done or command_id in pending:
                self._acks.append((entry, ""))
                self.skipped_count += 1
                continue
            self.outbox.in_flight.add(command_id)
            await self._apply_one(command, command_id)
            self._acks.append((entry, command_id))
            pending.add(command_id)
            self.applied_count += 1
        # Let the agent tasks act on what was sent to them before the state is checkpointed.
        await trio.sleep(SETTLE_S)
        self._settled = True

    async def _apply_one(self, command: dict, command_id: str) -> None:
        kind = command.get("kind")
        by = checked_by(command.get("by"))
        try:
            if kind == "disperse":
                await self.engine.disperse(command.get("level"), command.get("sphere"), command_id,
                                           by=by)
            elif kind == "regroup":
                await self.engine.regroup(command_id, by=by)
            elif kind == "retune":
                await self.engine.retune(command.get("agent"), command.get("frequency"), command_id,
                                         by=by)
            else:
                log.error("command %s of unknown kind %r ignored", command_id, kind)
        except CommandError as exc:
            # The API validated it; a newer API speaking to an older engine can still get here.
            log.error("command %s refused by the engine: %s", command_id, exc.detail)

    async def _checkpoint(self) -> None:
        if trio.current_time() >= self.lease.deadline:
            return   # past the lease's own deadline: this process no longer writes as leader
        acks = list(self._acks)
        events = list(self.outbox.events)
        checkpoint = self.engine.checkpoint()
        seq, now = checkpoint.seq, checkpoint.t
        state = encode_checkpoint(checkpoint.state, seq, now)
        summary = encode_summary(checkpoint.state, seq, now)
        try:
            held = await self.coordinator.checkpoint(self.lease.token, state, summary,
                                                     int(now * 1000), acks, self.lease.ttl_s,
                                                     epoch=self.lease.epoch, events=events)
        except BackendUnavailable:
            return
        if not held:
            log.error("checkpoint refused: the engine lease is another's or superseded "
                      "(epoch %d); stepping down", self.lease.epoch)
            self.leading.cancel()
            return
        self.checkpointed_at = trio.current_time()
        del self._acks[:len(acks)]
        del self.outbox.events[:len(events)]
        # Announced: what these commands' agents do from now on goes out as it happens.
        self.outbox.in_flight.difference_update(c for _, c in acks if c)


def engine_alarms(bus: Bus, on_report: Callable[[Report], None] | None = None, *,
                  clock: WallClock | None = None):
    """``(on_report, on_overload)`` for an engine process, which has no Brise-Circuit of its own:
    an escalated crash loop or a lasting overload goes out as a ``safeguard`` event opening the
    circuit (``safeguard.is_engine_alarm``), stamped with when it was raised (``clock``), on
    which the API processes open the shared circuit (``remote.follow_engine_alarms``)."""
    clock = clock or WallClock()

    def report(report: Report) -> None:
        if on_report is not None:
            on_report(report)
        reason = escalation_reason(report)
        if reason is not None:
            bus.publish_event(safeguard_event(OPEN, reason, clock.now()))

    def overload(seconds: float) -> None:
        bus.publish_event(safeguard_event(OPEN, overload_reason(seconds), clock.now()))

    return report, overload


async def restore(engine: Engine, coordinator: Coordinator, store: Store) -> str:
    """Put the newest saved state into ``engine`` (not running yet); say where it came from.

    Redis not answering: retried until it does (starting fresh would drop the swarm's state),
    while the lease keeper, already running, steps down if the lease is lost meanwhile."""
    while True:
        try:
            data = await coordinator.load_checkpoint()
            break
        except BackendUnavailable:
            await trio.sleep(RETRY_S)
    if data is not None:
        try:
            saved = decode_checkpoint(data)
        except ValueError as exc:
            log.error("unreadable checkpoint ignored: %s", exc)
        else:
            # The saved arrays put into a copy of the engine's state, then handed to the engine,
            # whose frame numbers go on increasing across the failover.
            mine = engine.checkpoint().state
            if apply_checkpoint(mine, saved) and engine.restore(Checkpoint(saved.seq, saved.t, mine)):
                return "checkpoint"
    try:
        if await restore_from_store(engine, store):
            return "store"
    except BackendUnavailable as exc:
        log.error("the store's snapshot could not be read (%s): starting from a fresh swarm", exc)
    return "fresh"


class EngineRole:
    """One engine process of a Redis deployment. ``engine`` is the running engine while this
    process leads, else None; ``leading`` is set while it leads (a fresh Event each term)."""

    def __init__(self, settings: Settings, bus: Bus, coordinator: Coordinator, store: Store, *,
                 on_report: Callable[[Report], None] | None = None,
                 on_overload: Callable[[float], None] | None = None,
                 announce: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self.bus = bus
        self.coordinator = coordinator
        self.store = store
        self.on_report = on_report
        self.on_overload = on_overload
        # Leading and standing by are said on stderr (operators and tests watch for them).
        self.announce = announce or (lambda message: log.warning("%s", message))
        self.lease = Lease(coordinator)
        self.engine: Engine | None = None
        self.commander: Commander | None = None
        self.restored_from: str | None = None
        self.terms = 0
        self.leading = trio.Event()

    def write_age(self) -> float:
        """Seconds since Redis last acknowledged this leader's checkpoint (inf: none, or not
        leading)."""
        if self.commander is None:
            return math.inf
        return trio.current_time() - self.commander.checkpointed_at

    async def run(self, *, task_status: trio.TaskStatus[EngineRole] = trio.TASK_STATUS_IGNORED) -> None:
        """Stand by, lead, stand by again when the lease is lost; until cancelled.

        Cancellation: a leader gives its lease up (bounded) so that a standby takes over at
        once. Errors: a supervisor escalation ends the engine and this task with it (the
        process exits; a standby takes over after the TTL).
        """
        task_status.started(self)
        self.announce("engine standing by")
        while True:
            await self.lease.acquire()
            self.terms += 1
            try:
                await self._lead()
            finally:
                self.engine = None
                self.commander = None
                self.leading = trio.Event()
                await self.lease.release()
            self.announce("engine standing by")

    async def _lead(self) -> None:
        async with trio.open_nursery() as nursery:
            leading = nursery.cancel_scope
            await nursery.start(self.lease.keep, leading)
            engine_log = await nursery.start(EventLog(self.store).run)
            outbox = Outbox()
            engine = Engine(self.settings, self.bus, on_event=engine_log.offer,
                            on_report=self.on_report, on_overload=self.on_overload,
                            hold=outbox.take)
            self.restored_from = await restore(engine, self.coordinator, self.store)
            await nursery.start(engine.run)
            await nursery.start(snapshot_agents, engine, self.store)
            self.commander = await nursery.start(
                Commander(engine, self.coordinator, self.lease, leading, outbox).run)
            self.engine = engine
            self.announce(f"engine leading (term {self.terms}, state from {self.restored_from})")
            self.leading.set()
