"""The in-memory store: the default of a single-process run (nothing survives it) and the test fake."""

from __future__ import annotations

import dataclasses
from collections import deque

from .base import AgentRow, AuditEntry, ChainState, EventRecord, SessionRecord, Store


# A long-running single process must not grow without bound: the newest events are kept, and
# expired sessions are swept every SESSION_SWEEP saves. An event costs about 600 bytes here (its
# record, payload and dedup key): 10,000 of them grew a soak's RSS by 6 MB, 6 % of the process, for
# the 8 minutes they took to fill at 20 commands/s (issue 13). 1,000 fill within a minute at that
# rate and hold 0.6 MB; nothing reads further back than the newest few hundred.
MAX_EVENTS = 1_000
SESSION_SWEEP = 1024


class MemoryStore(Store):
    name = "memory"

    def __init__(self) -> None:
        self._sessions: dict[str, SessionRecord] = {}
        self._events: deque[EventRecord] = deque()
        self._ids: deque[int] = deque()        # each event's id, beside it
        self._next_id = 1
        self._event_keys: set[tuple[str, str]] = set()   # (kind, command_id): one record a command
        self._agents: list[AgentRow] = []

    async def save_session(self, record: SessionRecord) -> None:
        if len(self._sessions) % SESSION_SWEEP == SESSION_SWEEP - 1:
            now = record.created_at
            self._sessions = {k: v for k, v in self._sessions.items() if v.expires_at > now}
        self._sessions[record.id] = record

    async def get_session(self, session_id: str) -> SessionRecord | None:
        return self._sessions.get(session_id)

    async def revoke_session(self, session_id: str) -> bool:
        record = self._sessions.get(session_id)
        if record is None:
            return False
        self._sessions[session_id] = dataclasses.replace(record, revoked=True)
        return True

    async def record_event(self, record: EventRecord) -> None:
        key = _event_key(record)
        if key is not None:
            if key in self._event_keys:
                return
            self._event_keys.add(key)
        self._events.append(record)
        self._ids.append(self._next_id)
        self._next_id += 1
        if len(self._events) > MAX_EVENTS:
            self._event_keys.discard(_event_key(self._events.popleft()))
            self._ids.popleft()

    async def events(self, kind: str | None = None, limit: int = 100) -> list[EventRecord]:
        found = [e for e in reversed(self._events) if kind is None or e.kind == kind]
        return found[:limit]

    async def audit(self, limit: int = 100) -> tuple[list[AuditEntry], ChainState]:
        entries = [AuditEntry(i, e) for i, e in zip(reversed(self._ids), reversed(self._events))]
        entries = entries[:limit]
        return entries, ChainState(len(entries), True)

    async def save_agents(self, rows: list[AgentRow]) -> None:
        self._agents = list(rows)

    async def load_agents(self) -> list[AgentRow]:
        return list(self._agents)


def _event_key(record: EventRecord) -> tuple[str, str] | None:
    command = record.payload.get("command_id")
    return None if command is None else (record.kind, command)
