"""The Redis bus (REDIS_URL=redis://…): ``redis.asyncio``, bridged into Trio.

What travels, under a namespace (``atom`` unless told otherwise)::

    atom:frames             pub/sub   each frame's f32 bytes exactly as the engine encoded them
    atom:events             pub/sub   each event as JSON text
    atom:summary            pub/sub   statuses + frequencies of every agent, twice a second (and
                            + key     the last one kept, for a process that starts later)
    atom:commands           stream    API processes' commands; consumer group ``engine``
    atom:engine:lease       key       which engine process leads (token, expiring)
    atom:engine:checkpoint  key       the leader's whole swarm state, for the next leader
    atom:engine:applied     zset      command ids applied in the last hour (idempotence)
    atom:engine:log         list      the last 10,000 applied command ids, in order

Publishing never blocks the caller (the 60 fps loop): :meth:`RedisBus.publish_frame` puts the
frame in a newest-wins slot that a pump task sends; events go through a bounded buffer that drops
(and counts) its newest when full. While Redis is down frames are dropped, never queued: the
broadcasters keep their clients, and frames flow again as soon as a publish and the subscription
succeed (retried every ``RETRY_S``).

Commands are acknowledged only by :meth:`RedisBus.checkpoint`, in the same atomic script that
stores the state they produced and records their ids: a leader that dies before it leaves them
pending for the next one, which applies each exactly once (see ``cluster.py``).

Every call is bounded: a refused, dropped or silent connection raises
:class:`~atom_actors.errors.BackendUnavailable` at once or within ``timeout_s``, never a hang.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from typing import Any

import redis.asyncio as aredis
import redis.exceptions
import trio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ..aio import GuardedCalls, open_bridge, outage_detail
from ..errors import BackendUnavailable
from ..protocol import Frame
from .base import EVENT_BUFFER, Bus

log = logging.getLogger("atom_actors.bus")

TIMEOUT_S = 1.0           # socket timeout of every call; connecting gets half of it
RETRY_S = 0.2             # after a failure, the pumps and the subscription try again this soon
FLUSH_S = 0.5             # at shutdown, for the events not sent yet
BLOCK_MS = 500            # a blocking stream read waits this long (well under TIMEOUT_S)
GROUP = "engine"
APPLIED_KEEP_MS = 3_600_000
LOG_KEEP = 10_000

_OUTAGES: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,    # refused, reset, closed by a restart
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    OSError,
)

# Stores the state the leader produced, acknowledges and records the commands it applied, and
# publishes the summary: all or nothing, and only while the caller still holds the lease (a lease
# that vanished, as in a Redis restart, is taken back as a renewal would).
_CHECKPOINT = """
local holder = redis.call('GET', KEYS[1])
if not holder then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[6])
elseif holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2])
redis.call('SET', KEYS[3], ARGV[3])
for i = 7, #ARGV, 2 do
  redis.call('XACK', KEYS[4], ARGV[5], ARGV[i])
  redis.call('XDEL', KEYS[4], ARGV[i])
  if ARGV[i + 1] ~= '' then
    redis.call('ZADD', KEYS[5], ARGV[4], ARGV[i + 1])
    redis.call('RPUSH', KEYS[6], ARGV[i + 1])
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', tonumber(ARGV[4]) - %d)
redis.call('LTRIM', KEYS[6], -%d, -1)
redis.call('PUBLISH', KEYS[3], ARGV[3])
return 1
""" % (APPLIED_KEEP_MS, LOG_KEEP)

# 1: renewed; 2: the key had gone (Redis restarted) and is ours again; 0: another holder.
_RENEW = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if not holder then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 2 end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Keys:
    def __init__(self, namespace: str) -> None:
        self.frames = f"{namespace}:frames"
        self.events = f"{namespace}:events"
        self.summary = f"{namespace}:summary"
        self.commands = f"{namespace}:commands"
        self.lease = f"{namespace}:engine:lease"
        self.checkpoint = f"{namespace}:engine:checkpoint"
        self.applied = f"{namespace}:engine:applied"
        self.log = f"{namespace}:engine:log"
        self.subscribers = f"{namespace}:subscribers:"   # + a ws process's instance id


class RedisBus(Bus):
    """The :class:`~atom_actors.bus.base.Bus` over Redis, plus the engine's command stream,
    lease and checkpoint.

    ``frames``/``events``: whether this process subscribes to them (a broadcaster or an API
    process does; an engine-only process only publishes). ``on_summary`` callbacks get each
    summary's bytes.
    """

    name = "redis"

    def __init__(self, url: str, *, namespace: str = "atom", frames: bool = True,
                 events: bool = True, summaries: bool = False, timeout_s: float = TIMEOUT_S) -> None:
        super().__init__()
        self.url = url
        self.keys = Keys(namespace)
        self.timeout_s = timeout_s
        self.instance = uuid.uuid4().hex[:12]
        self.summary_listeners: list[Callable[[bytes], None]] = []
        self._channels = [k for k, on in ((self.keys.frames, frames), (self.keys.events, events),
                                          (self.keys.summary, summaries)) if on]
        # Every call to Redis goes through this guard: bounded, an outage made BackendUnavailable.
        self._guard = GuardedCalls(self.name, "bus", _OUTAGES, timeout_s,
                                   on_failure=self._failed, on_success=self._up)
        self._client: Any = None
        self._scripts: dict[str, Any] = {}
        self._pending_frame: Frame | None = None
        self._frame_ready = trio.Event()
        self._events_out, self._events_in = trio.open_memory_channel[bytes](EVENT_BUFFER)
        self.subscribed = trio.Event()     # set each time the subscription is (re)established
        self.up = False                    # the last call or subscription succeeded
        self.frames_dropped = 0            # replaced in the slot before the pump sent them
        self.events_dropped = 0
        self.bad_messages = 0
        self.frames_received = 0

    # -- running ------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[Bus] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the publishing pumps and the subscription until cancelled.

        Starts without waiting for Redis: an outage at start is like one later, logged once and
        retried every RETRY_S. Cancellation sends the events still waiting (the last words of a
        stopping engine: an escalation's alarm), then closes the connections, both bounded.
        """
        async with open_bridge() as bridge:
            self._guard.bridge = bridge
            self._client, self._scripts = await bridge.call(_aio_client, self.url, self.timeout_s)
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump_frames, name="redis/frames-out")
                    nursery.start_soon(self._pump_events, name="redis/events-out")
                    if self._channels:
                        nursery.start_soon(self._listen, name="redis/subscription")
                    task_status.started(self)
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(FLUSH_S):
                    await self._flush_events()
                await bridge.close(_aio_close, self._client)
                self._guard.bridge = None

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(client, *args)`` on the asyncio loop, through the guard."""
        return await self._guard(fn, self._client, *args)

    def _failed(self, why: str) -> None:
        self.failures += 1
        self._down(why)

    def _down(self, why: str) -> None:
        if self.up:
            log.warning("redis unavailable: %s", why)
        self.up = False

    def _up(self) -> None:
        # Said only after an outage was: at start, being reachable is no news (ZERO_LOG writes
        # nothing but start, stop and operational errors).
        if not self.up and self.failures:
            log.warning("redis available again")
        self.up = True

    async def ping(self) -> None:
        await self._call(_aio_ping)

    # -- publishing -----------------------------------------------------------------------------

    def publish_frame(self, frame: Frame) -> None:
        if self._pending_frame is not None:
            self.frames_dropped += 1
        self._pending_frame = frame
        self._frame_ready.set()

    def publish_event(self, event: dict) -> None:
        try:
            self._events_out.send_nowait(json.dumps(event, separators=(",", ":")).encode())
        except trio.WouldBlock:
            self.events_dropped += 1

    async def _pump_frames(self) -> None:
        while True:
            await self._frame_ready.wait()
            self._frame_ready = trio.Event()
            frame, self._pending_frame = self._pending_frame, None
            if frame is None:
                continue
            try:
                await self._call(_aio_publish, self.keys.frames, frame.f32)
            except BackendUnavailable:
                await trio.sleep(RETRY_S)   # newest wins: what came meanwhile is sent next

    async def _flush_events(self) -> None:
        while True:
            try:
                data = self._events_in.receive_nowait()
            except trio.WouldBlock:
                return
            try:
                await self._call(_aio_publish, self.keys.events, data)
            except BackendUnavailable:
                return

    async def _pump_events(self) -> None:
        async for data in self._events_in:
            try:
                await self._call(_aio_publish, self.keys.events, data)
            except BackendUnavailable:
                self.events_dropped += 1   # an event is news: stale after an outage, not resent
                await trio.sleep(RETRY_S)

    # -- subscribing ----------------------------------------------------------------------------

    async def _listen(self) -> None:
        handlers = {self.keys.frames.encode(): self._on_frame,
                    self.keys.events.encode(): self._on_event,
                    self.keys.summary.encode(): self._on_summary}
        channels = {c.encode(): handlers[c.encode()] for c in self._channels}
        while True:
            bridge = self._guard.bridge
            if bridge is None:
                raise self._guard.not_running()
            try:
                await bridge.call(_aio_listen, self._client, channels, self._subscribed)
            except _OUTAGES as exc:
                self._down(outage_detail(exc))
            await trio.sleep(RETRY_S)

    def _subscribed(self) -> None:
        self._up()
        self.subscribed.set()
        self.subscribed = trio.Event()

    def _on_frame(self, data: bytes) -> None:
        try:
            frame = Frame.from_bytes(data)
        except ValueError:
            self.bad_messages += 1
            return
        self.frames_received += 1
        self._deliver_frame(frame)

    def _on_event(self, data: bytes) -> None:
        try:
            event = json.loads(data)
        except ValueError:
            self.bad_messages += 1
            return
        if isinstance(event, dict):
            self._deliver_event(event)

    def _on_summary(self, data: bytes) -> None:
        for listener in self.summary_listeners:
            listener(data)

    async def load_summary(self) -> bytes | None:
        return await self._call(_aio_get, self.keys.summary)

    # -- commands (API processes → engine) ------------------------------------------------------

    async def add_command(self, command: dict) -> str:
        """Append a command to the stream; once this returns, the command will be applied."""
        return await self._call(_aio_xadd, self.keys.commands, json.dumps(command).encode())

    async def ensure_group(self) -> None:
        await self._call(_aio_group, self.keys.commands, GROUP)

    async def read_commands(self, consumer: str, count: int = 64,
                            block_ms: int = BLOCK_MS) -> list[tuple[str, dict | None]]:
        """New commands for ``consumer`` (waits up to ``block_ms``); ``None`` for an unreadable one."""
        return await self._call(_aio_xreadgroup, self.keys.commands, GROUP, consumer, count, block_ms)

    async def claim_commands(self, consumer: str) -> list[tuple[str, dict | None]]:
        """Every command delivered to some engine but not acknowledged, now owned by ``consumer``."""
        return await self._call(_aio_xautoclaim, self.keys.commands, GROUP, consumer)

    async def applied(self, command_ids: list[str]) -> set[str]:
        """Which of ``command_ids`` were applied (and checkpointed) in the last hour."""
        if not command_ids:
            return set()
        return await self._call(_aio_applied, self.keys.applied, command_ids)

    async def applied_log(self) -> list[str]:
        """The ids of the last applied commands, oldest first."""
        return await self._call(_aio_lrange, self.keys.log)

    # -- subscribers of every ws process ---------------------------------------------------------

    async def set_subscribers(self, count: int, ttl_s: float) -> None:
        """Say how many subscribers this process has; forgotten after ``ttl_s`` unless said again."""
        await self._call(_aio_set_ex, self.keys.subscribers + self.instance, count, int(ttl_s * 1000))

    async def total_subscribers(self) -> int:
        """The subscribers of every ws process that spoke in the last ``ttl_s``."""
        return await self._call(_aio_sum_keys, self.keys.subscribers + "*")

    # -- the engine's lease and checkpoint ------------------------------------------------------

    async def lease_acquire(self, token: str, ttl_s: float) -> bool:
        return await self._call(_aio_set_nx, self.keys.lease, token, int(ttl_s * 1000))

    async def lease_renew(self, token: str, ttl_s: float) -> int:
        """1 renewed, 2 taken again after it vanished (Redis restarted), 0 held by another."""
        return await self._call(_aio_script, self._scripts["renew"], [self.keys.lease],
                                [token, int(ttl_s * 1000)])

    async def lease_release(self, token: str) -> None:
        await self._call(_aio_script, self._scripts["release"], [self.keys.lease], [token])

    async def lease_holder(self) -> str | None:
        holder = await self._call(_aio_get, self.keys.lease)
        return holder.decode() if holder is not None else None

    async def checkpoint(self, token: str, state: bytes, summary: bytes, now_ms: int,
                         acks: list[tuple[str, str]], lease_ttl_s: float = 1.5) -> bool:
        """Atomically: store ``state`` and ``summary``, publish the summary, acknowledge and
        delete the stream entries of ``acks`` ((entry id, command id), command id '' for an
        entry acknowledged without being applied) and record their command ids. False, and
        nothing written, if another token holds the lease."""
        k = self.keys
        args: list[Any] = [token, state, summary, now_ms, GROUP, int(lease_ttl_s * 1000)]
        for entry, command in acks:
            args += [entry, command]
        done = await self._call(_aio_script, self._scripts["checkpoint"],
                                [k.lease, k.checkpoint, k.summary, k.commands, k.applied, k.log],
                                args)
        return bool(done)

    async def load_checkpoint(self) -> bytes | None:
        return await self._call(_aio_get, self.keys.checkpoint)


def _decode_entry(fields: dict) -> dict | None:
    try:
        command = json.loads(fields[b"c"])
    except (KeyError, ValueError):
        return None
    return command if isinstance(command, dict) else None


# -- the asyncio side: the only code here that touches redis.asyncio objects ----------------------

async def _aio_client(url: str, timeout_s: float) -> tuple[Any, dict[str, Any]]:
    # One immediate retry, no backoff: a pooled connection left broken by a Redis restart gets a
    # fresh one, while a command during an outage still fails at once (refused twice: 503). The
    # pumps and the subscription have their own retry loops.
    client = aredis.Redis.from_url(url, socket_timeout=timeout_s,
                                   socket_connect_timeout=timeout_s / 2,
                                   retry=Retry(NoBackoff(), 1), retry_on_timeout=False,
                                   health_check_interval=0)
    scripts = {"checkpoint": client.register_script(_CHECKPOINT),
               "renew": client.register_script(_RENEW),
               "release": client.register_script(_RELEASE)}
    return client, scripts


async def _aio_close(client: Any) -> None:
    await client.aclose()


async def _aio_ping(client: Any) -> None:
    await client.ping()


async def _aio_publish(client: Any, channel: str, data: bytes) -> None:
    await client.publish(channel, data)


async def _aio_get(client: Any, key: str) -> bytes | None:
    return await client.get(key)


async def _aio_set_ex(client: Any, key: str, value: int, ttl_ms: int) -> None:
    await client.set(key, value, px=ttl_ms)


async def _aio_sum_keys(client: Any, pattern: str) -> int:
    keys = [key async for key in client.scan_iter(match=pattern, count=100)]
    return sum(int(v) for v in await client.mget(keys) if v is not None) if keys else 0


async def _aio_set_nx(client: Any, key: str, value: str, ttl_ms: int) -> bool:
    return bool(await client.set(key, value, nx=True, px=ttl_ms))


async def _aio_script(client: Any, script: Any, keys: list[str], args: list[Any]) -> Any:
    return await script(keys=keys, args=args, client=client)


async def _aio_xadd(client: Any, stream: str, data: bytes) -> str:
    return (await client.xadd(stream, {"c": data})).decode()


async def _aio_group(client: Any, stream: str, group: str) -> None:
    try:
        # From id 0: commands added before any engine ever started are not skipped.
        await client.xgroup_create(stream, group, id="0", mkstream=True)
    except redis.exceptions.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


async def _aio_xreadgroup(client: Any, stream: str, group: str, consumer: str, count: int,
                          block_ms: int) -> list[tuple[str, dict | None]]:
    try:
        reply = await client.xreadgroup(group, consumer, {stream: ">"}, count=count, block=block_ms)
    except redis.exceptions.ResponseError as exc:
        if "NOGROUP" not in str(exc):
            raise
        await _aio_group(client, stream, group)   # Redis restarted empty: make the group again
        return []
    return [(entry.decode(), _decode_entry(fields)) for _, entries in reply or []
            for entry, fields in entries]


async def _aio_xautoclaim(client: Any, stream: str, group: str,
                          consumer: str) -> list[tuple[str, dict | None]]:
    claimed: list[tuple[str, dict | None]] = []
    start = "0-0"
    while True:
        reply = await client.xautoclaim(stream, group, consumer, min_idle_time=0,
                                        start_id=start, count=100)
        start, entries = reply[0], reply[1]
        claimed += [(entry.decode(), _decode_entry(fields)) for entry, fields in entries
                    if fields is not None]
        if start in (b"0-0", "0-0"):
            return claimed


async def _aio_applied(client: Any, key: str, command_ids: list[str]) -> set[str]:
    scores = await client.zmscore(key, command_ids)
    return {c for c, score in zip(command_ids, scores) if score is not None}


async def _aio_lrange(client: Any, key: str) -> list[str]:
    return [v.decode() for v in await client.lrange(key, 0, -1)]


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
