"""The bus carries frames, events (and, with Redis, commands) between the engine and its readers.

``base.Bus`` is the interface; ``memory.MemoryBus`` is the in-process default and the test fake.
"""

from .base import Bus, FrameSubscription, EventSubscription
from .memory import MemoryBus

__all__ = ["Bus", "FrameSubscription", "EventSubscription", "MemoryBus"]
