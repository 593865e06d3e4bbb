"""The fan-out: the one loop per process that hands every frame and event to every subscriber.

Per tick it costs one encoding and one WebSocket framing per group in use (a group is an encoding
and an fps; per-frame encodings are kept in ``Frame.cache``, so any other fan-out of the same frame
reuses them), one JSON dump and framing per event, and then one non-blocking write per
subscriber: the same bytes for all of them. Events that happened during the tick go out in the
same write as the frame.

A ``delta`` group (CONTRACT §4.1) encodes each of its frames once against the two it sent before
(:class:`~atom_actors.protocol.DeltaStream`). A subscriber that has not received every frame of
that chain — a newcomer, or one whose queued frame the newest-wins rule replaced — gets the tick's
keyframe instead, made at most once per tick and group and only when someone needs it; from the
next frame on it shares the group's delta bytes again.

A subscriber whose kernel buffer is full is *behind*: what the kernel did not take is finished by
its own slow-path task (:meth:`Subscriber.write_behind`), and meanwhile it holds at most the newest
frame (an older one is dropped and counted) and its events, bounded by ``EVENT_BACKLOG_BYTES``.
The loop never waits for anyone.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import trio

from ..bus import Bus
from ..protocol import SEQ_MOD, DeltaStream, Frame
from .wsraw import BUSY, DONE, STARTED, RawStream, message_bytes

log = logging.getLogger("atom_actors.broadcaster")

# Events a behind subscriber may have waiting (a total dispersal is 350 agent.status events, about
# 30 KB): beyond this it has lost track of the swarm and is closed, to reconnect with a new roster.
EVENT_BACKLOG_BYTES: Final = 128 * 1024
# With no frame for this long (the engine stopped ticking), events go out on their own.
IDLE_FLUSH_S: Final = 0.1


@dataclass
class BroadcastStats:
    """Counters of one broadcaster, for metrics and the benchmark. Totals since start."""

    clients: int = 0            # subscribers streaming now
    connections: int = 0        # TCP connections accepted
    frames_sent: int = 0        # frames begun on a subscriber's socket (fast or slow path)
    frames_dropped: int = 0     # frames replaced by a newer one before a behind subscriber took them
    keyframes: int = 0          # keyframes written or queued (a delta subscriber's first, after drops)
    events_sent: int = 0        # event messages written or queued for a subscriber
    ticks: int = 0              # frames the fan-out took from the bus
    ticks_skipped: int = 0      # frames the fan-out itself missed (it was late)
    write_s: float = 0.0        # time spent in the fan-out's writes
    closed_stall: int = 0       # subscribers closed after WS_STALL_TIMEOUT_S without progress
    closed_oversize: int = 0    # subscribers closed (1009) for a message over the limit
    closed_lagging: int = 0     # subscribers closed (1008) for an event backlog over the bound
    closed_session: int = 0     # subscribers closed (4401): their session was revoked or expired
    handshakes_failed: int = 0  # connections that never completed a handshake (timeout, garbage)
    refused: dict[int, int] = field(default_factory=dict)   # refused handshakes by HTTP status
    errors: int = 0             # connections ended by an unexpected error (logged)

    def summary(self) -> str:
        """One line for the log on stop (``atom serve`` prints it; the benchmark parses it)."""
        refused = " ".join(f"{status}:{n}" for status, n in sorted(self.refused.items())) or "none"
        return (f"connections {self.connections}, frames sent {self.frames_sent}, "
                f"frames dropped {self.frames_dropped}, keyframes {self.keyframes}, "
                f"events sent {self.events_sent}, "
                f"closed stall {self.closed_stall} oversize {self.closed_oversize} "
                f"lagging {self.closed_lagging} session {self.closed_session}, "
                f"handshakes failed {self.handshakes_failed}, "
                f"refused {refused}, errors {self.errors}")


class Group:
    """Subscribers that share an encoding and a decimation: one message per tick for all."""

    __slots__ = ("encoding", "every", "last_seq", "message", "with_events", "members", "delta",
                 "_keyframe")

    def __init__(self, encoding: str, every: int) -> None:
        self.encoding = encoding
        self.every = every
        self.last_seq: int | None = None
        self.message: bytes | None = None       # this tick's frame for the group, if it is due
        self.with_events = b""                   # this tick's events, then that frame: one write
        self.members = 0
        # The delta chain of a ``delta`` group (None for the others), and this tick's keyframe.
        self.delta = DeltaStream() if encoding == "delta" else None
        self._keyframe: bytes | None = None

    def frame_message(self, frame: Frame) -> bytes:
        """The group's message for ``frame`` (its turn has come): framed once for everyone."""
        if self.delta is not None:
            self._keyframe = None
            return message_bytes(self.delta.advance(frame))
        key = ("ws", self.encoding)
        message = frame.cache.get(key)
        if message is None:
            message = frame.cache[key] = message_bytes(frame.encoded(self.encoding))
        return message  # type: ignore[return-value]

    def keyframe(self) -> bytes:
        """The keyframe message of the group's newest frame (delta groups), made at most once."""
        if self._keyframe is None:
            assert self.delta is not None
            self._keyframe = message_bytes(self.delta.keyframe())
        return self._keyframe

    def emptied(self) -> None:
        """Nobody follows the group any more: its chain starts afresh with the next member."""
        if self.delta is not None:
            self.delta.reset()
            self.last_seq = None


