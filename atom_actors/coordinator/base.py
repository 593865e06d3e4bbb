"""The coordinator interface. Every method may raise
:class:`~atom_actors.errors.BackendUnavailable` (the Redis one, during an outage); none blocks
longer than its implementation's timeout.

The command stream is a log with one consumer group (the engine processes): a command appended
by :meth:`Coordinator.add_command` is delivered to one engine by :meth:`read_commands`, stays
pending until a :meth:`checkpoint` acknowledges it (in the same atomic step that stores the state
it produced and records its id as applied), and a new leader takes every pending one over with
:meth:`claim_commands`. That is what makes "applied exactly once" hold across a failover
(``cluster.py``).

**Fencing.** Every lease comes with an *epoch*, a number that only grows: each acquisition takes
one above every epoch the deployment has seen (the last one handed out, the last checkpoint's,
and the caller's own), and with Redis replicas it is confirmed by them (``WAIT``) before the
caller may lead, so that a promoted replica never hands out an epoch already used. Every write of
a leader (its renewals, its checkpoints with the commands they acknowledge and the events they
announce) carries its epoch and is refused once a newer one exists, even where the lease key
itself was lost.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Final

import trio

from ..store import SessionRecord

# (stream entry id, command); the command is None when the entry cannot be read.
Entry = tuple[str, dict | None]
# Delivered on a revocation subscription when revocations may have been missed (a reconnection
# to Redis): the reader re-checks every session it holds.
RESYNC: Final = ""
REVOCATION_BUFFER: Final = 1024


# What an Idempotency-Key's record tells the request presenting it (Coordinator.idempotency_claim).
RUN: Final = "run"             # run the command, as ``command_id`` (this request holds the record)
REPLAY: Final = "replay"       # answered already: ``status`` and ``body`` are that answer
BUSY: Final = "busy"           # another request with this key is running it now
MISMATCH: Final = "mismatch"   # the key was used for another request (method, path or body)


@dataclass(frozen=True)
class Claim:
    """The state of one Idempotency-Key's record, as :meth:`Coordinator.idempotency_claim` and
    :meth:`Coordinator.idempotency_answer` find it."""

    state: str
    command_id: str = ""
    status: int = 0
    body: bytes = b""


class Revocations:
    """A bounded buffer of revoked session ids for one reader; a full one turns into RESYNC."""

    def __init__(self, size: int = REVOCATION_BUFFER) -> None:
        self._send, self._receive = trio.open_memory_channel[str](size)
        self._overflowed = False

    def offer(self, session_id: str) -> None:
        try:
            self._send.send_nowait(session_id)
        except trio.WouldBlock:
            self._overflowed = True

    async def receive(self) -> str:
        if self._overflowed:
            self._overflowed = False
            return RESYNC
        return await self._receive.receive()

    def __aiter__(self) -> Revocations:
        return self

    async def __anext__(self) -> str:
        return await self.receive()


class Coordinator(abc.ABC):
    """What the processes of one deployment share; ``run`` it like the bus and the store."""

    name = "coordinator"
    failures = 0   # calls that ended in BackendUnavailable: atom_backend_errors_total reads it

    def __init__(self) -> None:
        self.summary_listeners: list[Callable[[bytes], None]] = []
        self._revocation_readers: set[Revocations] = set()

    async def run(self, *, task_status: trio.TaskStatus[Coordinator] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the coordinator's own tasks (connections, subscriptions) until cancelled."""
        task_status.started(self)
        await trio.sleep_forever()

    async def ping(self) -> None:
        """Return when the coordinator answers; raise BackendUnavailable otherwise."""

    async def probe_write(self) -> None:
        """Return when a write (as a command's) is accepted; raise BackendUnavailable otherwise
        (Redis: down, or the server is a replica now). The readiness of an API process."""
        await self.ping()

    # -- the engine's lease -----------------------------------------------------------------------

    @abc.abstractmethod
    async def lease_acquire(self, token: str, ttl_s: float, known_epoch: int = 0) -> int:
        """Take the lease for ``ttl_s`` if nobody holds it: its epoch (greater than
        ``known_epoch``, the newest the caller has seen, and than any handed out before), or 0
        when it is held (or, with replicas, could not be confirmed by one)."""

    @abc.abstractmethod
    async def lease_renew(self, token: str, ttl_s: float, epoch: int) -> int:
        """1 renewed, 2 taken again after it vanished (Redis restarted), 0 held by another or
        a newer epoch exists."""

    @abc.abstractmethod
    async def lease_release(self, token: str) -> None:
        """Give the lease up if ``token`` holds it."""

    @abc.abstractmethod
    async def lease_holder(self) -> str | None: ...

    # -- the command stream and the checkpoints ------------------------------------------------------

    @abc.abstractmethod
    async def add_command(self, command: dict) -> str:
        """Append a command; once this returns, the command will be applied (exactly once).
        Raises :class:`~atom_actors.errors.CommandUnconfirmed` when that cannot be told (the
        write unanswered, or not acknowledged by REDIS_MIN_ACKS replicas)."""

    async def ensure_group(self) -> None:
        """Make the engines' consumer group if it is missing (after a Redis restart)."""

    @abc.abstractmethod
    async def read_commands(self, consumer: str, count: int = 64,
                            block_s: float = 0.5) -> list[Entry]:
        """New commands for ``consumer``, waiting up to ``block_s`` for one."""

    @abc.abstractmethod
    async def claim_commands(self, consumer: str) -> list[Entry]:
        """Every command delivered to some engine and not acknowledged, now owned by ``consumer``."""

    @abc.abstractmethod
    async def applied(self, command_ids: list[str]) -> set[str]:
        """Which of ``command_ids`` were applied (and checkpointed) in the last hour."""

    @abc.abstractmethod
    async def applied_log(self) -> list[str]:
        """The ids of the last applied commands, oldest first."""

    @abc.abstractmethod
    async def epoch(self) -> int:
        """The newest epoch handed out (0: none yet)."""

    @abc.abstractmethod
    async def checkpoint(self, token: str, state: bytes, summary: bytes, now_ms: int,
                         acks: list[tuple[str, str]], lease_ttl_s: float, *, epoch: int,
                         events: list[dict] | None = None) -> bool:
        """Atomically: store ``state`` and ``summary`` (handing the summary to every process's
        ``summary_listeners``), acknowledge the stream entries of ``acks`` ((entry id, command
        id); command id '' for an entry acknowledged without being applied), record their
        command ids as applied, and announce ``events`` (the events of those commands) to every
        process's bus, in one batch. False, and nothing written, if another token holds the
        lease or an epoch newer than ``epoch`` exists."""

    @abc.abstractmethod
    async def load_checkpoint(self) -> bytes | None: ...

    @abc.abstractmethod
    async def load_summary(self) -> bytes | None: ...

    def _deliver_summary(self, data: bytes) -> None:
        for listener in list(self.summary_listeners):
            listener(data)

    # -- sessions ---------------------------------------------------------------------------------

    @abc.abstractmethod
    async def save_session(self, record: SessionRecord) -> None:
        """Keep ``record`` until it expires."""

    @abc.abstractmethod
    async def get_session(self, session_id: str) -> SessionRecord | None:
        """The live or revoked record of ``session_id``; None once it expired or if unknown."""

    @abc.abstractmethod
    async def revoke_session(self, session_id: str) -> bool:
        """Mark it revoked and tell every process's revocation readers; False if unknown."""

    @contextmanager
    def subscribe_revocations(self) -> Iterator[Revocations]:
        """Revoked session ids as they happen anywhere in the deployment (and RESYNC when some
        may have been missed)."""
        reader = Revocations()
        self._revocation_readers.add(reader)
        try:
            yield reader
        finally:
            self._revocation_readers.discard(reader)

    def _deliver_revocation(self, session_id: str) -> None:
        for reader in self._revocation_readers:
            reader.offer(session_id)

    # -- Idempotency-Key records (CONTRACT §2) ------------------------------------------------------

    @abc.abstractmethod
    async def idempotency_claim(self, record: str, fingerprint: str, command_id: str,
                                ttl_s: float, hold_s: float) -> Claim:
        """Look ``record`` (a key's id, the caller's scope included) up and hold it for this
        request. Unknown: made, kept ``ttl_s``, holding ``command_id`` → RUN with it. Made for
        another ``fingerprint`` → MISMATCH. Answered → REPLAY. Held by a request that started
        less than ``hold_s`` ago → BUSY. Otherwise (released, or its holder gone) → RUN with the
        command id the record was made with, so that a command sent again is applied once."""

    @abc.abstractmethod
    async def idempotency_answer(self, record: str, fingerprint: str, command_id: str,
                                 status: int, body: bytes, ttl_s: float) -> Claim:
        """Keep this answer unless one is kept already; REPLAY with the one kept (the first).
        A record gone meanwhile (expired, or lost with a primary) is made again with it."""

    @abc.abstractmethod
    async def idempotency_release(self, record: str) -> None:
        """Stop holding ``record`` without an answer (the command failed or its outcome is
        unknown): the next request with its key runs it again, with the same command id."""

    # -- the Brise-Circuit's shared state ------------------------------------------------------------

    @abc.abstractmethod
    async def load_breaker(self) -> tuple[int, bytes | None]:
        """The Brise-Circuit's state as last stored, and its version (0: never stored)."""

    @abc.abstractmethod
    async def swap_breaker(self, version: int, data: bytes) -> bool:
        """Store ``data`` as version ``version + 1`` if the stored version is still ``version``."""

    # -- the audit chain's head ----------------------------------------------------------------------

    @abc.abstractmethod
    async def advance_audit_head(self, record_id: int, link: bytes) -> None:
        """Keep ``(record_id, link)`` as the audit chain's newest link unless a newer record's
        (a greater id) is kept already: processes that record concurrently report out of order."""

    @abc.abstractmethod
    async def audit_head(self) -> tuple[int, bytes] | None:
        """The audit chain's newest link kept, as ``(record id, link)``; None if none is."""

    # -- presence ---------------------------------------------------------------------------------

    @abc.abstractmethod
    async def set_subscribers(self, process: str, count: int, ttl_s: float) -> None:
        """Say how many subscribers ``process`` has; forgotten after ``ttl_s`` unless said again."""

    @abc.abstractmethod
    async def total_subscribers(self) -> int:
        """The subscribers of every process that spoke within its ``ttl_s``."""
