"""The one module that leans on how Hypercorn's trio worker works inside: the API's connections.

``hypercorn.trio.serve`` leaves three holes that a client on the open internet can use (issue 13):

* **A finished response does not close or idle its connection.** Hypercorn carries out what its
  protocol decides (send bytes, close, re-arm the keep-alive timer) in ``TCPServer.protocol_send``,
  in whichever task is sending — for Quart-Trio the app's own task, which cancels itself as soon
  as the response is out (``quart_trio.asgi.TrioASGIHTTPConnection.handle_messages`` cancels on
  ``http.disconnect``, which Hypercorn queues in the middle of that bookkeeping). The close after
  ``Connection: close`` and the re-armed idle timer are then cancelled halfway: the socket stays
  open, with no timer left to close it. :class:`_TCPServer` runs ``protocol_send`` shielded, with a
  deadline (a client that does not take its answer in SEND_TIMEOUT_S is dropped).
* **Nothing bounds the number of connections**, so held connections run the process out of file
  descriptors, WebSocket server included, and trio logs a traceback per failed accept. Here every
  process holds at most ``max_connections`` (beyond: 503 JSON, written before the request is
  read), accepts through :class:`~atom_actors.netlimits.QuietListener`, and a connection silent
  both ways for SILENCE_S is closed whatever state Hypercorn thinks it is in.
* **Hypercorn's own error answers are bare** (h11's 400 and 431, a missing response's 500: no
  body). :func:`json_error` gives them the API's JSON error shape on their way out.

And four more (issue 24):

* **HTTP/2 cleartext.** Hypercorn switches a plain connection to HTTP/2 on the prior-knowledge
  preface (``PRI * HTTP/2.0``) or on ``Upgrade: h2c`` (answering 101 first), and none of the
  bounds here apply to h2 streams (rapid reset, PING keep-alive, zero windows). Nothing in the
  contract needs HTTP/2, so :class:`_HTTP11Only` never switches: the preface is answered 400 and
  closed, an h2c upgrade is answered as the HTTP/1.1 request it also is.
* **Content-Length with Transfer-Encoding** (RFC 9112 §6.1: the server MUST close after such a
  request; a desync primitive behind a proxy that forwards both) is answered 400 and closed, as
  are conflicting Content-Lengths (h11's own 400; identical repeats h11 folds into one, which
  RFC 9110 §8.6 allows).
* **Connections per address**: at most ``max_per_address`` from one peer (a trusted proxy's
  connections excepted: they carry everyone's requests). A new connection beyond that closes
  the address's longest-idle keep-alive connection (one waiting between requests, or for its
  first: a client that leaves connections open, as test clients do, keeps working); with none
  idle, it is answered 503 JSON.
* **A WebSocket upgrade on this port** (finding 1: Quart routed it as a websocket, and its error
  handler failed outside a request context: 500 and two tracebacks a request) is answered 404
  JSON by :func:`http_only` before the app sees it: nothing served here speaks WebSocket.
* **A send racing the close** (``trio.BusyResourceError: another task is currently sending data
  on this SocketStream`` from the app's response): Hypercorn's ``TCPServer._close`` calls
  ``stream.send_eof()`` outside its ``send_lock`` (when the client half-closes, or the protocol
  closes, while the app's task is still sending), and trio's ``send_eof`` holds the stream's
  send-conflict detector across a checkpoint, so an app's ``send_all`` landing there raises.
  :class:`_WatchedStream` serialises ``send_all``, ``send_eof`` and
  ``wait_send_all_might_not_block`` under one lock of its own: the EOF waits for the response
  (bounded by SEND_TIMEOUT_S, as the response is), and a send after the EOF is the
  ``BrokenResourceError`` Hypercorn already handles.

What this relies on — ``tests/test_api_server.py`` checks each point, so an upgrade fails loudly:

1. Hypercorn 0.18's ``hypercorn.trio.tcp_server.TCPServer(app, config, context, state, stream)``
   serves one connection when awaited (``run``), reads with ``stream.receive_some``, writes with
   ``stream.send_all``, takes a stream without ``do_handshake`` as plain TCP (its ``socket``
   attribute gives the addresses), and carries out every protocol event in ``protocol_send``.
2. ``hypercorn.trio.worker_context.WorkerContext(max_requests)``, whose ``terminated`` event tells
   idle connections to close; ``hypercorn.trio.lifespan.Lifespan(app, config, state)``;
   ``hypercorn.utils.wrap_app`` and ``repr_socket_addr``; ``Config.create_sockets``. Together what
   ``hypercorn.trio.run.worker_serve`` does, minus its accept loop.
3. Hypercorn answers a request it cannot parse or serve with a head carrying
   ``content-length: 0`` and ``connection: close`` in one ``RawData`` event (the app's own
   answers always have a JSON body).
4. ``TCPServer.run`` assigns ``self.protocol`` a ``hypercorn.protocol.ProtocolWrapper`` whose
   ``protocol`` is an ``H11Protocol`` on a plain connection, and that wrapper switches to HTTP/2
   only when ``H11Protocol._check_protocol(request)`` raises ``H2ProtocolAssumedError`` or
   ``H2CProtocolRequiredError``; ``_check_protocol`` is awaited for each request head before
   ``_create_stream(request)``; ``_send_error_response(status)`` answers a bare error head, and
   sending ``Closed()`` closes the connection.
5. ``TCPServer._close`` sends EOF outside ``send_lock``; every ``send_all`` is inside it.
"""

