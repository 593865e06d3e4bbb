"""The in-memory store keeps a long-running process bounded."""

from __future__ import annotations

from atom_actors.store import EventRecord, MemoryStore, SessionRecord
from atom_actors.store import memory


async def test_one_record_per_command_and_kind():
    store = MemoryStore()
    for _ in range(3):
        await store.record_event(EventRecord(1.0, "dispersal", {"command_id": "c1", "count": 70}))
    await store.record_event(EventRecord(2.0, "retune", {"command_id": "c1"}))
    assert [e.kind for e in await store.events()] == ["retune", "dispersal"]


async def test_events_keep_only_the_newest(monkeypatch):
    monkeypatch.setattr(memory, "MAX_EVENTS", 5)
    store = MemoryStore()
    for i in range(8):
        await store.record_event(EventRecord(float(i), "regroup", {"command_id": f"c{i}"}))
    assert [e.t for e in await store.events(limit=100)] == [7.0, 6.0, 5.0, 4.0, 3.0]
    # an evicted command may be recorded again; a kept one may not
    await store.record_event(EventRecord(9.0, "regroup", {"command_id": "c0"}))
    await store.record_event(EventRecord(9.0, "regroup", {"command_id": "c7"}))
    assert [e.t for e in await store.events(limit=100)][:2] == [9.0, 7.0]


async def test_expired_sessions_are_swept(monkeypatch):
    monkeypatch.setattr(memory, "SESSION_SWEEP", 4)
    store = MemoryStore()
    for i in range(3):
        await store.save_session(SessionRecord(f"old{i}", 0.0, 10.0, 999.0))
    await store.save_session(SessionRecord("new", 100.0, 200.0, 999.0))
    assert await store.get_session("old0") is None
    assert await store.get_session("new") is not None
