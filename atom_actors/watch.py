"""``atom watch``: a live terminal view of a running swarm, subscribed like a frontend.

It opens a Sceau session on the API (``POST /api/v1/sceau/activate``), reads the Brise-Circuit's
state (``GET /api/v1/safeguard``), then subscribes to L'Essaim with ``?session=`` (on the ``delta``
stream unless ``--encoding`` says otherwise, decoding every frame as a frontend would) and shows,
four times a second: delivered fps, the stream's kB/s, latency (receipt time minus the frame
header's server time, so both clocks must agree: run it on the server's machine or a synchronised
one), agents by status and by sphere (the hello's roster, then ``agent.status`` events), and the
Brise-Circuit's state (``safeguard`` events, and the API every few seconds). The session is revoked
on the way out.

Where it connects::

    atom watch                                   API http://API_HOST:API_PORT, WS on WS_PORT
    atom watch http://10.0.0.5:8000              WS ws://10.0.0.5:WS_PORT/ws/swarm
    atom watch https://atom.example              WS wss://atom.example/ws/swarm (one origin,
                                                 behind a proxy: a URL without a port)
    atom watch URL --ws ws://host:8001/ws/swarm  both given
    atom watch ws://10.0.0.5:8001/ws/swarm       the stream itself: API http://10.0.0.5:API_PORT
    atom watch wss://atom.example/ws/swarm       API https://atom.example (one origin)

``--once`` samples ``--seconds`` (default 3) of the stream and prints ONE line, exit code 0 when
the delivered fps is at least ``--min-fps`` (default 55), 1 when below it or when the server is
unreachable or refuses us: a health probe.

The pure part (:class:`WatchState`, :func:`render`, :func:`summary_line`) knows nothing of the
network; :func:`watch` is the thin I/O shell.
"""

from __future__ import annotations

import json
import math
import ssl
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

import numpy as np
import trio
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text
from trio_websocket import (ConnectionClosed, ConnectionRejected, HandshakeError,
                            WebSocketConnection, wrap_client_stream)

from .errors import MalformedFrame, WatchUnreachable, leaves
from .protocol import ENCODING_IDS, HEADER, DeltaDecoder, Encoding

FPS_WINDOW_S = 2.0            # live fps: frames received over the last two seconds
LATENCY_SAMPLES = 600         # live latency quantiles over the last ten seconds at 60 fps
REFRESH_S = 0.25
SAFEGUARD_POLL_S = 5.0
HTTP_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 10.0
STATUSES = ("active", "dispersed", "regrouping")
SAFEGUARD_STYLE = {"closed": "green", "half_open": "yellow", "open": "bold red"}


# -- where to connect -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Endpoints:
    api: str   # http(s)://host[:port], no trailing slash
    ws: str    # ws(s)://host[:port]/ws/swarm


def endpoints(url: str | None, ws: str | None, *, api_host: str, api_port: int,
              ws_port: int) -> Endpoints:
    """The API and WebSocket URLs to use (see the module docstring for the rules)."""
    if url is None:
        host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(api_host, api_host)
        url = f"http://{_bracket(host)}:{api_port}"
    if url.startswith(("ws://", "wss://")):
        # The stream's own URL (what a frontend is configured with): the API is on the same host,
        # on API_PORT when the URL names a port (the servers themselves), else the same origin.
        stream = urlsplit(url)
        scheme = "https" if stream.scheme == "wss" else "http"
        netloc = f"{_bracket(stream.hostname or '')}:{api_port}" if stream.port else stream.netloc
        path = stream.path if stream.path not in ("", "/") else "/ws/swarm"
        return Endpoints(f"{scheme}://{netloc}", ws or f"{stream.scheme}://{stream.netloc}{path}")
    if "://" not in url:
        url = f"http://{url}"
    api = url.rstrip("/")
    if ws is not None:
        return Endpoints(api, ws)
    parts = urlsplit(api)
    scheme = "wss" if parts.scheme == "https" else "ws"
    # An explicit port means the servers themselves: the same host, on WS_PORT. No port means one
    # origin behind a proxy, which routes /ws/ to the broadcaster.
    netloc = f"{_bracket(parts.hostname or '')}:{ws_port}" if parts.port else parts.netloc
    return Endpoints(api, f"{scheme}://{netloc}/ws/swarm")


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