from __future__ import annotations

import json
import logging
import re
from functools import partial
from http import HTTPStatus
from typing import Any, Final

import h11
import trio
from hypercorn.config import Config
from hypercorn.events import Closed, Event, RawData, Updated
from hypercorn.protocol import ProtocolWrapper
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import repr_socket_addr, wrap_app

from ..netlimits import QuietListener, Refusals, json_response
from ..peers import ClientAddresses

log = logging.getLogger("atom_actors.api.server")

TESTED_HYPERCORN: Final = ("0.18",)   # the minor versions whose internals were checked
SEND_TIMEOUT_S: Final = 10.0          # a response not taken by the client in this long: dropped
SILENCE_S: Final = 30.0               # no byte either way this long: closed, whatever the state
SWEEP_INTERVAL_S: Final = 1.0

ERROR_SENTENCES: Final = {
    400: ("bad_request", "the request is not valid HTTP/1.1"),
    408: ("request_timeout", "the request was not received in time"),
    413: ("request_entity_too_large", "the request is too large"),
    431: ("request_header_fields_too_large",
          "the request's headers are too large (at most 16 KiB in all)"),
    500: ("internal_error", "the server failed to answer this request; the failure is logged"),
}


def error_body(status: int) -> bytes:
    code, detail = ERROR_SENTENCES.get(status) or (
        re.sub(r"[^a-z0-9]+", "_", HTTPStatus(status).phrase.lower()).strip("_"),
        HTTPStatus(status).description.rstrip(".") or HTTPStatus(status).phrase)
    return json.dumps({"error": code, "detail": detail}).encode()


BUSY_BODY: Final = json.dumps({"error": "too_many_connections",
                               "detail": "the server holds as many connections as it may; "
                                         "retry in a moment"}).encode()
BUSY_RESPONSE: Final = json_response(503, "Service Unavailable", BUSY_BODY, b"retry-after: 1")
ADDRESS_BUSY_RESPONSE: Final = json_response(
    503, "Service Unavailable",
    json.dumps({"error": "too_many_connections",
                "detail": "this address holds as many connections as one may; close one or "
                          "retry in a moment"}).encode(), b"retry-after: 1")
_BARE_HEAD = re.compile(rb"HTTP/1\.[01] ([45]\d\d)[^\r\n]*\r\n")


def json_error(data: bytes) -> bytes:
    """``data`` itself, unless it is one of Hypercorn's bare error heads (assumption 3): then the
    same head with a JSON error body."""
    found = _BARE_HEAD.match(data)
    if found is None or not data.endswith(b"\r\n\r\n"):
        return data
    lines = data[:-4].split(b"\r\n")
    names = {line.split(b":", 1)[0].strip().lower(): line.split(b":", 1)[-1].strip().lower()
             for line in lines[1:]}
    if names.get(b"content-length") != b"0" or names.get(b"connection") != b"close":
        return data
    body = error_body(int(found.group(1)))
    kept = [line for line in lines[1:]
            if line.split(b":", 1)[0].strip().lower() not in (b"content-length", b"content-type")]
    head = [lines[0], b"content-type: application/json", b"content-length: %d" % len(body), *kept]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


