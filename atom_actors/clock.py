"""Wall-clock time read off Trio's clock, so that a MockClock drives everything time-dependent.

``WallClock.now()`` is Unix seconds (frames, session expiry, event records); it is anchored to
``time.time()`` once, when the clock is made inside ``trio.run``, and then advances with
``trio.current_time()`` — monotonic, and virtual under a MockClock.
"""

from __future__ import annotations

import math
import time

import trio


class WallClock:
    def __init__(self) -> None:
        self.offset = time.time() - trio.current_time()

    def now(self) -> float:
        return trio.current_time() + self.offset

    def from_trio(self, trio_time: float) -> float:
        return trio_time + self.offset

    def to_trio(self, t: float) -> float:
        return t - self.offset if math.isfinite(t) else math.inf
