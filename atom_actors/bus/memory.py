"""The in-process bus: the default of a single-process run, and the fake every test can use."""

from __future__ import annotations

from ..protocol import Frame
from .base import Bus


class MemoryBus(Bus):
    name = "memory"

    def publish_frame(self, frame: Frame) -> None:
        self._deliver_frame(frame)

    def publish_event(self, event: dict) -> None:
        self._deliver_event(event)
