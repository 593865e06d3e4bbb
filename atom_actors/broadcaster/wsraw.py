"""The one module that leans on how trio-websocket and wsproto work inside: the fan-out's fast path.

trio-websocket sends a message by asking wsproto for its bytes, then awaiting ``send_all`` on the
connection's stream under a lock: one awaited call per message and per client. For one identical
frame going to 500 clients every 16 ms that costs a whole core and delivers about 41 of 60 fps
(measured). Instead:

* a server frame is unmasked, so byte for byte the same for every client: :func:`message_bytes`
  builds it once per tick (RFC 6455 §5.2) and the fan-out writes it to each socket with one
  non-blocking ``os.write`` (:meth:`RawStream.try_write`);
* the stream under each connection is a :class:`RawStream`, and trio-websocket writes through it
  too (handshake, pong, ping, close). One lock and one *tail* (the unwritten rest of a message
  already begun) serialise both writers, so a frame never interleaves with a control frame.

What this relies on — ``tests/test_wsraw.py`` checks each point, so an upgrade fails loudly:

1. trio-websocket 0.12 writes each wsproto event with exactly one ``send_all`` of its bytes and
   never fragments a message; a close frame is therefore a ``send_all`` that starts with 0x88.
2. Without extensions (trio-websocket's ``accept`` negotiates none, so permessage-deflate is
   declined) wsproto frames a whole server message exactly as :func:`message_bytes` does and
   keeps no state across whole messages: frames written behind its back leave it consistent.
3. ``wrap_server_stream(nursery, stream, ...)`` starts the connection's reader in ``nursery``
   and returns the client's :class:`~trio_websocket.WebSocketRequest` once its handshake is read.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct
from collections.abc import Callable
from typing import Final

import trio
import trio_websocket

TESTED_TRIO_WEBSOCKET: Final = ("0.12",)   # the minor versions whose internals were checked
OP_TEXT: Final = 0x81                      # FIN + text
OP_BINARY: Final = 0x82                    # FIN + binary
OP_CLOSE: Final = 0x88                     # FIN + close
# The kernel's send buffer is a queue too: a client that stops reading must not bank seconds of
# frames there. 64 KiB (the kernel doubles it for its bookkeeping) holds about 15 f32 frames,
# a quarter of a second, and still the hello with its 350-agent roster.
SEND_BUFFER_BYTES: Final = 64 * 1024


def request_host(request: trio_websocket.WebSocketRequest) -> str:
    """The handshake's Host header, which wsproto keeps apart from the other headers."""
    return request._event.host or ""


def message_bytes(message: bytes | str) -> bytes:
    """One whole, unmasked server message on the wire: text for ``str``, binary for ``bytes``."""
    if isinstance(message, str):
        payload, first = message.encode(), OP_TEXT
    else:
        payload, first = bytes(message), OP_BINARY
    n = len(payload)
    if n < 126:
        header = bytes((first, n))
    elif n < 1 << 16:
        header = struct.pack("!BBH", first, 126, n)
    else:
        header = struct.pack("!BBQ", first, 127, n)
    return header + payload


# What :meth:`RawStream.try_write` did.
BUSY: Final = 0      # nothing written: the wire is taken (tail, lock, closing); queue it
DONE: Final = 1      # written whole (or dropped: the stream is dead, and ends itself)
STARTED: Final = 2   # partly written: the rest is the tail, which the slow path must finish


