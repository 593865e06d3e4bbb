"""The PostgreSQL store (DATABASE_URL=postgresql://…): asyncpg, bridged into Trio.

Every query runs on the process's one asyncio loop through :class:`~atom_actors.aio.Bridge`,
bounded by ``timeout_s``. A server that refuses, drops the connection or does not answer in time
raises :class:`~atom_actors.errors.BackendUnavailable` (the API answers 503); other database
errors are bugs and propagate as they are.

Schema changes are versioned SQL files in ``migrations/`` (``NNNN_name.sql``), applied in order,
each once, in one transaction under an advisory lock (several processes may start together), and
listed in ``schema_migrations``. ``atom migrate`` applies them; so does :meth:`PostgresStore.run`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources
from typing import Any

import asyncpg
import trio

from ..aio import GuardedCalls, open_bridge
from ..errors import BackendUnavailable
from .base import AgentRow, AuditEntry, ChainState, EventRecord, SessionRecord, Store

log = logging.getLogger("atom_actors.store")

TIMEOUT_S = 2.0             # a query (or getting a connection) that takes longer is an outage
CONNECT_DEADLINE_S = 10.0   # at start, keep trying to reach the server this long
CONNECT_RETRY_S = 0.5
POOL_MAX = 4
PURGE_EVERY_S = 3600.0      # expired sessions are deleted a day after they expire
MIGRATION_LOCK = 0x41544F4D  # "ATOM": serialises concurrent migrators
MIGRATION_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

# What an unreachable, restarting or overloaded server looks like through asyncpg.
_OUTAGES: tuple[type[BaseException], ...] = (
    OSError,                                   # refused, reset, unreachable (ConnectionError)
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,           # connection lost or never made
    asyncpg.InterfaceError,                    # "connection is closed", pool closing
    asyncpg.CannotConnectNowError,             # starting up or shutting down
    asyncpg.exceptions.OperatorInterventionError,   # admin shutdown, crash shutdown
    asyncpg.exceptions.InsufficientResourcesError,  # too many connections
    # A connection dropped mid-query can leave asyncpg's protocol state behind ("cannot switch to
    # state 15; another operation is in progress") when the pool resets it: an outage too.
    asyncpg.exceptions.InternalClientError,
)


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    """The migrations shipped in the package, in version order."""
    found = []
    for entry in resources.files(__package__).joinpath("migrations").iterdir():
        match = MIGRATION_FILE.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"two migrations share a version: {versions}")
    return found


def _ts(t: float) -> datetime:
    return datetime.fromtimestamp(t, timezone.utc)




class PostgresStore(Store):
    """The :class:`~atom_actors.store.base.Store` on PostgreSQL."""

    name = "postgresql"

    def __init__(self, url: str, *, timeout_s: float = TIMEOUT_S,
                 connect_deadline_s: float = CONNECT_DEADLINE_S) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.connect_deadline_s = connect_deadline_s
        self.applied: list[int] = []   # migrations this process applied at start
        # Every query goes through this guard: bounded, an outage made BackendUnavailable.
        self._guard = GuardedCalls(self.name, "store", _OUTAGES, timeout_s,
                                   on_failure=self._failed)
        self._pool: asyncpg.Pool | None = None

    # -- running ------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[Store] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, apply pending migrations, then serve queries until cancelled.

        At start the server is retried for ``connect_deadline_s`` before BackendUnavailable is
        raised (a database that comes up a moment after us is normal in a deployment). Later
        outages never end this task: each query fails with BackendUnavailable until the server is
        back, and the pool reconnects by itself. Cancellation closes the pool (bounded).
        """
        async with open_bridge() as bridge:
            self._guard.bridge = bridge
            try:
                await self._connect()
                self.applied = await self._query(_aio_migrate)
                task_status.started(self)
                while True:
                    await trio.sleep(PURGE_EVERY_S)
                    try:
                        await self._query(_aio_purge)
                    except BackendUnavailable as exc:
                        log.warning("session purge skipped: %s", exc)
            finally:
                if self._pool is not None:
                    await bridge.close(_aio_close_pool, self._pool)
                self._pool = None
                self._guard.bridge = None

    async def _connect(self) -> None:
        deadline = trio.current_time() + self.connect_deadline_s
        while True:
            try:
                self._pool = await self._guard(_aio_pool, self.url, self.timeout_s)
                return
            except BackendUnavailable:
                if trio.current_time() + CONNECT_RETRY_S > deadline:
                    raise
            await trio.sleep(CONNECT_RETRY_S)

    async def _query(self, fn: Any, *args: Any) -> Any:
        """``fn(pool, *args)`` on the asyncio loop, through the guard."""
        if self._pool is None:
            raise self._guard.not_running()
        return await self._guard(fn, self._pool, *args)

    def _failed(self, _why: str) -> None:
        self.failures += 1

    async def ping(self) -> None:
        await self._query(_aio_fetchval, "SELECT 1")

    # -- sessions -------------------------------------------------------------------------------

    async def save_session(self, record: SessionRecord) -> None:
        await self._query(_aio_execute, """
            INSERT INTO sessions (id, created_at, expires_at, sceau_validated, frequency, revoked)
            VALUES ($1, $2, $3, $4, $5, $6)
            ON CONFLICT (id) DO UPDATE SET expires_at = EXCLUDED.expires_at,
                revoked = EXCLUDED.revoked, frequency = EXCLUDED.frequency""",
            record.id, _ts(record.created_at), _ts(record.expires_at), record.sceau_validated,
            record.frequency, record.revoked)

    async def get_session(self, session_id: str) -> SessionRecord | None:
        row = await self._query(_aio_fetchrow, """
            SELECT id, created_at, expires_at, sceau_validated, frequency, revoked
            FROM sessions WHERE id = $1""", session_id)
        if row is None:
            return None
        return SessionRecord(id=row["id"], created_at=row["created_at"].timestamp(),
                             expires_at=row["expires_at"].timestamp(), frequency=row["frequency"],
                             sceau_validated=row["sceau_validated"], revoked=row["revoked"])

    async def revoke_session(self, session_id: str) -> bool:
        status = await self._query(_aio_execute,
                                   "UPDATE sessions SET revoked = true WHERE id = $1", session_id)
        return status != "UPDATE 0"

    # -- events ---------------------------------------------------------------------------------

    async def record_event(self, record: EventRecord) -> None:
        await self._query(_aio_execute, """
            INSERT INTO events (time, kind, payload) VALUES ($1, $2, $3::jsonb)
            ON CONFLICT DO NOTHING""",
            _ts(record.t), record.kind, json.dumps(record.payload))

    async def events(self, kind: str | None = None, limit: int = 100) -> list[EventRecord]:
        rows = await self._query(_aio_fetch, """
            SELECT time, kind, payload FROM events
            WHERE $1::text IS NULL OR kind = $1 ORDER BY time DESC, id DESC LIMIT $2""",
            kind, limit)
        return [EventRecord(r["time"].timestamp(), r["kind"], json.loads(r["payload"])) for r in rows]

    async def audit(self, limit: int = 100) -> tuple[list[AuditEntry], ChainState]:
        rows = await self._query(_aio_fetch, """
            SELECT id, time, kind, payload FROM events ORDER BY id DESC LIMIT $1""", limit)
        entries = [AuditEntry(r["id"], EventRecord(r["time"].timestamp(), r["kind"],
                                                   json.loads(r["payload"]))) for r in rows]
        return entries, ChainState(len(entries), True)

    # -- agents ---------------------------------------------------------------------------------

    async def save_agents(self, rows: list[AgentRow]) -> None:
        columns = list(zip(*[(r.id, r.sphere, r.name, r.function, r.frequency, r.status,
                              r.pos_x, r.pos_y, r.pos_z) for r in rows])) or [[]] * 9
        await self._query(_aio_execute, """
            INSERT INTO agents (id, sphere, name, function, frequency, status, pos_x, pos_y, pos_z)
            SELECT * FROM unnest($1::int[], $2::text[], $3::text[], $4::text[], $5::float8[],
                                 $6::text[], $7::real[], $8::real[], $9::real[])
            ON CONFLICT (id) DO UPDATE SET sphere = EXCLUDED.sphere, name = EXCLUDED.name,
                function = EXCLUDED.function, frequency = EXCLUDED.frequency,
                status = EXCLUDED.status, pos_x = EXCLUDED.pos_x, pos_y = EXCLUDED.pos_y,
                pos_z = EXCLUDED.pos_z, updated_at = now()""",
            *[list(c) for c in columns])

    async def load_agents(self) -> list[AgentRow]:
        rows = await self._query(_aio_fetch, """
            SELECT id, sphere, name, function, frequency, status, pos_x, pos_y, pos_z
            FROM agents ORDER BY id""")
        return [AgentRow(**dict(r)) for r in rows]


