"""One part's connection to Redis (the bus's, the coordinator's): ``redis.asyncio`` on the
process's asyncio bridge, every call bounded, every outage one
:class:`~atom_actors.errors.BackendUnavailable`. A client keeps at most POOL_MAX connections; a
call beyond waits for a free one, within its bound.

Which server is the primary this link writes to is asked every PRIMARY_EVERY_S (``ROLE`` on a
pooled connection, whose address it reports): ``primary`` (``host:port``, None while unknown or
when that server is a replica) and ``primary_changes`` (a failover, or the primary replaced) are
what ``atom_redis_primary`` and ``atom_redis_primary_changes_total`` show.

The only module besides ``bus/redis.py`` and ``coordinator/redis.py`` that touches
``redis.asyncio``; those two hand it their ``_aio_*`` coroutine functions.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aredis
import redis.exceptions
import trio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from .aio import GuardedCalls, open_bridge, outage_detail
from .errors import BackendUnavailable

POOL_MAX = 8         # connections of one client; a call beyond waits for one to be free
PRIMARY_EVERY_S = 1.0

OUTAGES: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,    # refused, reset, closed by a restart
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    OSError,
)


class RedisLink:
    """A client, its Lua scripts and its state (``up``, ``failures``), for one part named
    ``name``; ``async with link.open():`` around the part's life."""

    def __init__(self, url: str, *, name: str, timeout_s: float, log: logging.Logger,
                 scripts: dict[str, str] | None = None) -> None:
        self.url = url
        self.name = name
        self.timeout_s = timeout_s
        self.log = log
        self.failures = 0
        self.up = False                  # the last call or subscription succeeded
        self.primary: str | None = None  # host:port of the primary, as last asked
        self.primary_changes = 0         # times it was found to be another server
        self._last_primary: str | None = None
        self.scripts: dict[str, Any] = {}
        self._script_texts = scripts or {}
        # Every call to Redis goes through this guard: bounded, an outage made BackendUnavailable.
        self._guard = GuardedCalls("redis", name, OUTAGES, timeout_s, on_failure=self._failed,
                                   on_success=self.mark_up)
        self._client: Any = None

    @asynccontextmanager
    async def open(self) -> AsyncIterator[RedisLink]:
        """Make the client (no connection yet: an outage at start is like one later); close it
        on the way out, bounded, even when cancelled."""
        async with open_bridge() as bridge:
            self._client, self.scripts = await bridge.call(_aio_client, self.url, self.timeout_s,
                                                           self._script_texts)
            self._guard.bridge = bridge
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._watch_primary, name=f"redis/{self.name}/primary")
                    yield self
                    nursery.cancel_scope.cancel()
            finally:
                self._guard.bridge = None
                await bridge.close(_aio_close, self._client)

    async def _watch_primary(self) -> None:
        """Ask which server is the primary, every PRIMARY_EVERY_S, until cancelled. Errors: an
        outage leaves the last answer (the watcher asks again)."""
        while True:
            try:
                self._note_primary(await self.call(_aio_primary))
            except BackendUnavailable:
                pass
            await trio.sleep(PRIMARY_EVERY_S)

    def _note_primary(self, address: str | None) -> None:
        # None (a replica answered): the primary moved, the next one found counts as a change.
        if address is not None:
            if self._last_primary not in (None, address):
                self.primary_changes += 1
                self.log.warning("the redis primary of the %s changed", self.name)
            self._last_primary = address
        self.primary = address

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``await fn(client, *args)`` on the asyncio loop; an outage raises BackendUnavailable."""
        return await self._guard(fn, self._client, *args)

    def _failed(self, why: str) -> None:
        self.failures += 1
        self.down(why)

    async def script(self, name: str, keys: list[str], args: list[Any]) -> Any:
        return await self.call(_aio_script, self.scripts[name], keys, args)

    async def listen(self, channels: dict[bytes, Callable[[bytes], None]],
                     on_subscribed: Callable[[], None], retry_s: float) -> None:
        """Subscribe to ``channels`` and hand each message to its handler, forever: after a
        failure, subscribe again every ``retry_s``; ``on_subscribed`` runs at each success."""
        while True:
            bridge = self._guard.bridge
            if bridge is None:
                raise self._guard.not_running()
            try:
                await bridge.call(_aio_listen, self._client, channels, on_subscribed,
                                  2 * self.timeout_s)
            except OUTAGES as exc:
                self.down(outage_detail(exc))
            await trio.sleep(retry_s)

    def down(self, why: str) -> None:
        if self.up:
            self.log.warning("redis unavailable: %s", why)
        self.up = False

    def mark_up(self) -> None:
        # Said only after an outage was: at start, being reachable is no news (ZERO_LOG writes
        # nothing but start, stop and operational errors).
        if not self.up and self.failures:
            self.log.warning("redis available again")
        self.up = True


class OnRedis:
    """A part (the bus, the coordinator) whose calls all go through ``self.link``: its failure
    count (``atom_backend_errors_total``) and its state are the link's."""

    link: RedisLink

    @property
    def failures(self) -> int:
        return self.link.failures

    @property
    def up(self) -> bool:
        """The last call or subscription succeeded."""
        return self.link.up

    @property
    def primary(self) -> str | None:
        """host:port of the Redis primary this part is connected to, as last asked."""
        return self.link.primary

    @property
    def primary_changes(self) -> int:
        return self.link.primary_changes


