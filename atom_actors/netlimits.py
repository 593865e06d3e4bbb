"""What one process may hold of the machine's sockets, and what happens when they run out.

Both servers (the API on Hypercorn, L'Essaim on trio-websocket) accept through
:class:`QuietListener`: running out of file descriptors (``EMFILE``/``ENFILE``) while accepting
costs one log line a second at most, never a traceback per accept (trio's ``serve_listeners``
logs one with its traceback every 100 ms per listener). :func:`raise_file_limit` lifts the soft
descriptor limit to the hard one at start, and :class:`DescriptorShares` shares the soft limit out
(issue 24), so that no kind of client can take the descriptors another needs::

    own needs (backends, logs, listeners)   an eighth, at least OWN_MIN
    API connections                         a quarter
    pending WebSocket handshakes            an eighth
    subscribers                             the rest (about half)

Each server holds at most its share (its own setting, if lower) and answers 503 beyond it, before
anything else is read or any handshake made; ``atom serve`` says the shares in one line at start.
"""

from __future__ import annotations

import errno
import logging
import resource
from dataclasses import dataclass
from typing import Final

import trio

log = logging.getLogger("atom_actors.net")

# The errors of accept() that mean "no room now" rather than "this listener is broken".
CAPACITY_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
ACCEPT_RETRY_S: Final = 0.1        # the pending connection waits in the backlog meanwhile
LOG_INTERVAL_S: Final = 1.0        # at most one "out of descriptors" line per this, per listener
OWN_MIN: Final = 32                # descriptors kept for the process's own needs, at least
MIN_SHARE: Final = 8               # what a share is, however low the limit


def file_limit() -> int:
    """The soft limit on open file descriptors of this process."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def raise_file_limit() -> tuple[int, int]:
    """Raise the soft descriptor limit to the hard one (the default soft limit, often 1024, is a
    relic of select()); returns (before, after). A limit that cannot be raised is left alone."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            return soft, soft
    return soft, hard


@dataclass(frozen=True)
class DescriptorShares:
    """The soft descriptor limit shared out (see the module docstring)."""

    limit: int
    own: int
    api: int
    handshakes: int
    subscribers: int

    @classmethod
    def of(cls, limit: int) -> DescriptorShares:
        own = max(OWN_MIN, limit // 8)
        api = max(MIN_SHARE, limit // 4)
        handshakes = max(MIN_SHARE, limit // 8)
        return cls(limit, own, api, handshakes, max(MIN_SHARE, limit - own - api - handshakes))

    @classmethod
    def now(cls) -> DescriptorShares:
        """The shares of this process's soft limit, as it is now."""
        return cls.of(file_limit())

    def line(self) -> str:
        return (f"descriptors: {self.limit} = subscribers {self.subscribers}, API connections "
                f"{self.api}, pending handshakes {self.handshakes}, own needs {self.own}")


class QuietListener(trio.abc.Listener[trio.SocketStream]):
    """A :class:`trio.SocketListener` whose ``accept`` waits out a lack of descriptors instead of
    raising it: the connection stays in the kernel's backlog and is accepted once one is free.

    Logs one line per LOG_INTERVAL_S at most while descriptors lack, with the count of failed
    accepts since the last line; other errors are raised as before.
    """

    def __init__(self, listener: trio.SocketListener, name: str) -> None:
        self.listener = listener
        self.socket = listener.socket
        self.name = name
        self.failed = 0                      # accepts that failed for lack of descriptors, ever
        self._unlogged = 0
        self._logged_at = -float("inf")

    async def accept(self) -> trio.SocketStream:
        while True:
            try:
                return await self.listener.accept()
            except OSError as exc:
                if exc.errno not in CAPACITY_ERRNOS:
                    raise
                self._out_of_room(exc.errno)
            await trio.sleep(ACCEPT_RETRY_S)

    def _out_of_room(self, code: int) -> None:
        self.failed += 1
        self._unlogged += 1
        now = trio.current_time()
        if now - self._logged_at >= LOG_INTERVAL_S:
            log.error("%s: accept failed with %s (%d times since the last report): new "
                      "connections wait until descriptors are freed",
                      self.name, errno.errorcode.get(code, code), self._unlogged)
            self._unlogged = 0
            self._logged_at = now

    async def aclose(self) -> None:
        await self.listener.aclose()


def json_response(status: int, reason: str, body: bytes, *extra: bytes) -> bytes:
    """A whole HTTP/1.1 response with a JSON body that closes its connection."""
    return b"\r\n".join([b"HTTP/1.1 %d %s" % (status, reason.encode()),
                         b"content-type: application/json", b"content-length: %d" % len(body),
                         *extra, b"connection: close", b"", body])


class Refusals:
    """Answers written before a request is read (a server at its bound), with a bound of their
    own: at most ``max_open`` at once, each for at most ``timeout_s``; beyond, a bare close."""

    def __init__(self, max_open: int = 64, timeout_s: float = 1.0) -> None:
        self.max_open = max_open
        self.timeout_s = timeout_s
        self.count = 0          # refused connections, ever
        self._open = 0

    async def refuse(self, stream: trio.SocketStream, response: bytes) -> None:
        """Write ``response`` on ``stream``, let the client read it, and close ``stream``."""
        self.count += 1
        if self._open >= self.max_open:
            await stream.aclose()
            return
        self._open += 1
        try:
            with trio.move_on_after(self.timeout_s):
                try:
                    await stream.send_all(response)
                    await stream.send_eof()
                    # Read the client's request head (answered before it was read): closing with
                    # unread bytes would reset the connection, and the answer could be lost with
                    # it. Then close, without waiting for the client to.
                    seen = b""
                    while b"\r\n\r\n" not in seen:
                        chunk = await stream.receive_some(16384)
                        if not chunk:
                            break
                        seen = (seen + chunk)[-8192:]
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
        finally:
            self._open -= 1
            with trio.CancelScope(shield=True):
                await stream.aclose()
