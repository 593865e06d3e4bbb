"""The bus interface. Publishing never blocks the caller: the 60 fps loop must not wait on readers.

Frames are *newest wins*: a subscriber that falls behind gets the latest frame and the number it
skipped, never a backlog. Events are kept in a bounded buffer per subscriber; when it is full the
newest events are dropped and counted (``EventSubscription.dropped``).
"""

from __future__ import annotations

import abc
import bisect
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import trio

from ..protocol import Frame

EVENT_BUFFER = 4096
# Upper bounds (seconds) of atom_event_lag_seconds: from the engine to this process.
EVENT_LAG_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, math.inf)


class EventLag:
    """How late events reached this process: each batch's age (its sender's clock, when its
    oldest event was emitted, against this one's) in EVENT_LAG_BUCKETS_S, non-cumulative
    counts, as /metrics reads them."""

    def __init__(self) -> None:
        self.counts = [0] * len(EVENT_LAG_BUCKETS_S)
        self.sum = 0.0
        self.max = 0.0

    def record(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self.counts[bisect.bisect_left(EVENT_LAG_BUCKETS_S, seconds)] += 1
        self.sum += seconds
        self.max = max(self.max, seconds)


class LatestValue:
    """A single slot that readers wait on: each ``set`` replaces the value and wakes them."""

    def __init__(self) -> None:
        self.value: Any = None
        self.version = 0
        self._changed = trio.Event()

    def set(self, value: Any) -> None:
        self.value = value
        self.version += 1
        self._changed.set()
        self._changed = trio.Event()

    async def wait_newer(self, version: int) -> tuple[int, Any]:
        while self.version <= version:
            await self._changed.wait()
        return self.version, self.value


class FrameSubscription:
    """Newest-wins reader of a :class:`LatestValue` of frames; ``skipped`` counts what it missed."""

    def __init__(self, cell: LatestValue) -> None:
        self._cell = cell
        self._seen = cell.version
        self.skipped = 0

    async def receive(self) -> Frame:
        version, frame = await self._cell.wait_newer(self._seen)
        if self._seen:
            self.skipped += version - self._seen - 1
        self._seen = version
        return frame


class EventSubscription:
    """A bounded buffer of events for one reader."""

    def __init__(self, size: int = EVENT_BUFFER) -> None:
        self._send, self._receive = trio.open_memory_channel[dict](size)
        self.dropped = 0

    def offer(self, event: dict) -> None:
        try:
            self._send.send_nowait(event)
        except trio.WouldBlock:
            self.dropped += 1

    def receive_nowait(self) -> dict:
        return self._receive.receive_nowait()

    async def receive(self) -> dict:
        return await self._receive.receive()

    def __aiter__(self) -> EventSubscription:
        return self

    async def __anext__(self) -> dict:
        return await self._receive.receive()


class Bus(abc.ABC):
    """Where the engine publishes and the broadcasters and API read."""

    name = "bus"
    failures = 0   # calls that ended in BackendUnavailable: atom_backend_errors_total reads it

    def __init__(self) -> None:
        self._frames = LatestValue()
        self._event_subscribers: set[EventSubscription] = set()
        self.frame_arrived_at = -math.inf   # Trio time the newest frame reached this process

    async def run(self, *, task_status: trio.TaskStatus[Bus] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the bus's own tasks (connections, pumps) until cancelled."""
        task_status.started(self)
        await trio.sleep_forever()

    async def ping(self) -> None:
        """Return when the bus answers; raise BackendUnavailable otherwise (in-process: always)."""

    @property
    def latest_frame(self) -> Frame | None:
        return self._frames.value

    @abc.abstractmethod
    def publish_frame(self, frame: Frame) -> None:
        """Hand a composed frame to every reader; never blocks."""

    @abc.abstractmethod
    def publish_event(self, event: dict) -> None:
        """Hand an event to every reader; never blocks."""

    def subscribe_frames(self) -> FrameSubscription:
        return FrameSubscription(self._frames)

    @contextmanager
    def subscribe_events(self, size: int = EVENT_BUFFER) -> Iterator[EventSubscription]:
        sub = EventSubscription(size)
        self._event_subscribers.add(sub)
        try:
            yield sub
        finally:
            self._event_subscribers.discard(sub)

    def _deliver_frame(self, frame: Frame) -> None:
        self.frame_arrived_at = trio.current_time()
        self._frames.set(frame)

    def _deliver_event(self, event: dict) -> None:
        for sub in self._event_subscribers:
            sub.offer(event)