# -- the pure part --------------------------------------------------------------------------------

class WatchState:
    """What the stream has shown so far. Times are Unix seconds, given by the caller."""

    def __init__(self) -> None:
        self.hello: dict[str, Any] | None = None
        self.spheres: list[dict[str, Any]] = []
        self.sphere_of: list[str] = []
        self.status: list[str] = []
        self.safeguard = "unknown"
        self.safeguard_reason: str | None = None
        self.frames = 0
        self.first_at: float | None = None
        self.last_at: float | None = None
        self.last_seq: int | None = None
        self.skipped = 0               # frames the server sent others but not us (seq gaps)
        self.arrivals: deque[float] = deque()
        self.latency: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        self.events = 0
        self.last_event: str | None = None
        self.delta = DeltaDecoder()    # the delta stream's chain (§4.1): every frame is decoded
        self.received: deque[tuple[float, int]] = deque()   # (arrival, bytes) of every message
        self.bytes = 0

    def on_hello(self, hello: dict[str, Any]) -> None:
        self.hello = hello
        self.spheres = list(hello.get("spheres", []))
        roster = hello.get("roster", [])
        self.sphere_of = [agent.get("sphere", "") for agent in roster]
        self.status = [agent.get("status", "active") for agent in roster]

    def on_message(self, message: bytes | str, received_at: float) -> None:
        """Any message after the hello: a binary frame, a JSON frame or an event.

        Raises MalformedFrame for a binary frame that cannot be decoded."""
        self._count_bytes(len(message) if isinstance(message, bytes | bytearray)
                          else len(message.encode()), received_at)
        if isinstance(message, bytes | bytearray):
            if len(message) < HEADER.size:
                raise MalformedFrame(f"frame of {len(message)} bytes is shorter than its header")
            _, encoding, _, seq, t = HEADER.unpack_from(message)
            if encoding in (ENCODING_IDS["delta"], ENCODING_IDS["keyframe"]):
                self.delta.decode(message)
            self.on_frame(seq, t, received_at)
            return
        data = json.loads(message)
        if data.get("type") == "frame":
            self.on_frame(int(data["seq"]), float(data["t"]), received_at)
        elif data.get("type") == "event":
            self.on_event(data)
        elif data.get("type") == "hello":
            self.on_hello(data)

    def on_frame(self, seq: int, t: float, received_at: float) -> None:
        if self.last_seq is not None:
            self.skipped += max(0, (seq - self.last_seq - 1) % 2**32)
        self.last_seq = seq
        self.frames += 1
        self.first_at = received_at if self.first_at is None else self.first_at
        self.last_at = received_at
        self.arrivals.append(received_at)
        while self.arrivals and self.arrivals[0] < received_at - FPS_WINDOW_S:
            self.arrivals.popleft()
        self.latency.append(received_at - t)

    def _count_bytes(self, size: int, received_at: float) -> None:
        self.bytes += size
        self.received.append((received_at, size))
        while self.received and self.received[0][0] < received_at - FPS_WINDOW_S:
            self.received.popleft()

    def on_event(self, event: dict[str, Any]) -> None:
        self.events += 1
        name = event.get("event")
        self.last_event = name
        if name == "agent.status":
            agent = event.get("agent")
            if isinstance(agent, int) and 0 <= agent < len(self.status):
                self.status[agent] = str(event.get("status"))
        elif name == "safeguard":
            self.set_safeguard(event.get("state"), event.get("reason"))

    def set_safeguard(self, state: Any, reason: Any = None) -> None:
        self.safeguard = str(state) if state else "unknown"
        self.safeguard_reason = str(reason) if reason else None

    # -- readings --------------------------------------------------------------------------------

    def fps(self, now: float) -> float:
        """Frames received over the last FPS_WINDOW_S (or since the first, if that is shorter)."""
        recent = [t for t in self.arrivals if t >= now - FPS_WINDOW_S]
        if self.first_at is None or not recent:
            return 0.0
        window = min(FPS_WINDOW_S, now - self.first_at)
        return (len(recent) - 1) / window if window > 0 and len(recent) > 1 else 0.0

    def kbytes_per_s(self, now: float) -> float:
        """The stream's kB/s (payloads, frames and events) over the last FPS_WINDOW_S."""
        if self.first_at is None:
            return 0.0
        window = min(FPS_WINDOW_S, now - self.first_at)
        recent = sum(size for at, size in self.received if at >= now - FPS_WINDOW_S)
        return recent / window / 1000 if window > 0 else 0.0

    def mean_kbytes_per_s(self) -> float:
        """kB/s over the whole sample, first frame to last."""
        if self.first_at is None or self.last_at is None or self.last_at <= self.first_at:
            return 0.0
        return self.bytes / (self.last_at - self.first_at) / 1000

    def mean_fps(self) -> float:
        """Frames per second over the whole sample, first frame to last."""
        if self.first_at is None or self.last_at is None or self.last_at <= self.first_at:
            return 0.0
        return (self.frames - 1) / (self.last_at - self.first_at)

    def latency_ms(self) -> tuple[float, float]:
        """p50 and p99 of the recent latencies, in milliseconds."""
        if not self.latency:
            return math.nan, math.nan
        p50, p99 = np.quantile(np.fromiter(self.latency, float), (0.5, 0.99))
        return float(p50) * 1000, float(p99) * 1000

    def by_status(self) -> dict[str, int]:
        counts = dict.fromkeys(STATUSES, 0)
        for status in self.status:
            counts[status] = counts.get(status, 0) + 1
        return counts

    def by_sphere(self) -> dict[str, dict[str, int]]:
        table = {s["name"]: dict.fromkeys(STATUSES, 0) for s in self.spheres}
        for sphere, status in zip(self.sphere_of, self.status):
            row = table.setdefault(sphere, dict.fromkeys(STATUSES, 0))
            row[status] = row.get(status, 0) + 1
        return table