# -- the asyncio side -------------------------------------------------------------------------------

async def _aio_client(url: str, timeout_s: float,
                      scripts: dict[str, str]) -> tuple[Any, dict[str, Any]]:
    # One immediate retry, no backoff: a pooled connection left broken by a Redis restart gets a
    # fresh one, while a call during an outage still fails at once (refused twice: 503). The
    # parts' pumps and subscriptions have their own retry loops.
    # A few connections, and a call waits for a free one (bounded by the call's own bound): with
    # redis-py's default pool every concurrent call opens a connection of its own, so a burst of
    # handshakes opened a hundred at once, and on a loaded machine they timed out (503 to good
    # clients) or hit the pool's limit of 100 ("Too many connections").
    pool = aredis.BlockingConnectionPool.from_url(
        url, max_connections=POOL_MAX, timeout=None, socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s / 2, retry=Retry(NoBackoff(), 1),
        health_check_interval=0)
    client = aredis.Redis.from_pool(pool)
    return client, {name: client.register_script(text) for name, text in scripts.items()}


async def _aio_primary(client: Any) -> str | None:
    """host:port of the server a pooled connection reaches, if it is a primary, else None."""
    pool = client.connection_pool
    connection = await pool.get_connection()
    try:
        await connection.send_command("ROLE")
        role = await connection.read_response()
        address = f"{connection.host}:{connection.port}"
    finally:
        await pool.release(connection)
    kind = role[0].decode() if isinstance(role[0], bytes) else str(role[0])
    return address if kind == "master" else None


async def _aio_close(client: Any) -> None:
    await client.aclose()


async def _aio_script(client: Any, script: Any, keys: list[str], args: list[Any]) -> Any:
    return await script(keys=keys, args=args, client=client)


LISTEN_IDLE_S = 1.0       # a subscription this quiet is asked for a PONG


async def _aio_listen(client: Any, channels: dict[bytes, Callable[[bytes], None]],
                      on_subscribed: Callable[[], None], silent_s: float) -> None:
    """Subscribe and hand each message to its channel's handler until the connection fails.

    The handlers are plain functions that hand data to Trio objects (a frame slot, event
    buffers): they run inside the Trio run, on the loop's task, so no hop is needed per message.

    A subscription hears nothing when its server hangs, or its host is gone without a reset
    (a failover): nothing fails, the messages just stop. So after LISTEN_IDLE_S without a
    message it sends a PING, and raises TimeoutError (an outage: the caller subscribes again)
    when ``silent_s`` pass without its PONG or any message.
    """
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    loop = asyncio.get_running_loop()
    try:
        await pubsub.subscribe(*channels)
        on_subscribed()
        heard = loop.time()
        pinged: float | None = None
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.25)
            now = loop.time()
            if message is not None:
                heard, pinged = now, None
                if message["type"] == "message":
                    handler = channels.get(message["channel"])
                    if handler is not None:
                        handler(message["data"])
            elif pinged is None and now - heard >= LISTEN_IDLE_S:
                await pubsub.ping(b"atom-keepalive")
                pinged = now
            elif pinged is not None and now - pinged >= silent_s:
                raise redis.exceptions.TimeoutError(
                    f"the subscription heard nothing for {now - heard:.1f} s, no PONG")
    finally:
        try:
            await pubsub.aclose()
        except Exception:  # noqa: BLE001 - closing a broken connection may fail; it is gone anyway
            pass