class RawStream(trio.abc.Stream):
    """The TCP stream of one subscriber, written by trio-websocket and by the fan-out alike.

    ``try_write`` is the fast path (synchronous; only when ``ready``: nothing else on the wire);
    ``send_all`` (trio-websocket's) and ``send_from`` (the subscriber's slow path) take the lock
    and first finish the tail. A write that makes no progress for ``stall_timeout_s`` marks the
    stream ``stalled`` and fails with :class:`trio.BrokenResourceError`: the owner closes it.
    """

    def __init__(self, stream: trio.SocketStream, stall_timeout_s: float) -> None:
        self._stream = stream
        self._fd = stream.socket.fileno()
        self._lock = trio.StrictFIFOLock()
        self._tail: memoryview | None = None
        self.stall_timeout_s = stall_timeout_s
        self.progress_at = trio.current_time()   # last progress while behind (see _start_tail)
        self.close_sent = False                  # a close frame is on its way: no data after it
        self.stalled = False
        self.closed = False
        # A plain flag, not a property: the fan-out reads it for every subscriber every tick.
        # True when a whole message may be written now without cutting into another one.
        self.ready = True
        self.ended = trio.Event()                # set when the stream broke or was closed
        try:
            stream.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
        except OSError:
            pass  # the peer may already be gone: the first write says so

    @property
    def open(self) -> bool:
        return not (self.closed or self.close_sent)

    @property
    def behind(self) -> bool:
        return self._tail is not None

    def try_write(self, data: bytes) -> int:
        """Start writing ``data`` now if the wire is ready: BUSY (nothing written), DONE or STARTED.

        After STARTED the rest is the tail; the caller must run the slow path (``send_from``),
        which finishes it before anything else.
        """
        if not self.ready:
            return BUSY
        try:
            n = os.write(self._fd, data)
        except BlockingIOError:
            n = 0
        except OSError:
            self._end()
            return DONE   # the peer is gone; the connection's reader notices and ends it
        if n == len(data):
            return DONE
        self._start_tail(memoryview(data)[n:])
        return STARTED

    async def send_from(self, take: Callable[[], bytes | None]) -> None:
        """Under the wire lock: finish the tail, then send what ``take()`` returns until None.

        ``take`` runs with the lock held, so what it returns is written in the order taken.
        Nothing is written after a close frame. Raises BrokenResourceError if the peer is gone
        or stalled; cancellation leaves the unwritten rest as the tail (never a cut message).
        """
        try:
            async with self._lock:
                self.ready = False
                await self._push()
                while self.open and (data := take()) is not None:
                    self._start_tail(memoryview(data))
                    await self._push()
        finally:
            self._refresh()

    # -- trio.abc.Stream, as trio-websocket uses it ------------------------------------------------

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            async with self._lock:
                self.ready = False
                if self.closed:
                    raise trio.ClosedResourceError("the subscriber's stream is closed")
                await self._push()
                if data:
                    if data[0] == OP_CLOSE:
                        self.close_sent = True
                    self._start_tail(memoryview(bytes(data)))
                    await self._push()
        finally:
            self._refresh()

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return await self._stream.receive_some(max_bytes)

    async def aclose(self) -> None:
        self._end()
        await self._stream.aclose()

    # -- inside -----------------------------------------------------------------------------------

    def _refresh(self) -> None:
        self.ready = self._tail is None and not self._lock.locked() and not self.closed \
            and not self.close_sent

    def _start_tail(self, data: memoryview) -> None:
        # Stall time counts from the moment the stream falls behind, or from its last progress
        # since: a stream that was caught up a minute ago is not a minute into a stall.
        self._tail = data
        self.ready = False
        self.progress_at = trio.current_time()

    def _end(self) -> None:
        self.closed = True
        self.ready = False
        self.ended.set()

    async def _push(self) -> None:
        """Write the tail until it is gone; the caller holds the lock."""
        while self._tail is not None:
            if self.closed:
                raise trio.BrokenResourceError("the subscriber's stream is closed")
            try:
                n = os.write(self._fd, self._tail)
            except BlockingIOError:
                n = 0
            except OSError as exc:
                self._end()
                raise trio.BrokenResourceError(f"write failed: {errno.errorcode.get(exc.errno, exc)}") \
                    from None
            if n:
                self.progress_at = trio.current_time()
            if n == len(self._tail):
                self._tail = None
                return
            self._tail = self._tail[n:]
            with trio.move_on_at(self.progress_at + self.stall_timeout_s):
                await trio.lowlevel.wait_writable(self._fd)
                continue
            self.stalled = True
            self._end()
            # Close with a reset, not a FIN behind the unsent bytes: the kernel would otherwise
            # keep probing a peer that reads nothing, holding the buffer, for minutes.
            with contextlib.suppress(OSError):
                self._stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                        struct.pack("ii", 1, 0))
            raise trio.BrokenResourceError(f"no progress for {self.stall_timeout_s:g} s")


async def open_request(nursery: trio.Nursery, raw: RawStream, *, timeout_s: float,
                       max_message_size: int) -> trio_websocket.WebSocketRequest | None:
    """Read the client's opening handshake on ``raw``; None if it never came whole within
    ``timeout_s`` or the stream ended first (garbage, a bad request, a closed socket).

    trio-websocket's reader task is started in ``nursery`` and lives as long as it.
    """
    request: trio_websocket.WebSocketRequest | None = None
    with trio.move_on_after(timeout_s):
        async with trio.open_nursery() as race:
            async def read() -> None:
                nonlocal request
                request = await trio_websocket.wrap_server_stream(
                    nursery, raw, max_message_size=max_message_size)
                race.cancel_scope.cancel()

            async def watch() -> None:
                # A request that wsproto refuses (not an upgrade, garbage) makes trio-websocket
                # answer 400 and close the stream: no request will come, stop waiting at once.
                await raw.ended.wait()
                race.cancel_scope.cancel()

            race.start_soon(read)
            race.start_soon(watch)
    return request
