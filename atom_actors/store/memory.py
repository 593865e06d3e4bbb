"""The in-memory store: the default of a single-process run (nothing survives it) and the test fake."""

from __future__ import annotations

import dataclasses

from .base import AgentRow, EventRecord, SessionRecord, Store


class MemoryStore(Store):
    name = "memory"

    def __init__(self) -> None:
        self._sessions: dict[str, SessionRecord] = {}
        self._events: list[EventRecord] = []
        self._agents: list[AgentRow] = []

    async def save_session(self, record: SessionRecord) -> None:
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
        command = record.payload.get("command_id")
        if command is not None and any(e.kind == record.kind and e.payload.get("command_id") == command
                                       for e in self._events):
            return
        self._events.append(record)

    async def events(self, kind: str | None = None, limit: int = 100) -> list[EventRecord]:
        found = [e for e in reversed(self._events) if kind is None or e.kind == kind]
        return found[:limit]

    async def save_agents(self, rows: list[AgentRow]) -> None:
        self._agents = list(rows)

    async def load_agents(self) -> list[AgentRow]:
        return list(self._agents)
