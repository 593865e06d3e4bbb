"""The in-memory store keeps a long-running process bounded, and chains its events."""

from __future__ import annotations

import dataclasses

from atom_actors.audit import derive_key
from atom_actors.store import ChainState, EventRecord, MemoryStore, SessionRecord
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


async def test_events_form_a_keyed_chain_even_when_the_oldest_are_forgotten(monkeypatch):
    monkeypatch.setattr(memory, "MAX_EVENTS", 5)
    key = derive_key("s" * 40, "audit-chain")
    store = MemoryStore(key)
    for i in range(8):
        await store.record_event(EventRecord(float(i), "regroup", {"command_id": f"c{i}"},
                                             role="operator", operator="0123456789abcdef"))
    entries, state = await store.audit(limit=3)
    assert [e.id for e in entries] == [8, 7, 6] and entries[0].record.role == "operator"
    assert state == ChainState(3, True, None)
    assert await store.verify() == ChainState(5, True, None)
    # A duplicate adds no link.
    await store.record_event(EventRecord(9.0, "regroup", {"command_id": "c7"}))
    assert (await store.verify()).records == 5
    # A record changed in place is found (as a tamperer with the process's memory would).
    store._events[2] = dataclasses.replace(store._events[2], payload={"command_id": "forged"})
    assert await store.verify() == ChainState(5, False, 6)
    assert (await store.audit(limit=2))[1].verified   # the window after it holds


async def test_another_key_does_not_verify_the_chain():
    store = MemoryStore(derive_key("s" * 40, "audit-chain"))
    await store.record_event(EventRecord(1.0, "dispersal", {"command_id": "c1"}))
    other = MemoryStore(derive_key("t" * 40, "audit-chain"))
    other._events, other._ids, other._links = store._events, store._ids, store._links
    assert await other.verify() == ChainState(1, False, 1)