async def migrate(url: str, *, timeout_s: float = TIMEOUT_S) -> list[int]:
    """Apply the pending migrations to the database at ``url``; return the versions applied.

    For ``atom migrate``: opens its own connection (and asyncio loop if needed) and closes both.
    """
    store = PostgresStore(url, timeout_s=timeout_s, connect_deadline_s=0)
    async with open_bridge() as bridge:
        store._guard.bridge = bridge
        try:
            await store._connect()
            return await store._query(_aio_migrate)
        finally:
            if store._pool is not None:
                await bridge.close(_aio_close_pool, store._pool)


# -- the asyncio side: the only code here that touches asyncpg objects -------------------------

async def _aio_pool(url: str, timeout_s: float) -> asyncpg.Pool:
    # min_size=0: connections are made on demand, so an outage is met by the next query (which
    # fails at once) rather than by a background reconnect loop logging tracebacks.
    return await asyncpg.create_pool(
        url, min_size=0, max_size=POOL_MAX, timeout=timeout_s, command_timeout=timeout_s,
        max_inactive_connection_lifetime=60.0,
        server_settings={"application_name": "atom_actors"})


async def _aio_close_pool(pool: asyncpg.Pool) -> None:
    await pool.close()


async def _aio_execute(pool: asyncpg.Pool, sql: str, *args: Any) -> str:
    return await pool.execute(sql, *args)


async def _aio_fetch(pool: asyncpg.Pool, sql: str, *args: Any) -> list[asyncpg.Record]:
    return await pool.fetch(sql, *args)


async def _aio_fetchrow(pool: asyncpg.Pool, sql: str, *args: Any) -> asyncpg.Record | None:
    return await pool.fetchrow(sql, *args)


async def _aio_fetchval(pool: asyncpg.Pool, sql: str, *args: Any) -> Any:
    return await pool.fetchval(sql, *args)


async def _aio_purge(pool: asyncpg.Pool) -> None:
    await pool.execute("DELETE FROM sessions WHERE expires_at < now() - interval '1 day'")


async def _aio_migrate(pool: asyncpg.Pool) -> list[int]:
    applied = []
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await conn.execute("""
            CREATE TABLE IF NOT EXISTS schema_migrations (
                version     integer PRIMARY KEY,
                name        text NOT NULL,
                applied_at  timestamptz NOT NULL DEFAULT now())""")
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for migration in migrations():
            if migration.version in done:
                continue
            await conn.execute(migration.sql)
            await conn.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                               migration.version, migration.name)
            applied.append(migration.version)
    return applied