class Subscriber:
    """One streaming client, as the fan-out sees it."""

    __slots__ = ("raw", "group", "frame", "events", "event_bytes", "waiting", "wake", "scope",
                 "close_code", "end", "stats", "needs_keyframe")

    def __init__(self, raw: RawStream, group: Group, stats: BroadcastStats) -> None:
        self.raw = raw
        self.group = group
        self.stats = stats
        self.frame: bytes | None = None      # the newest frame not yet taken by the slow path
        self.events: list[bytes] = []
        self.event_bytes = 0
        self.waiting = False                 # something is queued for the slow path
        self.wake = trio.Event()
        self.scope = trio.CancelScope()      # the connection's work; cancelled to end it
        self.close_code: int | None = None   # the close frame to send when it ends, if any
        self.end: str | None = None          # why it ended: stall, oversize, lagging, gone, shutdown
        # A delta subscriber's next frame must be a keyframe: it holds no chain yet.
        self.needs_keyframe = group.delta is not None

    def queue(self, events: bytes, frame: bytes | None) -> None:
        if events:
            self.events.append(events)
            self.event_bytes += len(events)
            if self.event_bytes > EVENT_BACKLOG_BYTES:
                self.kick("lagging", 1008)
                return
        if frame is not None:
            if self.frame is not None:
                self.stats.frames_dropped += 1
                if self.group.delta is not None:
                    # The dropped frame was a link of this subscriber's chain: what replaces it
                    # must stand alone.
                    self.stats.keyframes += 1
                    frame = self.group.keyframe()
            self.frame = frame
        self.waiting = True
        self.wake.set()

    def take(self) -> bytes | None:
        """What is queued, as one write: the events first, then the newest frame."""
        if not self.waiting:
            return None
        parts = self.events
        if self.frame is not None:
            parts.append(self.frame)
            self.stats.frames_sent += 1
        self.events, self.event_bytes, self.frame, self.waiting = [], 0, None, False
        return b"".join(parts)

    def kick(self, why: str, code: int | None = None) -> None:
        """End this subscriber's connection (sync: the fan-out calls it); the first reason wins."""
        if self.end is None:
            self.end, self.close_code = why, code
        self.scope.cancel()

    async def write_behind(self) -> None:
        """The slow path: whenever woken, finish the tail and send what is queued, in order.

        Returns when the connection stalls or breaks (the subscriber is then kicked).
        Cancellation leaves any unwritten rest as the stream's tail, to be finished first.
        """
        try:
            while True:
                await self.wake.wait()
                self.wake = trio.Event()
                await self.raw.send_from(self.take)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.kick("stall" if self.raw.stalled else "gone")


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