def render(state: WatchState, now: float, source: str = "") -> Group:
    """The screen: a header line, agents by status, and a table of the spheres."""
    p50, p99 = state.latency_ms()
    guard = Text(state.safeguard, style=SAFEGUARD_STYLE.get(state.safeguard, "dim"))
    if state.safeguard_reason and state.safeguard != "closed":
        guard.append(f" ({state.safeguard_reason})", style="dim")
    head = Table.grid(padding=(0, 3))
    head.add_row(Text("L'Essaim", style="bold"), Text(source, style="dim"))
    wanted = f" / {state.hello['fps']}" if state.hello else ""
    encoding = f" ({state.hello['encoding']})" if state.hello else ""
    head.add_row("fps", f"{state.fps(now):.1f}{wanted}   {state.kbytes_per_s(now):.1f} kB/s{encoding}")
    head.add_row("latency", "-" if math.isnan(p50) else f"p50 {p50:.1f} ms   p99 {p99:.1f} ms")
    head.add_row("frames", f"{state.frames} received, {state.skipped} skipped")
    head.add_row("Brise-Circuit", guard)
    counts = state.by_status()
    head.add_row("agents", "   ".join(f"{name} {counts.get(name, 0)}" for name in STATUSES)
                 + f"   (of {len(state.status)})")
    spheres = Table(title="spheres", title_justify="left", show_edge=False, pad_edge=False)
    spheres.add_column("sphere")
    for name in ("agents", *STATUSES):
        spheres.add_column(name, justify="right")
    colours = {s["name"]: s.get("color") for s in state.spheres}
    for name, row in state.by_sphere().items():
        style = colours.get(name) if isinstance(colours.get(name), str) else None
        spheres.add_row(Text(name, style=style), str(sum(row.values())),
                        *(str(row.get(status, 0)) for status in STATUSES))
    return Group(head, Text(""), spheres)


