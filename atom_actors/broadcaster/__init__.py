"""L'Essaim live: the WebSocket broadcaster (CONTRACT.md §4).

``server`` listens and admits subscribers, ``handshake`` decides what they asked for (pure),
``fanout`` is the one loop that writes each frame and event to all of them, and ``wsraw`` is the
only module that relies on trio-websocket's and wsproto's internals (its fast write path).
"""

from .fanout import BroadcastStats
from .handshake import PATH
from .server import Broadcaster

__all__ = ["Broadcaster", "BroadcastStats", "PATH"]
