"""The store interface. Nothing stored identifies a person: sessions are kept by the hash of their
token, events carry swarm facts only.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

import trio


@dataclass(frozen=True, slots=True)
class SessionRecord:
    id: str                    # sha256 hex of the token: the token itself is never stored
    created_at: float          # Unix seconds
    expires_at: float
    frequency: float
    sceau_validated: bool = True
    revoked: bool = False


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One audit record (CONTRACT §2.4): a command or a Brise-Circuit change.

    ``role`` is the role that allowed it (``operator``, ``guardian``) and ``operator`` the caller's
    pseudonym (:func:`atom_actors.audit.pseudonym`); both None for what the server did by itself
    (a trip, a regroup on opening). Nothing else about a person is ever here."""

    t: float                   # Unix seconds
    kind: str                  # dispersal, regroup, retune, safeguard
    payload: dict[str, Any] = field(default_factory=dict)
    role: str | None = None
    operator: str | None = None


@dataclass(frozen=True, slots=True)
class AgentRow:
    id: int
    sphere: str
    name: str
    function: str
    frequency: float
    status: str
    pos_x: float
    pos_y: float
    pos_z: float


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """A record as the audit lists it: its place in the store (``id``, increasing) and itself."""

    id: int
    record: EventRecord


@dataclass(frozen=True, slots=True)
class ChainState:
    """What a walk of the audit's keyed hash chain found (CONTRACT §2.4): ``records`` walked,
    whether every link holds, and the first record whose link does not (None if all hold)."""

    records: int
    verified: bool
    first_broken: int | None = None


class Store(abc.ABC):
    name = "store"
    failures = 0   # calls that ended in BackendUnavailable: atom_backend_errors_total reads it

    async def run(self, *, task_status: trio.TaskStatus[Store] = trio.TASK_STATUS_IGNORED) -> None:
        """Open connections (and apply migrations), then hold them until cancelled."""
        task_status.started(self)
        await trio.sleep_forever()

    async def ping(self) -> None:
        """Return when the store answers; raise BackendUnavailable otherwise."""

    # sessions
    @abc.abstractmethod
    async def save_session(self, record: SessionRecord) -> None: ...

    @abc.abstractmethod
    async def get_session(self, session_id: str) -> SessionRecord | None: ...

    @abc.abstractmethod
    async def revoke_session(self, session_id: str) -> bool:
        """Mark a session revoked; False if there was none."""

    # events (dispersals, regroups, retunes, safeguard trips)
    @abc.abstractmethod
    async def record_event(self, record: EventRecord) -> None:
        """Append an event; one whose payload has a ``command_id`` is kept once per kind and
        command, so that a command applied again after an engine failover is recorded once."""

    @abc.abstractmethod
    async def events(self, kind: str | None = None, limit: int = 100) -> list[EventRecord]:
        """The newest events first."""

    @abc.abstractmethod
    async def audit(self, limit: int = 100) -> tuple[list[AuditEntry], ChainState]:
        """The newest ``limit`` records, newest first, and the chain's state over them."""

    # agents snapshot
    @abc.abstractmethod
    async def save_agents(self, rows: list[AgentRow]) -> None: ...

    @abc.abstractmethod
    async def load_agents(self) -> list[AgentRow]: ...