class _WatchedStream(trio.abc.HalfCloseableStream):
    """The TCP stream of one connection, noting when a byte last went either way."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.socket = stream.socket            # Hypercorn reads the addresses here (assumption 1)
        self.active_at = trio.current_time()
        self.idle = True        # between requests, or before the first (Hypercorn's Updated)
        self.peer: str | None = None   # counted against this address's share (None: not counted)
        # One sender at a time, EOF included (assumption 5): see "A send racing the close".
        self._sending = trio.Lock()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self.stream.receive_some(max_bytes)
        self.active_at = trio.current_time()
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        async with self._sending:
            await self.stream.send_all(data)
        self.active_at = trio.current_time()

    async def wait_send_all_might_not_block(self) -> None:
        async with self._sending:
            await self.stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        async with self._sending:
            await self.stream.send_eof()

    async def aclose(self) -> None:
        await self.stream.aclose()


class _HTTP11Only(H11Protocol):
    """Hypercorn's HTTP/1.1 protocol that never becomes HTTP/2 and refuses ambiguous framing
    (assumption 4): see "HTTP/2 cleartext" and "Content-Length with Transfer-Encoding"."""

    _refused = False

    async def _check_protocol(self, event: h11.Request) -> None:
        names = [name for name, _ in event.headers]   # lower-case; CL repeats already folded
        if event.http_version not in (b"1.0", b"1.1") \
                or (b"content-length" in names and b"transfer-encoding" in names):
            # The prior-knowledge preface parses as "PRI * HTTP/2.0"; with both framings the
            # body's end is whatever a proxy in front believed it to be. Either way: 400, close.
            self._refused = True
            await self._send_error_response(400)
            await self.send(Closed())
        # Upgrade: h2c is not honoured: the request is served as HTTP/1.1.

    async def _create_stream(self, request: h11.Request) -> None:
        if not self._refused:
            await super()._create_stream(request)


class _TCPServer(TCPServer):
    """Hypercorn's connection, with its protocol's decisions carried out whatever task sends them
    (assumption 1), its own error answers in JSON (assumption 3), HTTP/1.1 only (assumption 4)."""

    @property
    def protocol(self) -> ProtocolWrapper:
        return self._protocol

    @protocol.setter
    def protocol(self, wrapper: ProtocolWrapper) -> None:
        if type(wrapper.protocol) is H11Protocol:
            wrapper.protocol.__class__ = _HTTP11Only   # no state of its own but a flag
        self._protocol = wrapper

    async def protocol_send(self, event: Event) -> None:
        if isinstance(event, Updated) and isinstance(self.stream, _WatchedStream):
            self.stream.idle = event.idle
        if isinstance(event, RawData):
            event = RawData(json_error(event.data), event.address)
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + SEND_TIMEOUT_S
            await super().protocol_send(event)
        if scope.cancelled_caught:
            # The client did not take its answer: the protocol's state is unknown now, so end it.
            with trio.CancelScope(shield=True):
                await self.stream.aclose()


class Connections:
    """The API's open connections in one process: at most ``max_open``, none silent for long."""

    def __init__(self, app: Any, config: Config, context: WorkerContext, state: dict[str, Any],
                 max_open: int, *, max_per_address: int | None = None,
                 addresses: ClientAddresses | None = None) -> None:
        self.app = app
        self.config = config
        self.context = context
        self.state = state
        self.max_open = max_open
        self.max_per_address = max_per_address or max_open
        self.addresses = addresses or ClientAddresses(0)
        self.open: dict[_WatchedStream, trio.CancelScope] = {}
        self.by_address: dict[str, int] = {}
        # Refusals hold descriptors too: their own bound is a share of the cap.
        self.refusals = Refusals(max_open=min(64, max(4, max_open // 8)))   # answered 503
        self.silenced = 0            # closed for silence by the sweep
        self.evicted = 0             # idle ones closed for a newer one of the same address

    async def handle(self, stream: trio.SocketStream) -> None:
        """One TCP connection: served by Hypercorn, or refused 503 beyond the cap (in all, or
        from its address). Always closed when this returns."""
        peer = _peer(stream)
        counted = peer is not None and not self.addresses.is_proxy(peer)
        if len(self.open) >= self.max_open:
            await self.refusals.refuse(stream, BUSY_RESPONSE)
            return
        if counted and self.by_address.get(peer, 0) >= self.max_per_address \
                and not self._evict_idle(peer):
            await self.refusals.refuse(stream, ADDRESS_BUSY_RESPONSE)
            return
        watched = _WatchedStream(stream)
        scope = self.open[watched] = trio.CancelScope()
        if counted:
            watched.peer = peer
            self.by_address[peer] = self.by_address.get(peer, 0) + 1
        try:
            with scope:
                await _TCPServer(self.app, self.config, self.context,
                                 ConnectionState(self.state.copy()), watched).run()
        finally:
            del self.open[watched]
            self._uncount(watched)
            with trio.CancelScope(shield=True):
                await stream.aclose()

    def _evict_idle(self, peer: str) -> bool:
        """Close ``peer``'s longest-idle connection, if it has one idle; whether one was."""
        idle = [w for w in self.open if w.peer == peer and w.idle]
        if not idle:
            return False
        oldest = min(idle, key=lambda w: w.active_at)
        self._uncount(oldest)       # at once: its task ends it when it next runs
        self.open[oldest].cancel()
        self.evicted += 1
        return True

    def _uncount(self, watched: _WatchedStream) -> None:
        if watched.peer is not None:
            left = self.by_address.pop(watched.peer) - 1
            if left:
                self.by_address[watched.peer] = left
            watched.peer = None

    async def sweep(self) -> None:
        """Close the connections silent both ways for SILENCE_S, once a SWEEP_INTERVAL_S."""
        while True:
            await trio.sleep(SWEEP_INTERVAL_S)
            now = trio.current_time()
            for watched, scope in list(self.open.items()):
                if now - watched.active_at > SILENCE_S:
                    self.silenced += 1
                    scope.cancel()


WEBSOCKET_REFUSED: Final = json.dumps({
    "error": "not_found",
    "detail": "this port serves no WebSocket; L'Essaim streams on the WebSocket port"}).encode()


def http_only(asgi_app: Any) -> Any:
    """ASGI middleware: a WebSocket scope is answered 404 JSON through the ASGI WebSocket denial
    response (Hypercorn offers it), or closed where that is not offered; HTTP passes through."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            await asgi_app(scope, receive, send)
            return
        await receive()   # websocket.connect
        if "websocket.http.response" in scope.get("extensions", {}):
            await send({"type": "websocket.http.response.start", "status": 404,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(WEBSOCKET_REFUSED)).encode())]})
            await send({"type": "websocket.http.response.body", "body": WEBSOCKET_REFUSED})
        else:
            await send({"type": "websocket.close", "code": 1008})

    return app


def _peer(stream: trio.SocketStream) -> str | None:
    try:
        return str(stream.socket.getpeername()[0])
    except (OSError, IndexError):
        return None


async def serve(app: Any, config: Config, *, max_connections: int,
                max_per_address: int | None = None, addresses: ClientAddresses | None = None,
                task_status: trio.TaskStatus[tuple[list[str], Connections]] = trio.TASK_STATUS_IGNORED
                ) -> None:
    """Serve the ASGI ``app`` on ``config.bind`` (plain HTTP) until cancelled; ``started`` with the
    bound URLs and the :class:`Connections`.

    Cancellation: stops accepting, tells idle connections to close, and gives requests in flight
    ``config.graceful_timeout`` before dropping them. Errors: a bind failure raises before
    ``started``; a failing connection ends alone (Hypercorn's error boundary answers 500).
    """
    wrapped = wrap_app(http_only(app), config.wsgi_max_body_size, "asgi")
    context = WorkerContext(None)
    state: dict[str, Any] = {}
    lifespan = Lifespan(wrapped, config, state)
    sockets = config.create_sockets()
    listeners = []
    for sock in sockets.insecure_sockets:
        sock.listen(config.backlog)
        listeners.append(QuietListener(trio.SocketListener(trio.socket.from_stdlib_socket(sock)),
                                       "api"))
    binds = [f"http://{repr_socket_addr(s.family, s.getsockname())}" for s in sockets.insecure_sockets]
    connections = Connections(wrapped, config, context, state, max_connections,
                              max_per_address=max_per_address, addresses=addresses)
    stopping = trio.Event()

    async def hold_handlers(*, task_status: trio.TaskStatus[trio.Nursery]) -> None:
        # Connections live here, shielded from the cancellation that stops the listeners, so that
        # requests in flight may finish (bounded below).
        async with trio.open_nursery() as handlers:
            handlers.cancel_scope.shield = True
            task_status.started(handlers)
            await stopping.wait()

    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        async with trio.open_nursery() as outer:
            handlers: trio.Nursery = await outer.start(hold_handlers)
            try:
                async with trio.open_nursery() as front:
                    front.start_soon(connections.sweep)
                    await front.start(partial(trio.serve_listeners, connections.handle, listeners,
                                              handler_nursery=handlers))
                    task_status.started((binds, connections))
            finally:
                with trio.CancelScope(shield=True):
                    await context.terminated.set()   # idle connections close (assumption 2)
                handlers.cancel_scope.deadline = trio.current_time() + config.graceful_timeout
                stopping.set()
        await lifespan.wait_for_shutdown()
