"""How many WebSocket handshakes may be pending at once, in all and from one address (issue 13).

What is counted: a connection is pending from its accept until the client's request head has been
read whole (or the connection ended, or HANDSHAKE_TIMEOUT_S passed) — only the time the server
waits for the client. What the server does after that (the host and origin checks, the session's
verification through the coordinator, the answer) is not counted here: a slow verification (Redis
busy, a loaded machine) must not make good clients look stale. That work has its own bounds (the
broadcaster's WS_MAX_CONNECTIONS slots, each backend call's timeout, HANDSHAKE_TIMEOUT_S on the
answer).

Each pending connection holds a socket and a task for up to HANDSHAKE_TIMEOUT_S, so a client that
opens connections and never sends its request could hold them all. Beyond ``bound`` pending in
all, a new connection is answered 503 before anything is read; and one address may hold no more
than a quarter of the bound (at least PER_ADDRESS), nor PER_ADDRESS that have been pending longer
than STALE_AFTER_S (a real client sends its request head within milliseconds of connecting): so a
flood from one address never locks others out. A burst of real clients from one address (a load
test, a school behind NAT) is not refused: their request heads are read before they are stale,
however long the server then takes to admit them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Final

import trio

from ..netlimits import Refusals

PER_ADDRESS: Final = 8          # stale pending handshakes one address may hold
STALE_AFTER_S: Final = 1.0


class PendingHandshakes:
    """``exempt(address)``: a peer not counted per address (a trusted proxy, whose connections
    are everyone's); only the total bound applies to it. ``refusing``: the 503 answers being
    written at once, at most (beyond, a bare close)."""

    def __init__(self, bound: int, *, exempt: Callable[[str], bool] = lambda _: False,
                 refusing: int = 64) -> None:
        self.bound = bound
        self.exempt = exempt
        self.address_share = max(PER_ADDRESS, bound // 4)
        # Refusals hold descriptors too: at most ``refusing`` at once (a part of their share).
        self.refusals = Refusals(max_open=refusing)
        self.total = 0
        self._by_address: dict[str, dict[object, float]] = {}

    def peer(self, stream: trio.SocketStream) -> str | None:
        """The address a connection comes from (None: not counted per address)."""
        try:
            address = str(stream.socket.getpeername()[0])
        except (OSError, IndexError):
            return None
        return None if self.exempt(address) else address

    def admits(self, peer: str | None) -> bool:
        """Whether a new connection from ``peer`` may start its handshake."""
        if self.total >= self.bound:
            return False
        held = self._by_address.get(peer) if peer is not None else None
        if not held:
            return True
        if len(held) >= self.address_share:
            return False
        now = trio.current_time()
        return sum(1 for since in held.values() if now - since >= STALE_AFTER_S) < PER_ADDRESS

    @contextlib.contextmanager
    def hold(self, peer: str | None) -> Iterator[None]:
        """Count one pending handshake from ``peer`` for the duration of the block (the wait for
        its request head, and nothing after it)."""
        token = object()
        held = self._by_address.setdefault(peer, {}) if peer is not None else None
        if held is not None:
            held[token] = trio.current_time()
        self.total += 1
        try:
            yield
        finally:
            self.total -= 1
            if held is not None:
                del held[token]
                if not held:
                    del self._by_address[peer]  # type: ignore[arg-type]
