"""What the processes of a deployment share: the engine's lease, the command stream and its
checkpoints, the Sceau sessions and their revocations, the Brise-Circuit's state, presence counts,
the Idempotency-Key records of operators' commands.

``base.Coordinator`` is the interface; ``memory.MemoryCoordinator`` is the single-process default
and the fake the failover tests run on (under a MockClock); ``redis.RedisCoordinator`` is the
deployment's. Frames and events are not here: they travel on the bus.
"""

from .base import BUSY, MISMATCH, REPLAY, RESYNC, RUN, Claim, Coordinator, Entry
from .memory import MemoryCoordinator

__all__ = ["BUSY", "MISMATCH", "REPLAY", "RESYNC", "RUN", "Claim", "Coordinator", "Entry",
           "MemoryCoordinator"]
