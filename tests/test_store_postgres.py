"""The PostgreSQL store against real servers: the shared one (a database per test) and, for
outages, a throwaway one."""

from __future__ import annotations

import pytest
import trio

from atom_actors.audit import derive_key
from atom_actors.coordinator import MemoryCoordinator
from atom_actors.errors import BackendUnavailable, SessionInvalid
from atom_actors.sessions import SessionService
from atom_actors.store import AgentRow, ChainState, EventRecord, SessionRecord
from atom_actors.store.postgres import ChainHead, PostgresStore, migrate, migrations, verify

from .servers import free_port, sql

KEY = "k" * 40
CHAIN_KEY = derive_key(KEY, "audit-chain")


async def sessions_on(nursery: trio.Nursery, store: PostgresStore) -> SessionService:
    """Sessions as one process keeps them: live in its own (memory) coordinator, durable in
    ``store``."""
    return await nursery.start(SessionService(MemoryCoordinator(), KEY, store=store,
                                              sceau_duration_ms=2000, ttl_s=3600,
                                              frequency=999).run)


async def recorded(service: SessionService) -> None:
    while service.durable_pending:
        await trio.sleep(0.05)


async def started(nursery: trio.Nursery, url: str, **kwargs) -> PostgresStore:
    return await nursery.start(PostgresStore(url, chain_key=CHAIN_KEY, **kwargs).run)


async def test_migrations_from_empty_then_rerun_are_a_no_op(nursery, pg_url):
    with trio.fail_after(20):
        store = await started(nursery, pg_url)
        assert store.applied == [m.version for m in migrations()] == [1, 2]
        assert await migrate(pg_url) == []            # `atom migrate` on an up-to-date database
        rows = await sql(pg_url, "SELECT version, name FROM schema_migrations ORDER BY version")
        assert rows == [{"version": 1, "name": "init"}, {"version": 2, "name": "audit"}]
        tables = {r["table_name"] for r in await sql(
            pg_url, "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")}
        assert {"agents", "sessions", "events", "schema_migrations"} <= tables
        again = await started(nursery, pg_url)         # a second process starting later
        assert again.applied == []


async def test_two_processes_migrating_at_once_apply_each_migration_once(pg_url):
    results = []

    async def one() -> None:
        results.append(await migrate(pg_url))

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(one)
            nursery.start_soon(one)
    assert sorted(results) == [[], [1, 2]]


async def test_sessions_survive_a_restart_of_the_store(pg_url):
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            store = await started(nursery, pg_url)
            service = await sessions_on(nursery, store)
            kept = await service.activate(2000)
            revoked = await service.activate(2500)
            await service.revoke(revoked.token)
            await recorded(service)
            nursery.cancel_scope.cancel()
        async with trio.open_nursery() as nursery:
            store = await started(nursery, pg_url)
            service = await sessions_on(nursery, store)   # a new process: its coordinator is empty
            assert (await service.verify(kept.token)).id == kept.id
            with pytest.raises(SessionInvalid, match="revoked"):
                await service.verify(revoked.token)
            nursery.cancel_scope.cancel()
    # Only the hash of a token is stored, never the token.
    rows = await sql(pg_url, "SELECT id, frequency, sceau_validated, revoked FROM sessions ORDER BY revoked")
    assert [r["id"] for r in rows] == [kept.id, revoked.id]
    assert all(kept.token not in str(r) and revoked.token not in str(r) for r in rows)


async def test_session_record_round_trip(nursery, pg_url):
    with trio.fail_after(20):
        store = await started(nursery, pg_url)
        record = SessionRecord(id="ab" * 32, created_at=1_700_000_000.25, expires_at=1_700_003_600.5,
                               frequency=999.0)
        await store.save_session(record)
        assert await store.get_session(record.id) == record
        assert await store.get_session("cd" * 32) is None
        assert await store.revoke_session(record.id) is True
        assert (await store.get_session(record.id)).revoked is True
        assert await store.revoke_session("cd" * 32) is False


async def test_events_newest_first_by_kind_and_a_command_recorded_once(nursery, pg_url):
    with trio.fail_after(20):
        store = await started(nursery, pg_url)
        await store.record_event(EventRecord(100.0, "dispersal", {"level": "partial", "command_id": "c1"}))
        await store.record_event(EventRecord(101.0, "safeguard", {"state": "open", "reason": "rate"}))
        await store.record_event(EventRecord(102.0, "regroup", {"count": 70, "command_id": "c2"}))
        # The same command applied again by a new leader after a failover: kept once.
        await store.record_event(EventRecord(103.0, "dispersal", {"level": "partial", "command_id": "c1"}))
        events = await store.events()
        assert [(e.t, e.kind) for e in events] == [(102.0, "regroup"), (101.0, "safeguard"),
                                                   (100.0, "dispersal")]
        assert await store.events("dispersal") == [
            EventRecord(100.0, "dispersal", {"level": "partial", "command_id": "c1"})]
        assert len(await store.events(limit=1)) == 1


OPERATOR = "0123456789abcdef"


