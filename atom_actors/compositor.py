"""The compositor: the engine's clock, and the one place a frame is made.

Every 1/TICK_HZ, on absolute deadlines ``start + k / TICK_HZ`` (so no drift accumulates: after 60
virtual seconds, exactly 3,600 frames), it:

1. takes the positions every sphere actor last reported — a late or restarting sphere never delays
   the frame, its previous slice is used and the sphere is counted late;
2. encodes the frame once (f32) and publishes it on the bus;
3. wakes every sphere actor to integrate its slice for the next deadline.

Cancellation: stops between two frames. Errors: none expected; one reaches the engine's nursery.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
import trio

from .catalog import Sphere
from .clock import WallClock
from .protocol import Frame
from .swarm import SwarmState

# A compositor further behind than this skips the missed ticks instead of bursting to catch up.
MAX_CATCH_UP_S = 0.25
# Overrunning the tick budget this long in a row is an overload the Brise-Circuit must hear of.
OVERLOAD_AFTER_S = 5.0
LATENESS_SAMPLES = 4096
# Upper bounds (seconds) of the tick-lateness histogram that /metrics exposes; a tick is 16.7 ms.
LATENESS_BUCKETS_S = (0.0005, 0.001, 0.002, 0.004, 0.008, 0.0167, 0.033, 0.1, 0.25, math.inf)


class TickSlot(Protocol):
    """A sphere as the compositor sees it (an :class:`~atom_actors.actors.SphereSlot`)."""

    sphere: Sphere
    reported: int     # the last tick whose slice the sphere wrote

    def request_tick(self, tick: int, t: float) -> None: ...


class TickStats:
    """What the compositor measured; read by metrics, logs and the engine benchmark."""

    def __init__(self) -> None:
        self.frames = 0
        self.missed = 0               # ticks skipped after falling MAX_CATCH_UP_S behind
        self.late_spheres = 0         # sphere-ticks that reused a previous slice
        self.lateness = deque(maxlen=LATENESS_SAMPLES)  # seconds past each deadline
        self.last_late: list[str] = []
        # A histogram kept as plain counts (one per bucket, not cumulative): a bisect per tick,
        # read by /metrics at scrape time.
        self.lateness_counts = [0] * len(LATENESS_BUCKETS_S)
        self.lateness_sum = 0.0

    def record_lateness(self, seconds: float) -> None:
        self.lateness.append(seconds)
        self.lateness_counts[bisect.bisect_left(LATENESS_BUCKETS_S, seconds)] += 1
        self.lateness_sum += seconds

    def lateness_quantiles(self, *qs: float) -> list[float]:
        if not self.lateness:
            return [0.0 for _ in qs]
        return [float(v) for v in np.quantile(np.fromiter(self.lateness, float), qs)]


class Compositor:
    """Composes a frame of ``state.positions`` every ``interval`` seconds and ``publish``-es it;
    wakes the sphere actors of ``slots`` to integrate the next tick; calls ``on_overload(seconds)``
    when frames have gone out more than a tick late for OVERLOAD_AFTER_S in a row."""

    def __init__(self, slots: Sequence[TickSlot], state: SwarmState, clock: WallClock,
                 interval: float, publish: Callable[[Frame], None],
                 on_overload: Callable[[float], None] | None = None) -> None:
        self.slots = slots
        self.state = state
        self.clock = clock
        self.publish = publish
        self.on_overload = on_overload or (lambda seconds: None)
        self.interval = interval
        self.stats = TickStats()
        self.seq = 0            # of the next frame
        self.ticking = False

    def continue_after(self, seq: int) -> None:
        """Number the next frame ``seq + 1`` (an engine that takes over from another)."""
        self.seq = seq + 1

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Compose one frame per tick until cancelled."""
        interval, stats, slots, clock = self.interval, self.stats, self.slots, self.clock
        start = trio.current_time()
        overrun_since: float | None = None
        k = 0
        self._ask(k + 1, start + interval)
        self.ticking = True
        task_status.started()
        try:
            while True:
                k += 1
                deadline = start + k * interval
                await trio.sleep_until(deadline)
                now = trio.current_time()
                lateness = now - deadline
                if lateness > MAX_CATCH_UP_S:
                    skip = math.floor(lateness / interval)
                    stats.missed += skip
                    k += skip
                    deadline = start + k * interval
                    lateness = now - deadline
                stats.record_lateness(lateness)
                late = [s for s in slots if s.reported < k]
                if late:
                    stats.late_spheres += len(late)
                    stats.last_late = [s.sphere.name for s in late]
                frame = Frame.compose(self.seq, clock.now(), self.state.positions)
                self.seq += 1
                stats.frames += 1
                self.publish(frame)
                self._ask(k + 1, deadline + interval)
                # Overload: the frame went out more than a whole tick late, tick after tick.
                if lateness > interval:
                    overrun_since = now if overrun_since is None else overrun_since
                    if now - overrun_since >= OVERLOAD_AFTER_S:
                        self.on_overload(now - overrun_since)
                        overrun_since = None
                else:
                    overrun_since = None
        finally:
            self.ticking = False

    def _ask(self, tick: int, trio_time: float) -> None:
        t = self.clock.from_trio(trio_time)
        for slot in self.slots:
            slot.request_tick(tick, t)