def summary_line(state: WatchState, min_fps: float) -> tuple[str, bool]:
    """The one line of ``--once``, and whether the stream is healthy."""
    fps = state.mean_fps()
    healthy = fps >= min_fps
    p50, p99 = state.latency_ms()
    counts = state.by_status()
    latency = "latency=-" if math.isnan(p50) else f"latency_p50={p50:.1f}ms latency_p99={p99:.1f}ms"
    return (f"atom watch: {'ok' if healthy else 'LOW'} fps={fps:.1f} min_fps={min_fps:g} "
            f"kB_s={state.mean_kbytes_per_s():.1f} "
            f"frames={state.frames} skipped={state.skipped} {latency} agents={len(state.status)} "
            + " ".join(f"{name}={counts.get(name, 0)}" for name in STATUSES)
            + f" safeguard={state.safeguard}", healthy)


# -- the I/O shell --------------------------------------------------------------------------------

def _http(method: str, url: str, body: dict | None = None,
          headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    """One blocking request (run in a thread): status, headers (lower-case), parsed JSON body."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={
        "Content-Type": "application/json", "Accept": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
            status, raw = response.status, response.read()
            response_headers = {k.lower(): v for k, v in response.headers.items()}
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
        response_headers = {k.lower(): v for k, v in error.headers.items()}
    try:
        payload = json.loads(raw) if raw else None
    except json.JSONDecodeError:
        payload = None
    return status, response_headers, payload


async def _request(method: str, url: str, **kwargs: Any) -> tuple[int, dict[str, str], Any]:
    try:
        return await trio.to_thread.run_sync(lambda: _http(method, url, **kwargs),
                                             abandon_on_cancel=True)
    except (OSError, ValueError) as exc:  # refused, reset, DNS, TLS, timeout, bad URL
        reason = getattr(exc, "reason", None) or exc
        raise WatchUnreachable(f"{method} {url}: {reason}") from None


async def open_session(api: str, duration_ms: int) -> str:
    status, headers, body = await _request("POST", f"{api}/api/v1/sceau/activate",
                                           body={"duration_ms": duration_ms})
    token = headers.get("x-sceau-session") or (body or {}).get("session")
    if status != 201 or not token:
        code = (body or {}).get("error", "no session") if isinstance(body, dict) else "no session"
        raise WatchUnreachable(f"the API refused a Sceau session: HTTP {status} {code}")
    return token


async def read_safeguard(api: str, token: str) -> tuple[str, str | None]:
    status, _, body = await _request("GET", f"{api}/api/v1/safeguard",
                                     headers={"X-Sceau-Session": token})
    if status != 200 or not isinstance(body, dict):
        return "unknown", None
    return str(body.get("state", "unknown")), body.get("reason")


@asynccontextmanager
async def subscribe(url: str, extra_headers: list[tuple[bytes, bytes]] | None = None
                    ) -> AsyncIterator[WebSocketConnection]:
    """A WebSocket client on a TCP (or TLS) stream this module owns and closes: trio-websocket's
    ``open_websocket_url`` leaves the socket open when the server ends the connection or refuses
    the handshake."""
    parts = urlsplit(url)
    secure = parts.scheme == "wss"
    port = parts.port or (443 if secure else 80)
    resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    with trio.fail_after(CONNECT_TIMEOUT_S):
        stream: trio.SocketStream | trio.SSLStream[trio.SocketStream] = \
            await trio.open_tcp_stream(parts.hostname or "", port)
    try:
        if secure:
            stream = trio.SSLStream(stream, ssl.create_default_context(),
                                    server_hostname=parts.hostname, https_compatible=True)
        async with trio.open_nursery() as nursery:
            with trio.fail_after(CONNECT_TIMEOUT_S):
                ws = await wrap_client_stream(nursery, stream, parts.netloc, resource,
                                              extra_headers=extra_headers)
            try:
                yield ws
            finally:
                with trio.move_on_after(1) as scope:
                    scope.shield = True
                    await ws.aclose()
                nursery.cancel_scope.cancel()
    finally:
        await trio.aclose_forcefully(stream)


async def watch(where: Endpoints, *, once: bool = False, seconds: float = 3.0,
                min_fps: float = 55.0, sceau_ms: int = 2000, encoding: Encoding = "delta",
                console: Console | None = None, now: Callable[[], float] = time.time) -> int:
    """Watch until interrupted (or, with ``once``, for ``seconds``); return the exit code.

    Cancellation: the subscription closes and the session is revoked (best effort, bounded).
    Errors: an unreachable or refusing server is reported on one line, exit code 1.
    """
    console = console or Console()
    state = WatchState()
    token: str | None = None
    try:
        with trio.fail_after(CONNECT_TIMEOUT_S):
            token = await open_session(where.api, sceau_ms)
            state.set_safeguard(*await read_safeguard(where.api, token))
        url = f"{where.ws}?{urlencode({'session': token, 'encoding': encoding})}"
        async with subscribe(url) as ws:
            with trio.fail_after(CONNECT_TIMEOUT_S):
                hello = json.loads(await ws.get_message())
            state.on_hello(hello)
            if once:
                return await _sample(ws, state, seconds, min_fps, now)
            await _live(ws, state, where, token, console, now)
            return 0
    except BaseExceptionGroup as group:
        # The subscription's nursery wraps what went wrong; one leaf of ours is reported as such.
        leaf = _only_leaf(group)
        if leaf is None or not _report(where, leaf):
            raise
    except Exception as exc:
        if not _report(where, exc):
            raise
    finally:
        if token is not None:
            with trio.move_on_after(2.0) as scope:
                scope.shield = True
                try:
                    await _request("DELETE", f"{where.api}/api/v1/sceau/session",
                                   headers={"X-Sceau-Session": token})
                except WatchUnreachable:
                    pass  # the session expires by itself; nothing to report on the way out
    return 1


def _report(where: Endpoints, exc: BaseException) -> bool:
    """Print the one line of an unreachable or refusing server; False for any other error."""
    if isinstance(exc, ConnectionRejected):
        why = f"{where.ws} refused the subscription: HTTP {exc.status_code}"
    elif isinstance(exc, ConnectionClosed):
        why = f"{where.ws} closed the stream: {exc.reason}"
    elif isinstance(exc, HandshakeError | OSError):
        why = f"{where.ws}: {exc or type(exc).__name__}"
    elif isinstance(exc, WatchUnreachable):
        why = str(exc)
    elif isinstance(exc, MalformedFrame):
        why = f"{where.ws} sent a frame that does not decode: {exc}"
    elif isinstance(exc, trio.TooSlowError):
        why = f"no answer within {CONNECT_TIMEOUT_S:g} s"
    else:
        return False
    print(f"atom watch: UNREACHABLE {why}", flush=True)
    return True


def _only_leaf(group: BaseExceptionGroup) -> BaseException | None:
    found = [leaf for leaf in leaves(group) if not isinstance(leaf, trio.Cancelled)]
    return found[0] if len(found) == 1 else None


async def _sample(ws: Any, state: WatchState, seconds: float, min_fps: float,
                  now: Callable[[], float]) -> int:
    # The clock starts at the first frame: connection set-up is not the stream's fault.
    with trio.move_on_after(seconds + CONNECT_TIMEOUT_S):
        while state.frames == 0:
            state.on_message(await ws.get_message(), now())
        with trio.move_on_after(seconds):
            while True:
                state.on_message(await ws.get_message(), now())
    line, healthy = summary_line(state, min_fps)
    print(line, flush=True)
    return 0 if healthy else 1


async def _live(ws: Any, state: WatchState, where: Endpoints, token: str, console: Console,
                now: Callable[[], float]) -> None:
    source = f"{where.api}  {where.ws}"
    with Live(render(state, now(), source), console=console, auto_refresh=False,
              transient=False) as live:
        async with trio.open_nursery() as nursery:
            async def refresh() -> None:
                while True:
                    live.update(render(state, now(), source), refresh=True)
                    await trio.sleep(REFRESH_S)

            async def poll_safeguard() -> None:
                # Events say when it opens; the API also says when the cooldown made it half-open.
                while True:
                    await trio.sleep(SAFEGUARD_POLL_S)
                    try:
                        state.set_safeguard(*await read_safeguard(where.api, token))
                    except WatchUnreachable:
                        state.set_safeguard("unknown", "API unreachable")

            nursery.start_soon(refresh)
            nursery.start_soon(poll_safeguard)
            while True:
                state.on_message(await ws.get_message(), now())
