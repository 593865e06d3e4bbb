"""The WebSocket server of L'Essaim (CONTRACT.md §4): listening, handshakes, and each subscriber's life.

Tree of one broadcaster::

    Broadcaster.run
    ├── handlers (shielded nursery: outlives the listener so subscribers can be closed with 1001)
    │   └── one task per TCP connection
    │       ├── trio-websocket's reader
    │       └── once admitted: the slow-path writer, the client reader, the keepalive
    ├── the listener (trio.serve_listeners)
    └── the fan-out loop

A connection is refused with an HTTP status and a JSON error body before any WebSocket traffic:
404 for another path, 400 for a bad ``encoding`` or ``fps`` or a Host not on ALLOWED_HOSTS, 403
for a foreign ``Origin``, 503 at WS_MAX_CONNECTIONS (or the subscribers' share of the descriptor
limit, :class:`~atom_actors.netlimits.DescriptorShares`), at one session's WS_MAX_PER_SESSION or
one address's WS_MAX_PER_ADDRESS (behind TRUSTED_PROXIES, the forwarded address), or when
handshakes are pending beyond the bound of :mod:`.pending` (answered before anything is read),
401 for a missing or invalid Sceau session (when WS_REQUIRE_SESSION). Once
admitted, a subscriber gets the hello, then frames and events from the fan-out.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from functools import partial
from typing import Final

import trio
import trio_websocket

from ..bus import Bus
from ..config import Settings
from ..errors import (AtomError, BackendUnavailable, HostNotAllowed, SessionError, StreamRefused,
                      SubscriberShareTaken, TooManyHandshakes, TooManySubscribers)
from ..netlimits import DescriptorShares, QuietListener, json_response
from ..peers import ClientAddresses
from ..origins import OriginPolicy
from ..swarm_view import SwarmControl
from ..sessions import Session, SessionService
from . import handshake
from .fanout import BroadcastStats, Fanout, Subscriber
from .guard import SESSION_ENDED, SessionGuard
from .handshake import PATH, StreamRequest
from .pending import PendingHandshakes
from .wsraw import RawStream, open_request, request_host

log = logging.getLogger("atom_actors.broadcaster")

MAX_CLIENT_MESSAGE_BYTES: Final = 4096   # a bigger message from a client closes it (1009)
HANDSHAKE_TIMEOUT_S: Final = 5.0         # a handshake not read whole by then is dropped
PING_INTERVAL_S: Final = 20.0            # keepalive; a pong missing for WS_STALL_TIMEOUT_S is a stall
CLOSE_TIMEOUT_S: Final = 1.0             # for the closing handshake of one subscriber
SHUTDOWN_GRACE_S: Final = 1.5            # for all of them, on shutdown
JSON_HEADERS: Final = [(b"content-type", b"application/json")]


class Broadcaster:
    """L'Essaim's subscribers in one process. ``await nursery.start(broadcaster.run)``.

    ``swarm`` gives the roster for the hello (only :class:`SwarmControl` is used, so a remote
    engine may stand in); ``sessions`` checks Sceau tokens when WS_REQUIRE_SESSION is true.
    """

    def __init__(self, settings: Settings, bus: Bus, swarm: SwarmControl,
                 sessions: SessionService | None) -> None:
        if settings.ws_require_session and sessions is None:
            raise ValueError("WS_REQUIRE_SESSION needs a SessionService")
        self.settings = settings
        self.bus = bus
        self.swarm = swarm
        self.sessions = sessions
        self.catalog = settings.catalog
        self.stats = BroadcastStats()
        self.fanout = Fanout(bus, settings.tick_hz, self.stats)
        # Streams end with their session (4401), when sessions are checked at all.
        self.guard = SessionGuard(sessions) if settings.ws_require_session and sessions else None
        host = settings.api_host
        self.origins = OriginPolicy(
            settings.cors_origins, settings.allowed_hosts,
            own=[f"http://{f'[{host}]' if ':' in host else host}:{settings.api_port}"]
            if settings.api_port else [])
        self.port: int | None = None
        self.closing = False
        self._admitted = 0                       # subscribers streaming or being admitted
        self._handshaking: set[trio.CancelScope] = set()
        self.addresses = ClientAddresses(settings.trusted_proxy_hops, settings.trusted_proxies)
        # The descriptors' shares (netlimits): subscribers, and handshakes pending, each a part.
        shares = DescriptorShares.now()
        self.max_subscribers = min(settings.ws_max_connections, shares.subscribers)
        # Fair shares: one session, one address (behind a trusted proxy, the forwarded one) may
        # not take every slot, nor more than half of what the descriptor limit leaves them.
        self.max_per_session = min(settings.ws_max_per_session, self.max_subscribers)
        self.max_per_address = min(settings.ws_max_per_address, max(1, shares.subscribers // 2))
        self._by_session: dict[str, int] = {}
        self._by_address: dict[str, int] = {}
        # A trusted proxy's connections are everyone's: only the total bound applies to them.
        self.pending = PendingHandshakes(min(settings.ws_max_connections, shares.handshakes),
                                         exempt=self.addresses.is_proxy,
                                         refusing=min(64, max(4, shares.handshakes // 2)))
        self._subscribers: set[Subscriber] = set()
        self._stopping = trio.Event()
        self._hello_heads: dict[tuple[int, str], str] = {}
        self._roster: tuple[int | None, str] = (None, "")

    @property
    def url(self) -> str | None:
        if self.port is None:
            return None
        host = self.settings.api_host
        return f"ws://{f'[{host}]' if ':' in host else host}:{self.port}{PATH}"

    def allow_origin(self, api_url: str) -> None:
        """Also admit browsers from ``api_url`` (the API's bound URL, known once it listens)."""
        self.origins.add_own(api_url)

    # -- running ----------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[Broadcaster] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on WS_PORT (0: any free port, then ``self.port``) and stream until cancelled.

        Cancellation: stops listening and the fan-out at once, then closes every subscriber with
        1001 and waits up to SHUTDOWN_GRACE_S for them to answer before dropping the rest.
        Errors: a bind failure raises (OSError) before ``started``; a failing connection is
        logged and counted (``stats.errors``) and never reaches the caller.
        """
        async with trio.open_nursery() as outer:
            handlers: trio.Nursery = await outer.start(self._hold_handlers)
            try:
                async with trio.open_nursery() as front:
                    listeners = [QuietListener(listener, "broadcaster") for listener in
                                 await trio.open_tcp_listeners(self.settings.ws_port,
                                                               host=self.settings.api_host)]
                    self.port = listeners[0].socket.getsockname()[1]
                    await front.start(partial(trio.serve_listeners, self._connection, listeners,
                                              handler_nursery=handlers))
                    await front.start(self.fanout.run)
                    if self.guard is not None:
                        await front.start(self.guard.run)
                    task_status.started(self)
            finally:
                self._shut_down(handlers)

    async def _hold_handlers(self, *, task_status: trio.TaskStatus[trio.Nursery]) -> None:
        # Connections live here, shielded from the cancellation that stops the listener, so that
        # on shutdown each can still send its close frame and read the answer (bounded below).
        async with trio.open_nursery() as handlers:
            handlers.cancel_scope.shield = True
            task_status.started(handlers)
            await self._stopping.wait()

    def _shut_down(self, handlers: trio.Nursery) -> None:
        self.closing = True
        for scope in self._handshaking:
            scope.cancel()
        for sub in self._subscribers:
            sub.kick("shutdown", 1001)
        handlers.cancel_scope.deadline = trio.current_time() + SHUTDOWN_GRACE_S
        self._stopping.set()

    @contextlib.contextmanager
    def _handshake_scope(self, scope: trio.CancelScope) -> Iterator[None]:
        self._handshaking.add(scope)
        try:
            yield
        finally:
            self._handshaking.discard(scope)

    # -- one connection ---------------------------------------------------------------------------

    async def _connection(self, stream: trio.SocketStream) -> None:
        """One TCP connection, from its handshake to its close.

        The error boundary of the server: nothing a client does (or a bug it triggers) escapes
        this function, so one connection can never take the others down.
        """
        self.stats.connections += 1
        peer = self.pending.peer(stream)
        if not self.pending.admits(peer):
            # A flood of connections that never finish their handshake: each would hold a socket
            # and a task for HANDSHAKE_TIMEOUT_S. Beyond the bound, or beyond one address's
            # share of it, answer 503 at once without reading anything.
            self.stats.handshakes_failed += 1
            self.stats.refused[503] = self.stats.refused.get(503, 0) + 1
            await self.pending.refusals.refuse(stream, _BUSY_RESPONSE)
            return
        raw = RawStream(stream, self.settings.ws_stall_timeout_s)
        try:
            address = str(stream.socket.getpeername()[0])
        except (OSError, IndexError):
            address = None
        try:
            async with trio.open_nursery() as nursery:   # trio-websocket's reader lives here
                admitted = None
                with self._handshake_scope(nursery.cancel_scope):
                    # Pending only while the client's request head is awaited: the server's own
                    # work after it (checks, the session's verification, the answer) must not
                    # make a client look stale. That work is bounded apart: see _admit.
                    with self.pending.hold(peer):
                        request = await open_request(nursery, raw, timeout_s=HANDSHAKE_TIMEOUT_S,
                                                     max_message_size=MAX_CLIENT_MESSAGE_BYTES)
                    if request is None:
                        self.stats.handshakes_failed += 1
                    else:
                        admitted = await self._admit(request, address)
                if admitted is not None:
                    *streamed, keys = admitted
                    try:
                        await self._stream(*streamed, raw)
                    finally:
                        self._admitted -= 1
                        self._release(keys)
                nursery.cancel_scope.cancel()
        except Exception:
            self.stats.errors += 1
            log.exception("broadcaster: a connection failed")
        finally:
            with trio.CancelScope(shield=True):
                await raw.aclose()

    async def _admit(self, request: trio_websocket.WebSocketRequest, peer: str | None
                     ) -> tuple[trio_websocket.WebSocketConnection, StreamRequest,
                                Session | None, _ShareKeys] | None:
        """Accept the handshake, or refuse it with its HTTP status (None).

        An accepted subscriber holds one of the WS_MAX_CONNECTIONS slots (fewer when the
        descriptors' share is lower) and one of its session's and its address's shares; the
        caller frees them (``_admitted``, :meth:`_release`).
        Bounds (the request is read: no longer a pending handshake): the session's verification
        and the 101 happen only in a slot (at most WS_MAX_CONNECTIONS with the streams), each
        backend call bounded by its own timeout and the answer by HANDSHAKE_TIMEOUT_S; a
        refusal is one small write to a socket that has sent nothing yet (it never waits for
        the client), then the close.
        """
        reserved = False
        session = None
        keys: _ShareKeys = (None, None)
        try:
            wanted = handshake.parse_request(request.path, request.headers, self.settings.tick_hz,
                                             request_host(request))
            handshake.check_host_and_origin(wanted, self.origins)
            if self.closing or self._admitted >= self.max_subscribers:
                raise TooManySubscribers(self.max_subscribers)
            address = self.addresses.client(peer, _header(request, b"x-forwarded-for"))
            if self._by_address.get(address, 0) >= self.max_per_address:
                raise SubscriberShareTaken("this address", self.max_per_address)
            self._admitted += 1
            reserved = True
            keys = (address, None)
            self._by_address[address] = self._by_address.get(address, 0) + 1
            if self.settings.ws_require_session:
                assert self.sessions is not None
                session = await self.sessions.verify(wanted.session)
                if self._by_session.get(session.id, 0) >= self.max_per_session:
                    raise SubscriberShareTaken("this session", self.max_per_session)
                keys = (address, session.id)
                self._by_session[session.id] = self._by_session.get(session.id, 0) + 1
        except (StreamRefused, HostNotAllowed, SessionError, BackendUnavailable) as exc:
            # BackendUnavailable: the store that knows the sessions is down (503, not a crash).
            if reserved:
                self._admitted -= 1
                self._release(keys)
            await self._refuse(request, exc)
            return None
        conn = None
        try:
            with trio.move_on_after(HANDSHAKE_TIMEOUT_S):
                conn = await request.accept()
        except trio_websocket.ConnectionClosed:
            pass   # the client went away meanwhile
        finally:
            if conn is None:
                self._admitted -= 1
                self._release(keys)
        if conn is None:
            self.stats.handshakes_failed += 1
            return None
        return conn, wanted, session, keys

    def _release(self, keys: _ShareKeys) -> None:
        """Give back the shares of one subscriber (its address's, its session's)."""
        for counts, key in zip((self._by_address, self._by_session), keys):
            if key is not None:
                left = counts.pop(key) - 1
                if left:
                    counts[key] = left

    async def _refuse(self, request: trio_websocket.WebSocketRequest, error: AtomError) -> None:
        self.stats.refused[error.status] = self.stats.refused.get(error.status, 0) + 1
        with trio.move_on_after(HANDSHAKE_TIMEOUT_S), \
                contextlib.suppress(trio_websocket.ConnectionClosed):   # it went away: fine
            await request.reject(error.status, extra_headers=list(JSON_HEADERS),
                                 body=handshake.error_body(error))

    async def _stream(self, conn: trio_websocket.WebSocketConnection, wanted: StreamRequest,
                      session: Session | None, raw: RawStream) -> None:
        """Send the hello, then let the fan-out stream until the subscriber or the server ends it."""
        sub = Subscriber(raw, self.fanout.group(wanted.encoding, wanted.fps), self.stats)
        self._subscribers.add(sub)
        if self.closing:
            sub.kick("shutdown", 1001)
        try:
            with sub.scope, self._guarded(session, sub):
                try:
                    await conn.send_message(self._hello(wanted))
                except trio_websocket.ConnectionClosed:
                    sub.kick("stall" if raw.stalled else "gone")
                else:
                    self.fanout.add(sub)
                    async with trio.open_nursery() as tasks:
                        tasks.start_soon(sub.write_behind)
                        tasks.start_soon(self._read_client, conn, sub)
                        tasks.start_soon(self._keepalive, conn, sub)
                        if session is not None and self.guard is not None:
                            tasks.start_soon(self.guard.expire, session, sub)
        finally:
            self.fanout.discard(sub)
            self._subscribers.discard(sub)
            self._count_end(sub)
            if sub.close_code is not None and conn.closed is None and not raw.stalled:
                with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT_S):
                    await conn.aclose(sub.close_code, _CLOSE_REASONS.get(sub.close_code))

    @contextlib.contextmanager
    def _guarded(self, session: Session | None, sub: Subscriber) -> Iterator[None]:
        if session is None or self.guard is None:
            yield
        else:
            with self.guard.watch(session, sub):
                yield

    async def _read_client(self, conn: trio_websocket.WebSocketConnection, sub: Subscriber) -> None:
        # Clients need not send anything; whatever they send is read and dropped, so that pongs
        # and close frames keep flowing. trio-websocket closes with 1009 past the size limit.
        try:
            while True:
                await conn.get_message()
        except trio_websocket.ConnectionClosed as closed:
            code = closed.reason.code if closed.reason is not None else None
            sub.kick("oversize" if code == 1009 else "stall" if sub.raw.stalled else "gone")

    async def _keepalive(self, conn: trio_websocket.WebSocketConnection, sub: Subscriber) -> None:
        try:
            while True:
                await trio.sleep(PING_INTERVAL_S)
                with trio.move_on_after(self.settings.ws_stall_timeout_s) as waited:
                    await conn.ping()
                if waited.cancelled_caught:
                    sub.kick("stall")
                    return
        except trio_websocket.ConnectionClosed:
            sub.kick("stall" if sub.raw.stalled else "gone")

    def _count_end(self, sub: Subscriber) -> None:
        if sub.end == "stall":
            self.stats.closed_stall += 1
        elif sub.end == "oversize":
            self.stats.closed_oversize += 1
        elif sub.end == "lagging":
            self.stats.closed_lagging += 1
        elif sub.end == "session":
            self.stats.closed_session += 1

    def _hello(self, wanted: StreamRequest) -> str:
        key = (wanted.fps, wanted.encoding)
        head = self._hello_heads.get(key)
        if head is None:
            head = self._hello_heads[key] = handshake.hello_head(
                self.catalog, self.settings.tick_hz, wanted.fps, wanted.encoding)
        # The roster is made at most once per tick, however many subscribers arrive in it.
        latest = self.bus.latest_frame
        seq = None if latest is None else latest.seq
        if self._roster[0] != seq or seq is None:
            self._roster = (seq, json.dumps(self.swarm.roster(), separators=(",", ":")))
        return handshake.hello(head, self._roster[1])


# (client address, session id) whose shares a subscriber holds; in memory only, never logged.
_ShareKeys = tuple[str | None, str | None]


def _header(request: trio_websocket.WebSocketRequest, name: bytes) -> str:
    """Every value of the header ``name``, joined as one list."""
    return ", ".join(value.decode("latin-1") for key, value in request.headers
                     if key.lower() == name)


_BUSY_RESPONSE: Final = json_response(503, "Service Unavailable",
                                     handshake.error_body(TooManyHandshakes()), b"retry-after: 1")
_CLOSE_REASONS: Final = {1001: "server shutting down", 1008: "too slow for the event stream",
                          SESSION_ENDED: "session ended"}