async def test_records_form_a_verified_chain_and_a_duplicate_adds_no_link(nursery, pg_url):
    with trio.fail_after(20):
        # A row from before the chain's migration (no link): older than the chain, not counted.
        store = await started(nursery, pg_url)
        await sql(pg_url, "INSERT INTO events (time, kind, payload) VALUES (now(), 'regroup', '{}')")
        await store.record_event(EventRecord(100.25, "dispersal",
                                             {"level": "partial", "command_id": "c1",
                                              "ratio": 0.1 + 0.2, "big": 1e20, "name": "é"},
                                             role="operator", operator=OPERATOR))
        await store.record_event(EventRecord(101.000001, "safeguard", {"state": "open"}))
        await store.record_event(EventRecord(102.0, "dispersal", {"command_id": "c1"},
                                             role="operator", operator=OPERATOR))   # again: kept once
        await store.record_event(EventRecord(103.0, "safeguard", {"state": "closed"},
                                             role="guardian", operator="fedcba9876543210"))
        links = await sql(pg_url, "SELECT id, link FROM events ORDER BY id")
        assert [r["link"] is None for r in links] == [True, False, False, False]
        assert await store.verify() == ChainState(3, True, None)
        entries, state = await store.audit(limit=2)
        assert state == ChainState(2, True, None)
        assert [(e.record.kind, e.record.role, e.record.operator) for e in entries] == [
            ("safeguard", "guardian", "fedcba9876543210"), ("safeguard", None, None)]
        assert [e.id for e in entries] == [links[3]["id"], links[2]["id"]]
        assert (await store.events("dispersal"))[0].operator == OPERATOR
        # The same walk from a process that knows the database and the key only (atom audit verify).
        assert await verify(pg_url, CHAIN_KEY) == ChainState(3, True, None)
        assert (await verify(pg_url, derive_key("t" * 40, "audit-chain"))).first_broken == \
            links[1]["id"]


async def test_two_processes_recording_at_once_keep_one_chain(nursery, pg_url):
    """Two stores (two processes' pools) record concurrently: the advisory lock gives the chain
    one order, and every record is in it."""
    with trio.fail_after(60):
        stores = [await started(nursery, pg_url) for _ in range(2)]

        async def record(store: PostgresStore, name: str) -> None:
            for i in range(40):
                await store.record_event(EventRecord(1000.0 + i, "regroup",
                                                     {"command_id": f"{name}-{i}"}))

        async with trio.open_nursery() as both:
            for n, store in enumerate(stores):
                for lane in range(3):
                    both.start_soon(record, store, f"p{n}l{lane}")
        assert await stores[0].verify() == ChainState(240, True, None)
        assert (await stores[1].audit(limit=500))[1] == ChainState(240, True, None)


async def test_the_head_finds_the_newest_records_cut_off(nursery, pg_url):
    coordinator = MemoryCoordinator()
    head = ChainHead(coordinator.advance_audit_head, coordinator.audit_head)
    with trio.fail_after(20):
        store = await started(nursery, pg_url, head=head)
        for i in range(4):
            await store.record_event(EventRecord(10.0 + i, "regroup", {"command_id": f"c{i}"}))
        ids = [r["id"] for r in await sql(pg_url, "SELECT id FROM events ORDER BY id")]
        assert (await coordinator.audit_head())[0] == ids[-1]
        assert await store.verify() == ChainState(4, True, None)
        await sql(pg_url, "DELETE FROM events WHERE id >= $1", ids[2])
        assert await store.verify() == ChainState(2, False, ids[-1])
        assert (await store.audit(limit=10))[1] == ChainState(2, False, ids[-1])
        # Without the head, the cut is invisible: that is what Redis's copy is for.
        assert await verify(pg_url, CHAIN_KEY) == ChainState(2, True, None)


async def test_a_head_that_cannot_be_told_does_not_fail_the_record(nursery, pg_url):
    coordinator = MemoryCoordinator()
    coordinator.sever()
    head = ChainHead(coordinator.advance_audit_head, coordinator.audit_head)
    with trio.fail_after(20):
        store = await started(nursery, pg_url, head=head)
        await store.record_event(EventRecord(10.0, "regroup", {"command_id": "c0"}))
        assert store.head_failures == 1
        assert len(await store.events()) == 1


def rows(frequency: float, status: str) -> list[AgentRow]:
    return [AgentRow(i, "personal", f"personal-{i:02d}", "guide", frequency + i, status,
                     float(i), -float(i), 0.5) for i in range(350)]


async def test_agents_are_saved_in_one_batch_and_replaced(nursery, pg_url):
    with trio.fail_after(20):
        store = await started(nursery, pg_url)
        assert await store.load_agents() == []
        await store.save_agents(rows(432.0, "active"))
        await store.save_agents(rows(500.0, "dispersed"))
        loaded = await store.load_agents()
        assert loaded == rows(500.0, "dispersed")


async def test_an_outage_is_a_503_at_once_sessions_go_on_and_are_recorded_after(nursery, pg_server):
    with trio.fail_after(60):
        store = await started(nursery, pg_server.url)
        service = await sessions_on(nursery, store)
        before = await service.activate(2000)
        await recorded(service)
        await pg_server.astop()
        start = trio.current_time()
        for operation in (store.ping(), store.load_agents()):
            with pytest.raises(BackendUnavailable) as caught:
                await operation
            assert caught.value.status == 503 and caught.value.code == "backend_unavailable"
        assert trio.current_time() - start < 3 * store.timeout_s
        # Sessions live in the coordinator: opened, checked and revoked without PostgreSQL.
        during = await service.activate(2000)
        await service.verify(before.token)
        await service.revoke(before.token)
        assert service.durable_pending == 2
        await pg_server.astart()
        await recorded(service)                  # written behind once the server is back
        rows = {r["id"]: r["revoked"] for r in await sql(pg_server.url,
                                                         "SELECT id, revoked FROM sessions")}
        assert rows == {before.id: True, during.id: False}


async def test_an_unreachable_server_at_start_is_reported_after_the_deadline():
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    with trio.fail_after(20):
        with pytest.raises(BackendUnavailable, match="the database is unavailable"):
            await PostgresStore(url, connect_deadline_s=0.5).run()
