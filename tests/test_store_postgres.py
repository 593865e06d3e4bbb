"""The PostgreSQL store against real servers: the shared one (a database per test) and, for
outages, a throwaway one."""

from __future__ import annotations

import pytest
import trio

from atom_actors.coordinator import MemoryCoordinator
from atom_actors.errors import BackendUnavailable, SessionInvalid
from atom_actors.sessions import SessionService
from atom_actors.store import AgentRow, EventRecord, SessionRecord
from atom_actors.store.postgres import PostgresStore, migrate, migrations

from .servers import free_port, sql

KEY = "k" * 40


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
    return await nursery.start(PostgresStore(url, **kwargs).run)


async def test_migrations_from_empty_then_rerun_are_a_no_op(nursery, pg_url):
    with trio.fail_after(20):
        store = await started(nursery, pg_url)
        assert store.applied == [m.version for m in migrations()] == [1]
        assert await migrate(pg_url) == []            # `atom migrate` on an up-to-date database
        rows = await sql(pg_url, "SELECT version, name FROM schema_migrations ORDER BY version")
        assert rows == [{"version": 1, "name": "init"}]
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
    assert sorted(results) == [[], [1]]


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
