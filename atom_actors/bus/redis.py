"""The Redis bus (REDIS_URL=redis://…): ``redis.asyncio``, bridged into Trio.

What travels, under a namespace (``atom`` unless told otherwise)::

    atom:frames             pub/sub   each frame's f32 bytes exactly as the engine encoded them
    atom:events             pub/sub   events as JSON text: ``{"t", "events": [...]}`` (a tick's, or
                                      the events of the commands a checkpoint records; ``t``: Unix
                                      time the oldest of them was emitted), a list, or one object

What else the processes share (the engine's lease, the command stream, sessions, the
Brise-Circuit) is the coordinator's (:mod:`atom_actors.coordinator.redis`), not the bus's.

Publishing never blocks the caller (the 60 fps loop): :meth:`RedisBus.publish_frame` puts the
frame in a newest-wins slot, events go into a bounded buffer that drops (and counts) its newest
when full, and one pump task sends both: the newest frame and every event waiting, in one
pipeline (one round trip), the events as one message. So events never queue behind frames or
one another: a burst of 350 in one tick costs what one does, and goes out beside its frame. While Redis is down frames are dropped, never queued: the
broadcasters keep their clients, and frames flow again as soon as a publish and the subscription
succeed (retried every ``RETRY_S``).

Every call is bounded: a refused, dropped or silent connection raises
:class:`~atom_actors.errors.BackendUnavailable` at once or within ``timeout_s``, never a hang.
"""

from __future__ import annotations

import json
import logging
import math
import time
from typing import Any

import trio

from ..errors import BackendUnavailable
from ..protocol import Frame
from ..redislink import OnRedis, RedisLink
from .base import EVENT_BUFFER, Bus, EventLag

log = logging.getLogger("atom_actors.bus")

TIMEOUT_S = 1.0           # socket timeout of every call; connecting gets half of it
RETRY_S = 0.2             # after a failure, the pumps and the subscription try again this soon
FLUSH_S = 0.5             # at shutdown, for the events not sent yet


class Keys:
    def __init__(self, namespace: str) -> None:
        self.frames = f"{namespace}:frames"
        self.events = f"{namespace}:events"


class RedisBus(OnRedis, Bus):
    """The :class:`~atom_actors.bus.base.Bus` over Redis.

    ``frames``/``events``: whether this process subscribes to them (a broadcaster or an API
    process does; an engine-only process only publishes).
    """

    name = "redis"

    def __init__(self, url: str, *, namespace: str = "atom", frames: bool = True,
                 events: bool = True, timeout_s: float = TIMEOUT_S) -> None:
        super().__init__()
        self.url = url
        self.keys = Keys(namespace)
        self.timeout_s = timeout_s
        self.link = RedisLink(url, name="bus", timeout_s=timeout_s, log=log)
        self._channels = [k for k, on in ((self.keys.frames, frames), (self.keys.events, events)) if on]
        self._pending_frame: Frame | None = None
        self._ready = trio.Event()         # a frame or an event waits for the pump
        self._events_out, self._events_in = trio.open_memory_channel[bytes](EVENT_BUFFER)
        self.subscribed = trio.Event()     # set each time the subscription is (re)established
        self.frames_dropped = 0            # replaced in the slot before the pump sent them
        self.events_dropped = 0
        self.bad_messages = 0
        self.frames_received = 0
        self.subscriptions = 0             # times the subscription was made (again)
        self.event_lag = EventLag()        # of the batches received
        self.events_arrived_at = -math.inf  # Trio time the newest events message came
        self._oldest_waiting: float | None = None   # Unix time the oldest waiting event came

    # -- running ------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[Bus] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the publishing pumps and the subscription until cancelled.

        Starts without waiting for Redis: an outage at start is like one later, logged once and
        retried every RETRY_S. Cancellation sends the events still waiting (the last words of a
        stopping engine: an escalation's alarm), then closes the connections, both bounded.
        """
        async with self.link.open():
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump, name="redis/out")
                    if self._channels:
                        handlers = {self.keys.frames: self._on_frame, self.keys.events: self._on_event}
                        nursery.start_soon(self.link.listen,
                                           {c.encode(): handlers[c] for c in self._channels},
                                           self._subscribed, RETRY_S, name="redis/subscription")
                    task_status.started(self)
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(FLUSH_S):
                    await self._flush_events()

    async def ping(self) -> None:
        await self.link.call(_aio_ping)

    # -- publishing -----------------------------------------------------------------------------

    def publish_frame(self, frame: Frame) -> None:
        if self._pending_frame is not None:
            self.frames_dropped += 1
        self._pending_frame = frame
        self._ready.set()

    def publish_event(self, event: dict) -> None:
        try:
            self._events_out.send_nowait(json.dumps(event, separators=(",", ":")).encode())
        except trio.WouldBlock:
            self.events_dropped += 1
            return
        if self._oldest_waiting is None:
            self._oldest_waiting = time.time()
        self._ready.set()

    def _waiting_events(self) -> tuple[bytes | None, int]:
        """Every event waiting, as one message (None when there is none), and how many."""
        found = []
        while True:
            try:
                found.append(self._events_in.receive_nowait())
            except trio.WouldBlock:
                break
        since, self._oldest_waiting = self._oldest_waiting, None
        if not found:
            return None, 0
        return event_batch(found, since if since is not None else time.time()), len(found)

    async def _pump(self) -> None:
        while True:
            await self._ready.wait()
            self._ready = trio.Event()
            frame, self._pending_frame = self._pending_frame, None
            events, count = self._waiting_events()
            if frame is None and events is None:
                continue
            try:
                await self.link.call(_aio_publish_tick, self.keys.frames,
                                     frame.f32 if frame is not None else None,
                                     self.keys.events, events)
            except BackendUnavailable:
                # Newest wins: the frame that came meanwhile is sent next. An event is news:
                # stale after an outage, not resent.
                self.events_dropped += count
                await trio.sleep(RETRY_S)

    async def _flush_events(self) -> None:
        events, _ = self._waiting_events()
        if events is not None:
            try:
                await self.link.call(_aio_publish, self.keys.events, events)
            except BackendUnavailable:
                pass

    # -- subscribing ----------------------------------------------------------------------------

    def _subscribed(self) -> None:
        self.link.mark_up()
        self.subscriptions += 1
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
            events = json.loads(data)
        except ValueError:
            self.bad_messages += 1
            return
        self.events_arrived_at = trio.current_time()
        if isinstance(events, dict) and isinstance(events.get("events"), list):
            if isinstance(events.get("t"), int | float):
                self.event_lag.record(time.time() - events["t"])
            events = events["events"]
        for event in events if isinstance(events, list) else [events]:
            if isinstance(event, dict):
                self._deliver_event(event)


def event_batch(events: list[bytes], since: float) -> bytes:
    """Events (each JSON already) as one message of the events channel, stamped with ``since``
    (Unix time the oldest was emitted): the coordinator's checkpoint sends its batch so too."""
    return b'{"t":%.6f,"events":[' % since + b",".join(events) + b"]}"


# -- the asyncio side: the only code here that touches redis.asyncio objects ----------------------

async def _aio_ping(client: Any) -> None:
    await client.ping()


async def _aio_publish(client: Any, channel: str, data: bytes) -> None:
    await client.publish(channel, data)


async def _aio_publish_tick(client: Any, frames: str, frame: bytes | None, events: str,
                            batch: bytes | None) -> None:
    async with client.pipeline(transaction=False) as pipe:
        if frame is not None:
            pipe.publish(frames, frame)
        if batch is not None:
            pipe.publish(events, batch)
        await pipe.execute()
