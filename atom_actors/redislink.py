"""One part's connection to Redis (the bus's, the coordinator's): ``redis.asyncio`` on the
process's asyncio bridge, every call bounded, every outage one
:class:`~atom_actors.errors.BackendUnavailable`. A client keeps at most POOL_MAX connections; a
call beyond waits for a free one, within its bound.

The only module besides ``bus/redis.py`` and ``coordinator/redis.py`` that touches
``redis.asyncio``; those two hand it their ``_aio_*`` coroutine functions.
"""

from __future__ import annotations

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

POOL_MAX = 8         # connections of one client; a call beyond waits for one to be free

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
                yield self
            finally:
                self._guard.bridge = None
                await bridge.close(_aio_close, self._client)

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
                await bridge.call(_aio_listen, self._client, channels, on_subscribed)
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


async def _aio_close(client: Any) -> None:
    await client.aclose()


async def _aio_script(client: Any, script: Any, keys: list[str], args: list[Any]) -> Any:
    return await script(keys=keys, args=args, client=client)


async def _aio_listen(client: Any, channels: dict[bytes, Callable[[bytes], None]],
                      on_subscribed: Callable[[], None]) -> None:
    """Subscribe and hand each message to its channel's handler until the connection fails.

    The handlers are plain functions that hand data to Trio objects (a frame slot, event
    buffers): they run inside the Trio run, on the loop's task, so no hop is needed per message.
    """
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    try:
        await pubsub.subscribe(*channels)
        on_subscribed()
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is not None and message["type"] == "message":
                handler = channels.get(message["channel"])
                if handler is not None:
                    handler(message["data"])
    finally:
        try:
            await pubsub.aclose()
        except Exception:  # noqa: BLE001 - closing a broken connection may fail; it is gone anyway
            pass
