"""The in-process coordinator: the single-process default, and the fake that the failover tests
run on under a MockClock.

Several :class:`MemoryCoordinator` handles may share one :class:`Shared` state, as several
processes share one Redis: ``MemoryCoordinator(shared=other.shared)``. :meth:`sever` cuts one
handle off (every call then raises BackendUnavailable), which is how a test kills a process
without letting it say goodbye. Times are Trio's clock (virtual under a MockClock).
``Shared.announce`` is where a checkpoint's events go (the deployment's bus; nowhere if None).
"""

from __future__ import annotations

import dataclasses
import json
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from ..errors import BackendUnavailable
from ..store import SessionRecord
from .base import BUSY, MISMATCH, REPLAY, RUN, Claim, Coordinator, Entry

APPLIED_KEEP_S = 3600.0
LOG_KEEP = 10_000


@dataclass
class _KeyRecord:
    fingerprint: str
    command_id: str
    expires_at: float            # Trio time
    held_until: float = 0.0
    answer: tuple[int, bytes] | None = None


@dataclass
class Shared:
    """What the handles of one memory deployment share."""

    lease: tuple[str, float] | None = None                # (holder, expires at, Trio time)
    epoch: int = 0                                       # the newest handed out
    checkpoint_epoch: int = 0                            # the epoch of the last checkpoint
    entries: OrderedDict[str, dict | None] = field(default_factory=OrderedDict)
    next_entry: int = 0
    delivered: int = 0                                   # entries delivered so far (by count)
    pending: dict[str, str] = field(default_factory=dict)   # entry id -> consumer
    applied: dict[str, float] = field(default_factory=dict)  # command id -> applied at
    log: deque[str] = field(default_factory=lambda: deque(maxlen=LOG_KEEP))
    checkpoint: bytes | None = None
    summary: bytes | None = None
    sessions: dict[str, SessionRecord] = field(default_factory=dict)
    breaker: tuple[int, bytes | None] = (0, None)
    audit_head: tuple[int, bytes] | None = None
    presence: dict[str, tuple[int, float]] = field(default_factory=dict)
    idempotency: dict[str, _KeyRecord] = field(default_factory=dict)
    handles: list[MemoryCoordinator] = field(default_factory=list)
    new_entry: trio.Event = field(default_factory=trio.Event)
    announce: Callable[[list[dict]], None] | None = None


