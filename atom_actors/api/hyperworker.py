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
"""

from __future__ import annotations

import json
import logging
import re
from functools import partial
from http import HTTPStatus
from typing import Any, Final

import trio
from hypercorn.config import Config
from hypercorn.events import Event, RawData
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import repr_socket_addr, wrap_app

from ..netlimits import QuietListener, Refusals, json_response

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

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self.stream.receive_some(max_bytes)
        self.active_at = trio.current_time()
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)
        self.active_at = trio.current_time()

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.stream.send_eof()

    async def aclose(self) -> None:
        await self.stream.aclose()


class _TCPServer(TCPServer):
    """Hypercorn's connection, with its protocol's decisions carried out whatever task sends them
    (assumption 1) and its own error answers in JSON (assumption 3)."""

    async def protocol_send(self, event: Event) -> None:
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
                 max_open: int) -> None:
        self.app = app
        self.config = config
        self.context = context
        self.state = state
        self.max_open = max_open
        self.open: dict[_WatchedStream, trio.CancelScope] = {}
        self.refusals = Refusals()   # answered 503 at the cap
        self.silenced = 0            # closed for silence by the sweep

    async def handle(self, stream: trio.SocketStream) -> None:
        """One TCP connection: served by Hypercorn, or refused 503 beyond the cap. Always closed
        when this returns."""
        if len(self.open) >= self.max_open:
            await self.refusals.refuse(stream, BUSY_RESPONSE)
            return
        watched = _WatchedStream(stream)
        scope = self.open[watched] = trio.CancelScope()
        try:
            with scope:
                await _TCPServer(self.app, self.config, self.context,
                                 ConnectionState(self.state.copy()), watched).run()
        finally:
            del self.open[watched]
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def sweep(self) -> None:
        """Close the connections silent both ways for SILENCE_S, once a SWEEP_INTERVAL_S."""
        while True:
            await trio.sleep(SWEEP_INTERVAL_S)
            now = trio.current_time()
            for watched, scope in list(self.open.items()):
                if now - watched.active_at > SILENCE_S:
                    self.silenced += 1
                    scope.cancel()


async def serve(app: Any, config: Config, *, max_connections: int,
                task_status: trio.TaskStatus[tuple[list[str], Connections]] = trio.TASK_STATUS_IGNORED
                ) -> None:
    """Serve the ASGI ``app`` on ``config.bind`` (plain HTTP) until cancelled; ``started`` with the
    bound URLs and the :class:`Connections`.

    Cancellation: stops accepting, tells idle connections to close, and gives requests in flight
    ``config.graceful_timeout`` before dropping them. Errors: a bind failure raises before
    ``started``; a failing connection ends alone (Hypercorn's error boundary answers 500).
    """
    wrapped = wrap_app(app, config.wsgi_max_body_size, "asgi")
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
    connections = Connections(wrapped, config, context, state, max_connections)
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