class Fanout:
    """Takes each frame from the bus and each event, and writes them to every subscriber."""

    def __init__(self, bus: Bus, tick_hz: int, stats: BroadcastStats) -> None:
        self.bus = bus
        self.tick_hz = tick_hz
        self.stats = stats
        self._subs: dict[Subscriber, None] = {}   # insertion-ordered set
        self._groups: dict[tuple[str, int], Group] = {}

    def group(self, encoding: str, fps: int) -> Group:
        every = self.tick_hz // fps
        key = (encoding, every)
        if key not in self._groups:
            self._groups[key] = Group(encoding, every)
        return self._groups[key]

    def add(self, sub: Subscriber) -> None:
        if sub not in self._subs:
            self._subs[sub] = None
            sub.group.members += 1
            self.stats.clients = len(self._subs)

    def discard(self, sub: Subscriber) -> None:
        if sub in self._subs:
            del self._subs[sub]
            sub.group.members -= 1
            if sub.group.members == 0:
                sub.group.emptied()
            self.stats.clients = len(self._subs)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Send every frame and event until cancelled. Never waits on a subscriber.

        Cancellation: stops between two ticks. Errors: none expected; an event that cannot be
        serialised is logged and skipped.
        """
        frames = self.bus.subscribe_frames()
        with self.bus.subscribe_events() as events:
            task_status.started()
            while True:
                frame = None
                with trio.move_on_after(IDLE_FLUSH_S):
                    frame = await frames.receive()
                batch = []
                while True:
                    try:
                        batch.append(events.receive_nowait())
                    except trio.WouldBlock:
                        break
                if frame is not None or batch:
                    self.stats.ticks_skipped = frames.skipped
                    self.send(frame, batch)

    def send(self, frame: Frame | None, batch: list[dict]) -> None:
        """One tick: frame it once per group in use, then one write per subscriber."""
        started = time.perf_counter()
        stats = self.stats
        blob = self._events_blob(batch)
        if frame is not None:
            stats.ticks += 1
        for group in self._groups.values():
            # Only encodings someone receives are made; a decimated group takes a frame once
            # ``every`` ticks have passed since its last, so a skipped tick shifts it, never loses it.
            due = frame is not None and group.members > 0 and (
                group.last_seq is None or (frame.seq - group.last_seq) % SEQ_MOD >= group.every)
            group.message = group.frame_message(frame) if due else None  # type: ignore[arg-type]
            if due:
                group.last_seq = frame.seq
            if blob:   # joined once per group, not once per subscriber
                group.with_events = blob if group.message is None else blob + group.message
        sent = 0
        # The hot loop: one attribute check and one write per subscriber. A subscriber with
        # something queued keeps its order by queueing this too.
        if not blob:
            for sub in self._subs:
                message = sub.group.message
                if message is None:
                    continue
                if sub.needs_keyframe:
                    message = self._keyframe_for(sub)
                done = BUSY if sub.waiting else sub.raw.try_write(message)
                if done == DONE:
                    sent += 1
                elif done == STARTED:
                    sent += 1
                    sub.wake.set()
                else:
                    sub.queue(b"", message)
        else:
            for sub in self._subs:
                group = sub.group
                message, data = group.message, group.with_events
                if sub.needs_keyframe and message is not None:
                    message = self._keyframe_for(sub)
                    data = blob + message
                done = BUSY if sub.waiting else sub.raw.try_write(data)
                if done == BUSY:
                    sub.queue(blob, message)
                    continue
                sent += group.message is not None
                if done == STARTED:
                    sub.wake.set()
            stats.events_sent += len(batch) * len(self._subs)
        stats.frames_sent += sent
        stats.write_s += time.perf_counter() - started

    def _keyframe_for(self, sub: Subscriber) -> bytes:
        # Written or queued right after, so the subscriber holds a chain from then on.
        sub.needs_keyframe = False
        self.stats.keyframes += 1
        return sub.group.keyframe()

    def _events_blob(self, batch: list[dict]) -> bytes:
        parts = []
        for event in batch:
            try:
                parts.append(message_bytes(json.dumps(event, separators=(",", ":"),
                                                      default=_jsonable)))
            except (TypeError, ValueError) as exc:
                log.error("broadcaster: event %r not sent: %s", event.get("event"), exc)
        return b"".join(parts)