class MemoryCoordinator(Coordinator):
    name = "memory"

    def __init__(self, shared: Shared | None = None) -> None:
        super().__init__()
        self.shared = shared if shared is not None else Shared()
        self.shared.handles.append(self)
        self.severed = False

    def sever(self) -> None:
        """Cut this handle off: every call raises BackendUnavailable from now on."""
        self.severed = True

    def _check(self) -> Shared:
        if self.severed:
            self.failures += 1
            raise BackendUnavailable(self.name, "this handle is severed")
        return self.shared

    async def ping(self) -> None:
        self._check()

    # -- lease --------------------------------------------------------------------------------------

    def _holder(self) -> str | None:
        lease = self.shared.lease
        if lease is None or lease[1] <= trio.current_time():
            return None
        return lease[0]

    async def lease_acquire(self, token: str, ttl_s: float, known_epoch: int = 0) -> int:
        shared = self._check()
        if self._holder() is not None:
            return 0
        shared.epoch = max(shared.epoch, shared.checkpoint_epoch, known_epoch) + 1
        shared.lease = (token, trio.current_time() + ttl_s)
        return shared.epoch

    async def lease_renew(self, token: str, ttl_s: float, epoch: int) -> int:
        shared = self._check()
        holder = self._holder()
        if holder not in (None, token) or shared.epoch > epoch:
            return 0
        shared.lease = (token, trio.current_time() + ttl_s)
        shared.epoch = epoch
        return 1 if holder == token else 2

    async def epoch(self) -> int:
        return self._check().epoch

    async def lease_release(self, token: str) -> None:
        shared = self._check()
        if self._holder() == token:
            shared.lease = None

    async def lease_holder(self) -> str | None:
        self._check()
        return self._holder()

    # -- commands -----------------------------------------------------------------------------------

    async def add_command(self, command: dict) -> str:
        shared = self._check()
        shared.next_entry += 1
        entry = f"{shared.next_entry}-0"
        # Through JSON, as through Redis: what the engine reads is a copy.
        shared.entries[entry] = json.loads(json.dumps(command))
        shared.new_entry.set()
        shared.new_entry = trio.Event()
        return entry

    async def read_commands(self, consumer: str, count: int = 64,
                            block_s: float = 0.5) -> list[Entry]:
        shared = self._check()
        if shared.delivered >= shared.next_entry:
            with trio.move_on_after(block_s):
                await shared.new_entry.wait()
            shared = self._check()
        fresh = [(entry, command) for entry, command in shared.entries.items()
                 if int(entry.split("-")[0]) > shared.delivered][:count]
        for entry, _ in fresh:
            shared.pending[entry] = consumer
            shared.delivered = int(entry.split("-")[0])
        return fresh

    async def claim_commands(self, consumer: str) -> list[Entry]:
        shared = self._check()
        for entry in shared.pending:
            shared.pending[entry] = consumer
        return [(entry, shared.entries.get(entry)) for entry in shared.pending]

    async def applied(self, command_ids: list[str]) -> set[str]:
        shared = self._check()
        return {c for c in command_ids if c in shared.applied}

    async def applied_log(self) -> list[str]:
        return list(self._check().log)

    async def checkpoint(self, token: str, state: bytes, summary: bytes, now_ms: int,
                         acks: list[tuple[str, str]], lease_ttl_s: float, *, epoch: int,
                         events: list[dict] | None = None) -> bool:
        shared = self._check()
        holder = self._holder()
        if holder not in (None, token) or shared.epoch > epoch:
            return False
        if holder is None:
            shared.lease = (token, trio.current_time() + lease_ttl_s)
        shared.epoch = shared.checkpoint_epoch = epoch
        shared.checkpoint, shared.summary = state, summary
        now_s = now_ms / 1000
        for entry, command_id in acks:
            shared.pending.pop(entry, None)
            shared.entries.pop(entry, None)
            if command_id:
                shared.applied[command_id] = now_s
                shared.log.append(command_id)
        horizon = now_s - APPLIED_KEEP_S
        for command_id in [c for c, t in shared.applied.items() if t < horizon]:
            del shared.applied[command_id]
        for handle in shared.handles:
            if not handle.severed:
                handle._deliver_summary(summary)
        if events and shared.announce is not None:
            shared.announce(json.loads(json.dumps(events)))   # a copy, as through Redis
        return True

    async def load_checkpoint(self) -> bytes | None:
        return self._check().checkpoint

    async def load_summary(self) -> bytes | None:
        return self._check().summary

    # -- sessions -------------------------------------------------------------------------------------

    async def save_session(self, record: SessionRecord) -> None:
        shared = self._check()
        if len(shared.sessions) % 1024 == 1023:   # forget the expired now and then
            now = record.created_at
            shared.sessions = {k: v for k, v in shared.sessions.items() if v.expires_at > now}
        shared.sessions[record.id] = record

    async def get_session(self, session_id: str) -> SessionRecord | None:
        return self._check().sessions.get(session_id)

    async def revoke_session(self, session_id: str) -> bool:
        shared = self._check()
        record = shared.sessions.get(session_id)
        if record is None:
            return False
        shared.sessions[session_id] = dataclasses.replace(record, revoked=True)
        for handle in shared.handles:
            if not handle.severed:
                handle._deliver_revocation(session_id)
        return True

    # -- the Brise-Circuit ----------------------------------------------------------------------------

    async def load_breaker(self) -> tuple[int, bytes | None]:
        return self._check().breaker

    async def swap_breaker(self, version: int, data: bytes) -> bool:
        shared = self._check()
        if shared.breaker[0] != version:
            return False
        shared.breaker = (version + 1, data)
        return True

    # -- the audit chain's head ----------------------------------------------------------------------

    async def advance_audit_head(self, record_id: int, link: bytes) -> None:
        shared = self._check()
        if shared.audit_head is None or shared.audit_head[0] < record_id:
            shared.audit_head = (record_id, link)

    async def audit_head(self) -> tuple[int, bytes] | None:
        return self._check().audit_head

    # -- presence -------------------------------------------------------------------------------------

    async def set_subscribers(self, process: str, count: int, ttl_s: float) -> None:
        self._check().presence[process] = (count, trio.current_time() + ttl_s)

    async def total_subscribers(self) -> int:
        now = trio.current_time()
        return sum(count for count, until in self._check().presence.values() if until > now)

    # -- Idempotency-Key records --------------------------------------------------------------------

    def _key_record(self, record: str) -> _KeyRecord | None:
        shared = self._check()
        now = trio.current_time()
        if len(shared.idempotency) % 1024 == 1023:   # forget the expired now and then
            shared.idempotency = {k: v for k, v in shared.idempotency.items() if v.expires_at > now}
        found = shared.idempotency.get(record)
        return found if found is not None and found.expires_at > now else None

    async def idempotency_claim(self, record: str, fingerprint: str, command_id: str,
                                ttl_s: float, hold_s: float) -> Claim:
        now = trio.current_time()
        found = self._key_record(record)
        if found is None:
            self.shared.idempotency[record] = _KeyRecord(fingerprint, command_id, now + ttl_s,
                                                         now + hold_s)
            return Claim(RUN, command_id)
        if found.fingerprint != fingerprint:
            return Claim(MISMATCH)
        if found.answer is not None:
            return Claim(REPLAY, found.command_id, *found.answer)
        if found.held_until > now:
            return Claim(BUSY, found.command_id)
        found.held_until = now + hold_s
        return Claim(RUN, found.command_id)

    async def idempotency_answer(self, record: str, fingerprint: str, command_id: str,
                                 status: int, body: bytes, ttl_s: float) -> Claim:
        found = self._key_record(record)
        if found is None:
            found = self.shared.idempotency[record] = _KeyRecord(
                fingerprint, command_id, trio.current_time() + ttl_s)
        if found.answer is None:
            found.answer = (status, body)
        return Claim(REPLAY, found.command_id, *found.answer)

    async def idempotency_release(self, record: str) -> None:
        found = self._key_record(record)
        if found is not None and found.answer is None:
            found.held_until = 0.0
