"""One part's connection to Redis (the bus's, the coordinator's): ``redis.asyncio`` on the
process's asyncio bridge, every call bounded, every outage one
:class:`~atom_actors.errors.BackendUnavailable`. A client keeps at most POOL_MAX connections; a
call beyond waits for a free one, within its bound.

Which server is the primary this link writes to is asked every PRIMARY_EVERY_S (``ROLE`` on a
pooled connection, whose address it reports): ``primary`` (``host:port``, None while unknown or
when that server is a replica) and ``primary_changes`` (a failover, or the primary replaced) are
what ``atom_redis_primary`` and ``atom_redis_primary_changes_total`` show.

**Sentinel** (REDIS_URL=redis+sentinel://…, :func:`~atom_actors.config.parse_redis_url`): the
client asks the sentinels for the primary whenever it opens a connection (redis-py's
``Sentinel.master_for``), so after a failover:

* a connection to the dead primary fails (refused, reset, or silent past ``socket_timeout``):
  that call is an outage (503, or the part's own retry), and the next connection goes to the
  primary the sentinels name now; while they name none yet (``MasterNotFoundError``), calls fail
  at once;
* a connection still open to the old primary, demoted to a replica, answers writes ``READONLY``:
  redis-py's sentinel connection then drops itself (the primary moved) and the call is an
  outage; with a plain ``redis://`` URL a READONLY is an outage too (OUTAGES);
* the subscription (:meth:`RedisLink.listen`) is made again on the new primary; a subscription
  that hears nothing for SILENCE_S sends a PING and gives up on the connection if no answer
  comes within ``timeout_s`` (a hung primary keeps its sockets open and says nothing);
* Lua scripts are not in a promoted replica's script cache: redis-py's ``Script`` loads the
  script again when EVALSHA answers NOSCRIPT (``redis.commands.core.AsyncScript``).

Bounds, and why they are set here: redis-py 8's defaults (its PR #4082) retry a failed
connection ten times with backoff and wait 5 s for an answer, per sentinel asked, one sentinel
after another — a call could stall for tens of seconds on a dead or hung host (issue 20 points
at redis-py #3874 for such stalls). Here the
sentinels are asked with ``timeout_s`` (connecting: half of it) and no retry, the primary's
connections retry once without backoff, and :class:`~atom_actors.aio.GuardedCalls` bounds the
whole call at ``2 × timeout_s`` whatever the library does inside.

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
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff

from .aio import GuardedCalls, open_bridge, outage_detail
from .config import RedisAddress, parse_redis_url
from .errors import BackendUnavailable

POOL_MAX = 8         # connections of one client; a call beyond waits for one to be free
SILENCE_S = 1.0      # a subscription that heard nothing this long sends a PING
PRIMARY_EVERY_S = 1.0

OUTAGES: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,    # refused, reset, closed by a restart; no primary known
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.ReadOnlyError,      # a replica now: the primary moved
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
            self._client, self.scripts = await bridge.call(_aio_client, parse_redis_url(self.url),
                                                           self.timeout_s, self._script_texts)
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
                                  self.timeout_s)
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

class _BlockingSentinelPool(SentinelConnectionPool, aredis.BlockingConnectionPool):
    """redis-py's sentinel pool (connections to whichever node the sentinels name primary) with
    the blocking pool's waiting for a free connection (POOL_MAX), as for a plain URL.

    Relies on redis-py's asyncio ``SentinelConnectionPool.__init__`` handing its remaining
    keyword arguments on to ``super().__init__`` and on ``BlockingConnectionPool`` overriding only
    ``get_connection`` and ``release`` (redis 5.2 to 8.1; ``tests/test_redislink.py`` checks it
    against the installed one)."""


async def _aio_client(address: RedisAddress, timeout_s: float,
                      scripts: dict[str, str]) -> tuple[Any, dict[str, Any]]:
    # One immediate retry, no backoff: a pooled connection left broken by a Redis restart gets a
    # fresh one, while a call during an outage still fails at once (refused twice: 503). The
    # parts' pumps and subscriptions have their own retry loops.
    # A few connections, and a call waits for a free one (bounded by the call's own bound): with
    # redis-py's default pool every concurrent call opens a connection of its own, so a burst of
    # handshakes opened a hundred at once, and on a loaded machine they timed out (503 to good
    # clients) or hit the pool's limit of 100 ("Too many connections").
    bounds = dict(socket_timeout=timeout_s, socket_connect_timeout=timeout_s / 2)
    pooling = dict(max_connections=POOL_MAX, timeout=None, retry=Retry(NoBackoff(), 1),
                   health_check_interval=0)
    if not address.sentinels:
        pool = aredis.BlockingConnectionPool.from_url(address.url, **bounds, **pooling)
        client = aredis.Redis.from_pool(pool)
    else:
        # The sentinels: each asked at most once per discovery, bounded (module docstring).
        sentinel = Sentinel(list(address.sentinels),
                            sentinel_kwargs=dict(**bounds, retry=Retry(NoBackoff(), 0)))
        client = sentinel.master_for(address.master, connection_pool_class=_BlockingSentinelPool,
                                     db=address.db, username=address.username,
                                     password=address.password, **bounds, **pooling)
        client.atom_sentinel = sentinel   # closed with the client
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
    for node in getattr(getattr(client, "atom_sentinel", None), "sentinels", ()):
        await node.aclose()


async def _aio_script(client: Any, script: Any, keys: list[str], args: list[Any]) -> Any:
    return await script(keys=keys, args=args, client=client)


async def _aio_listen(client: Any, channels: dict[bytes, Callable[[bytes], None]],
                      on_subscribed: Callable[[], None], timeout_s: float) -> None:
    """Subscribe and hand each message to its channel's handler until the connection fails, or
    stays silent: after SILENCE_S without a message a PING goes out, and no answer within
    ``timeout_s`` is a TimeoutError (an outage: the caller subscribes again, on whichever node is
    primary by then).

    The handlers are plain functions that hand data to Trio objects (a frame slot, event
    buffers): they run inside the Trio run, on the loop's task, so no hop is needed per message.
    """
    loop = asyncio.get_running_loop()
    pubsub = client.pubsub()
    try:
        await pubsub.subscribe(*channels)
        on_subscribed()
        heard, pinged = loop.time(), None
        while True:
            message = await pubsub.get_message(timeout=min(SILENCE_S, timeout_s))
            now = loop.time()
            if message is not None:
                heard, pinged = now, None
                if message["type"] == "message":
                    handler = channels.get(message["channel"])
                    if handler is not None:
                        handler(message["data"])
            elif pinged is None and now - heard >= SILENCE_S:
                await pubsub.ping()
                pinged = now
            elif pinged is not None and now - pinged >= timeout_s:
                raise redis.exceptions.TimeoutError(
                    f"the subscription heard nothing for {now - heard:.1f} s, not even a PONG")
    finally:
        try:
            await pubsub.aclose()
        except Exception:  # noqa: BLE001 - closing a broken connection may fail; it is gone anyway
            pass
