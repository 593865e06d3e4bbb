"""The API's connections as a hostile client meets them (issue 13): raw sockets on free ports.

In-process tests run the real tree (``app.serve``) on virtual time: Hypercorn's timers and ours
read trio's clock, so "closed after 5 s idle" takes no real time. The descriptor-exhaustion test
runs ``atom serve`` in a subprocess under ``prlimit``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import random
import re
import shutil
import subprocess
from contextlib import AsyncExitStack
from functools import partial
from importlib.metadata import version
from urllib.parse import urlsplit

import h2.config
import h2.connection
import httpx
import pytest
import trio
import trio.testing
from trio_websocket import open_websocket_url

from atom_actors import app as tree, logs
from atom_actors.api import hyperworker, probes, server
from atom_actors.api.app import create_app

from .atom_process import ATOM, atom_env
from .conftest import make_settings
from .servers import free_port

BOUND_S = 60


async def serve(nursery: trio.Nursery, **overrides: object):
    settings = make_settings(api_port=0, ws_port=0, ws_require_session="false", **overrides)
    return await nursery.start(tree.serve, settings)


async def connect(url: str) -> trio.SocketStream:
    parts = urlsplit(url)
    return await trio.open_tcp_stream(parts.hostname, parts.port)


def request(path: str = "/api/v1/health", *headers: str, method: str = "GET",
            body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def read_response(stream: trio.SocketStream, buffer: bytearray) -> tuple[bytes, bytes]:
    """One response (head, body; Content-Length framed) from ``stream``; leftovers stay in
    ``buffer``."""
    while b"\r\n\r\n" not in buffer:
        chunk = await stream.receive_some()
        assert chunk, f"closed before a response: {bytes(buffer)!r}"
        buffer += chunk
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(rest) < length:
        chunk = await stream.receive_some()
        assert chunk
        rest += chunk
    buffer[:] = rest[length:]
    return head, rest[:length]


async def until_closed(stream: trio.SocketStream) -> bytes:
    data = b""
    while chunk := await stream.receive_some():
        data += chunk
    return data


def json_error(head: bytes, body: bytes, status: int, code: str) -> dict:
    assert head.split(b" ", 2)[1] == str(status).encode(), head
    assert b"content-type: application/json" in head.lower(), head
    answer = json.loads(body)
    assert answer["error"] == code and isinstance(answer["detail"], str) and answer["detail"]
    return answer


# -- finding 1: connections bounded in time -------------------------------------------------------

async def test_connection_close_closes_right_after_the_response(autojump_clock, nursery):
    """A response carries ``Connection: close``: the socket is closed with it, on no timer."""
    services = await serve(nursery)
    with trio.fail_after(BOUND_S):
        for _ in range(3):   # not just the first connection
            async with await connect(services.api_url) as stream:
                await stream.send_all(request("/api/v1/health", "Connection: close"))
                start = trio.current_time()
                head, body = await read_response(stream, bytearray())
                assert b" 200 " in head.split(b"\r\n")[0] and json.loads(body)["status"] == "ok"
                assert await until_closed(stream) == b""
                assert trio.current_time() == start, "closed at once, not by a timer"


async def test_an_idle_keep_alive_connection_is_closed_after_a_few_seconds(autojump_clock, nursery):
    services = await serve(nursery)
    with trio.fail_after(BOUND_S):
        async with await connect(services.api_url) as stream:
            buffer = bytearray()
            for _ in range(2):   # kept alive between requests: the timer is re-armed each time
                await stream.send_all(request())
                head, _ = await read_response(stream, buffer)
                assert b" 200 " in head.split(b"\r\n")[0]
                await trio.sleep(server.KEEP_ALIVE_S - 1)
            start = trio.current_time()
            assert await until_closed(stream) == b""
            assert trio.current_time() - start == pytest.approx(1.0, abs=0.2)


async def test_an_idle_connection_outlives_the_common_clients_own_expiry(autojump_clock, nursery):
    """httpx lets go of an idle connection after 5 s, undici after 4: until then it may send its
    next request, a POST included, on it. Were the server to close first, such a request would
    meet a closing socket and fail (no client retries a POST)."""
    services = await serve(nursery)
    with trio.fail_after(BOUND_S):
        async with await connect(services.api_url) as stream:
            buffer = bytearray()
            await stream.send_all(request())
            head, _ = await read_response(stream, buffer)
            await trio.sleep(5.5)
            await stream.send_all(request())
            head, body = await read_response(stream, buffer)
            assert b" 200 " in head.split(b"\r\n")[0] and json.loads(body)["status"] == "ok"


async def test_a_trickling_request_is_closed_after_a_deadline(autojump_clock, nursery):
    """Slowloris: a head that never ends is closed after KEEP_ALIVE_S; a body that trickles in is
    answered 408 (JSON) after BODY_TIMEOUT_S and closed."""
    services = await serve(nursery)
    with trio.fail_after(BOUND_S):
        async with await connect(services.api_url) as stream:
            start = trio.current_time()
            await stream.send_all(b"GET /api/v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            with trio.move_on_after(2 * server.KEEP_ALIVE_S), \
                    pytest.raises(trio.BrokenResourceError):   # the server closed it
                for n in range(100):
                    await stream.send_all(b"X-Slow-%d: 1\r\n" % n)
                    await trio.sleep(0.5)
            assert trio.current_time() - start <= server.KEEP_ALIVE_S + 1.1

        async with await connect(services.api_url) as stream:
            start = trio.current_time()
            await stream.send_all(request("/api/v1/sceau/activate", "Content-Length: 1000",
                                          "Content-Type: application/json", method="POST"))
            answer = bytearray()

            async def trickle() -> None:
                with contextlib.suppress(trio.BrokenResourceError):   # closed meanwhile
                    for _ in range(1000):
                        await stream.send_all(b" ")
                        await trio.sleep(1)

            async with trio.open_nursery() as tasks:
                tasks.start_soon(trickle)
                answer += await until_closed(stream)
                tasks.cancel_scope.cancel()
            head, _, body = bytes(answer).partition(b"\r\n\r\n")
            json_error(head, body, 408, "request_timeout")
            assert trio.current_time() - start == pytest.approx(server.BODY_TIMEOUT_S, abs=1.5)


async def test_hypercorns_own_errors_are_json_431_included(autojump_clock, nursery):
    """Finding 6: a head too large (431) and a request that is not HTTP (400), which Hypercorn
    answers itself, get the JSON error shape."""
    services = await serve(nursery)
    with trio.fail_after(BOUND_S):
        async with await connect(services.api_url) as stream:
            await stream.send_all(request("/api/v1/health", "X-Big: " + "a" * 100_000))
            head, _, body = (await until_closed(stream)).partition(b"\r\n\r\n")
            answer = json_error(head, body, 431, "request_header_fields_too_large")
            assert "16 KiB" in answer["detail"]
        async with await connect(services.api_url) as stream:
            await stream.send_all(b"GET /api/v1/he\x00alth HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            head, _, body = (await until_closed(stream)).partition(b"\r\n\r\n")
            json_error(head, body, 400, "bad_request")


# -- finding 1: connections bounded in number -----------------------------------------------------

async def test_connections_beyond_the_cap_get_503_json_and_the_held_ones_time_out(autojump_clock,
                                                                                   nursery):
    services = await serve(nursery)
    app = create_app(services.api_input)
    config = server.hypercorn_config("127.0.0.1", 0)
    binds, connections = await nursery.start(partial(hyperworker.serve, app, config, max_connections=3))
    with trio.fail_after(BOUND_S):
        async with AsyncExitStack() as stack:
            held = [await stack.enter_async_context(await connect(binds[0])) for _ in range(3)]
            await trio.testing.wait_all_tasks_blocked()
            async with await connect(binds[0]) as extra:
                await extra.send_all(request())
                head, _, body = (await until_closed(extra)).partition(b"\r\n\r\n")
                json_error(head, body, 503, "too_many_connections")
                assert b"retry-after: 1" in head.lower()
            assert connections.refusals.count == 1 and len(connections.open) == 3
            # The held ones say nothing: closed once idle, and the server has room again.
            for stream in held:
                assert await until_closed(stream) == b""
            async with httpx.AsyncClient(base_url=binds[0]) as c:
                assert (await c.get("/api/v1/health")).status_code == 200


async def test_a_connection_silent_both_ways_is_closed_whatever_its_state(autojump_clock, nursery):
    """The backstop: a request whose answer never comes (here, a route that hangs) and whose
    client says nothing more is answered 500 and closed after SILENCE_S."""
    services = await serve(nursery)
    app = create_app(services.api_input)

    async def hang() -> None:
        await trio.sleep_forever()

    app.add_url_rule("/hang", "hang", hang)
    app.config["RESPONSE_TIMEOUT"] = None
    config = server.hypercorn_config("127.0.0.1", 0)
    binds, connections = await nursery.start(partial(hyperworker.serve, app, config, max_connections=5))
    with trio.fail_after(BOUND_S + hyperworker.SILENCE_S):
        async with await connect(binds[0]) as stream:
            await stream.send_all(request("/hang"))
            start = trio.current_time()
            head, _, body = (await until_closed(stream)).partition(b"\r\n\r\n")
            json_error(head, body, 500, "internal_error")   # Hypercorn's, for the app's silence
            assert trio.current_time() - start == pytest.approx(hyperworker.SILENCE_S, abs=1.5)
    assert connections.silenced == 1 and not connections.open


PRLIMIT = shutil.which("prlimit")
NOFILE = 256


@pytest.mark.skipif(PRLIMIT is None, reason="prlimit (util-linux) is not installed")
async def test_held_connections_under_a_low_descriptor_limit_leave_new_clients_served(tmp_path):
    """Finding 1: with 256 descriptors, 300 held REST connections (each after a kept-alive
    request) lock out neither REST nor WebSocket clients, and running out of descriptors costs
    no traceback. (Real time: a subprocess; a few seconds.)"""
    api_port, ws_port = free_port(), free_port()
    env = atom_env(API_PORT=str(api_port), WS_PORT=str(ws_port), WS_REQUIRE_SESSION="false",
                   ZERO_LOG="false", LOG_LEVEL="WARNING", ALLOWED_HOSTS="127.0.0.2,127.0.0.1")
    host = env["API_HOST"]
    api_url, ws_url = f"http://{host}:{api_port}", f"ws://{host}:{ws_port}/ws/swarm"
    proc = await trio.lowlevel.open_process(
        [PRLIMIT, f"--nofile={NOFILE}:{NOFILE}", *ATOM, "serve"], env=env, cwd=str(tmp_path),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = bytearray()

    async def drain() -> None:
        while chunk := await proc.stderr.receive_some():
            stderr.extend(chunk)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain)
            with trio.fail_after(30):
                while b"serving:" not in stderr:
                    assert proc.poll() is None, stderr.decode(errors="replace")
                    await trio.sleep(0.1)
            async with AsyncExitStack() as stack:
                held, answers = [], {}
                with trio.fail_after(30):
                    for _ in range(300):
                        stream = await stack.enter_async_context(await connect(api_url))
                        await stream.send_all(request())   # kept alive after its answer
                        held.append(stream)
                    for i, stream in enumerate(held):
                        try:
                            head, _ = await read_response(stream, bytearray())
                        except trio.BrokenResourceError:
                            raise AssertionError(f"reset #{i} {answers} {stderr.decode()[-2000:]}")
                        status = int(head.split(b" ", 2)[1])
                        answers[status] = answers.get(status, 0) + 1
                # One address's share is a part of the API's: beyond it a new connection closes
                # the address's longest-idle one (issue 24), or is answered 503.
                assert set(answers) <= {200, 503}, answers
                with trio.fail_after(10):   # a REST client is answered, not left hanging
                    async with httpx.AsyncClient(base_url=api_url) as c:
                        r = await c.get("/api/v1/health")
                    assert r.status_code in (200, 503) and r.headers["content-type"] == \
                        "application/json"
                with trio.fail_after(10):   # a WebSocket client is served
                    async with open_websocket_url(ws_url) as ws:
                        assert json.loads(await ws.get_message())["type"] == "hello"
                with trio.fail_after(server.KEEP_ALIVE_S + 5):   # the held ones time out...
                    for stream in held:
                        await until_closed(stream)
                with trio.fail_after(5):                         # ...and REST serves again
                    async with httpx.AsyncClient(base_url=api_url) as c:
                        assert (await c.get("/api/v1/health")).status_code == 200
            nursery.cancel_scope.cancel()
    finally:
        if proc.poll() is None:
            proc.terminate()
        with trio.move_on_after(10):
            await proc.wait()
        if proc.poll() is None:
            proc.kill()
    text = stderr.decode(errors="replace")
    assert "Traceback" not in text and "accept returned" not in text, text[-3000:]
    assert text.count("accept failed with") <= 15, text[-3000:]


# -- the fence around Hypercorn's internals ---------------------------------------------------------

def test_hypercorn_is_a_version_whose_internals_were_checked():
    """hyperworker.py relies on Hypercorn's trio worker internals (its docstring lists them):
    a new minor version must be checked, then added to TESTED_HYPERCORN."""
    installed = ".".join(version("hypercorn").split(".")[:2])
    assert installed in hyperworker.TESTED_HYPERCORN, (
        f"Hypercorn {installed}: re-check the assumptions of atom_actors/api/hyperworker.py")
    from hypercorn.trio.tcp_server import TCPServer
    from hypercorn.trio.worker_context import WorkerContext
    assert {"run", "protocol_send", "_read_data"} <= set(vars(TCPServer))
    assert hasattr(WorkerContext(None), "terminated")


def test_only_hypercorns_bare_error_heads_get_a_json_body():
    bare = (b"HTTP/1.1 431 \r\ncontent-length: 0\r\nconnection: close\r\n"
            b"date: Sun, 29 Nov 2026 17:08:12 GMT\r\n\r\n")
    head, _, body = hyperworker.json_error(bare).partition(b"\r\n\r\n")
    assert json.loads(body)["error"] == "request_header_fields_too_large"
    assert b"content-length: %d" % len(body) in head and b"content-length: 0" not in head
    for kept in (b"HTTP/1.1 204 \r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                 b"HTTP/1.1 404 \r\ncontent-length: 2\r\nconnection: close\r\n\r\n",
                 b"HTTP/1.1 401 \r\ncontent-length: 0\r\n\r\n", b'{"partial": "body"}'):
        assert hyperworker.json_error(kept) == kept


# -- issue 24: the second round ---------------------------------------------------------------------

UPGRADE_WS = ("Connection: Upgrade", "Upgrade: websocket",
              "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13")


def no_failure_logged(records: list[logging.LogRecord]) -> None:
    """Nothing at ERROR or above, and no traceback at any level."""
    bad = [(r.name, r.getMessage()[:200]) for r in records
           if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, bad


async def exchange(url: str, data: bytes, local: str | None = None) -> bytes:
    """Send ``data`` on a new connection and read until the server closes it (bounded)."""
    parts = urlsplit(url)
    async with await trio.open_tcp_stream(parts.hostname, parts.port,
                                          local_address=local) as stream:
        await stream.send_all(data)
        with trio.move_on_after(server.KEEP_ALIVE_S + 3):
            return await until_closed(stream)
    return b""


async def test_a_websocket_upgrade_on_the_api_port_is_a_404_json(autojump_clock, nursery, caplog):
    """Finding 1: Quart routed it as a websocket and the error handler read ``request.path``
    outside a request context: 500 and two tracebacks per request, with a disallowed Host too."""
    services = await serve(nursery)
    caplog.set_level(logging.WARNING)
    with trio.fail_after(BOUND_S):
        for host in ("127.0.0.1", "evil.example"):
            for path in ("/x", "/api/v1/health", "/ws/swarm", "/viewer/" + "a" * 300):
                data = ("\r\n".join([f"GET {path} HTTP/1.1", f"Host: {host}", *UPGRADE_WS])
                        + "\r\n\r\n").encode()
                answer = await exchange(services.api_url, data)
                head, _, body = answer.partition(b"\r\n\r\n")
                json_error(head, body, 404, "not_found")
    no_failure_logged(caplog.records)


HOSTILE_SEGMENTS = [
    "a" * 5000, "x" * 255, "%00", "..%2f..%2fetc%2fpasswd", "../../etc/passwd", "%2e%2e/%2e%2e",
    "%ff%fe", "%F3%B7%95%BB", "é" * 300, "index.html%00.js", "sdk.js/..", "\\..\\..", ";a=b",
    "a%0d%0aSet-Cookie:x", "~root", ".", "..", "%25", "CON", "a/" * 200, "*",
]
METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "PROPFIND"]
EXTRA_HEADERS = [(), UPGRADE_WS, ("Connection: Upgrade, HTTP2-Settings", "Upgrade: h2c",
                                  "HTTP2-Settings: AAMAAABkAAQAAP__")]


def hostile_targets(app) -> list[str]:
    """Every route of ``app``, its variables replaced by each hostile segment, and the static
    trees with each segment appended."""
    targets = set()
    for rule in app.url_map.iter_rules():
        for segment in HOSTILE_SEGMENTS:
            targets.add(re.sub(r"<[^>]+>", segment, rule.rule))
            targets.add(rule.rule.rstrip("/") + "/" + segment)
    return sorted(targets)


async def test_no_hostile_path_method_or_upgrade_finds_a_500_or_a_traceback(autojump_clock,
                                                                           nursery, caplog):
    """Finding 2 and the fuzz of issue 24: every route, every static tree (``/viewer/``,
    ``/viewer/sdk/``) with hostile paths (5,000 characters, NUL, traversal, bad UTF-8), odd
    methods and upgrade headers: no 500, every error JSON, nothing logged as a failure.
    (``/viewer/sdk/`` + 5,000 characters was a 500 with an ENAMETOOLONG traceback.)"""
    services = await serve(nursery)
    caplog.set_level(logging.WARNING)
    targets = hostile_targets(create_app(services.api_input))
    rng = random.Random(24)
    cases = [(target, rng.choice(METHODS), rng.choice(EXTRA_HEADERS)) for target in targets]
    cases += [("/viewer/sdk/" + "a" * 5000, "GET", ()), ("/viewer/" + "a" * 5000, "GET", ())]
    statuses: dict[int, int] = {}
    with trio.fail_after(BOUND_S * 4):
        for target, method, extra in cases:   # each on its own connection: a 400 closes one
            answer = await exchange(services.api_url,
                                    request(target, *extra, "Connection: close", method=method))
            head, _, body = answer.partition(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            statuses[status] = statuses.get(status, 0) + 1
            assert status < 500, (target[:80], method, extra, head)
            if status >= 400 and method != "HEAD":
                answer = json.loads(body)
                assert set(answer) >= {"error", "detail"}, (target[:80], answer)
    assert len(cases) > 500 and statuses.get(404, 0) > 100, statuses
    no_failure_logged(caplog.records)


async def test_a_flood_of_failing_requests_leaves_the_log_bounded(nursery):
    """Finding 3: four connections added 0.85–0.91 MB/s to the log (~75 GB a day). Four
    connections send hostile requests for 2 s (real time: the log's bound is a rate); the log
    grows by a few lines at most, and one line a second per failure class is what the handler
    lets through in any case."""
    buffer = io.StringIO()
    settings = make_settings(api_port=0, ws_port=0, ws_require_session="false")
    logs.configure(settings, stream=buffer)
    try:
        services = await nursery.start(tree.serve, settings)
        kinds = [request("/x", *UPGRADE_WS, "Connection: close"),
                 request("/viewer/sdk/" + "a" * 5000, "Connection: close"),
                 request("/viewer/" + "%00" * 1000, "Connection: close"),
                 b"\x16\x03\x01 not http at all\r\n\r\n",
                 request("/api/v1/health", "Content-Length: 3", "Transfer-Encoding: chunked")]
        sent = 0

        async def flood() -> None:
            nonlocal sent
            deadline = trio.current_time() + 2.0
            while trio.current_time() < deadline:
                await exchange(services.api_url, kinds[sent % len(kinds)])
                sent += 1

        with trio.fail_after(BOUND_S):
            async with trio.open_nursery() as clients:
                for _ in range(4):
                    clients.start_soon(flood)
        grown = len(buffer.getvalue().encode())
    finally:
        logs.reset()
    assert sent > 100, sent
    assert grown <= 4 * 1024, (sent, buffer.getvalue()[:3000])


def test_one_line_a_second_per_failure_class():
    """The handler's filter: 1,000 lines of one class in a second are one line; the next line
    of that class, a second later, says how many were left out; another class is not held."""
    now = [0.0]
    limiter = logs.OncePerSecond(clock=lambda: now[0])

    def record(msg: str, *args: object, name: str = "atom_actors.api",
               level: int = logging.ERROR) -> logging.LogRecord:
        return logging.LogRecord(name, level, __file__, 1, msg, args, None)

    passed = [limiter.filter(record("%s failed", f"client text {i}")) for i in range(1000)]
    assert passed.count(True) == 1 and limiter.dropped == 999
    assert limiter.filter(record("another class"))
    assert limiter.filter(record("trace", level=logging.INFO))   # below WARNING: never held
    now[0] = 1.0
    line = record("%s failed", "x")
    assert limiter.filter(line) and line.getMessage() == "x failed [999 alike not written]"


async def test_http2_prior_knowledge_and_h2c_are_refused(autojump_clock, nursery):
    """Finding 5: the API spoke HTTP/2 cleartext (the preface got SETTINGS; an h2c upgrade got
    101), where none of the HTTP/1.1 bounds apply. Driven with a real h2 client."""
    services = await serve(nursery)
    with trio.fail_after(BOUND_S):
        client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        client.initiate_connection()
        client.send_headers(1, [(":method", "GET"), (":path", "/api/v1/health"),
                                (":scheme", "http"), (":authority", "127.0.0.1")],
                            end_stream=True)
        answer = await exchange(services.api_url, client.data_to_send())
        assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]   # not an h2 frame
        head, _, body = answer.partition(b"\r\n\r\n")
        json_error(head, body, 400, "bad_request")

        upgrading = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        settings = upgrading.initiate_upgrade_connection()
        answer = await exchange(services.api_url, request(
            "/api/v1/health", "Connection: Upgrade, HTTP2-Settings", "Upgrade: h2c",
            f"HTTP2-Settings: {settings.decode()}", "Connection: close"))
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 "), head   # answered as HTTP/1.1, never 101
        assert json.loads(body)["status"] == "ok"


@pytest.mark.parametrize("framing", [
    ("Content-Length: 4", "Transfer-Encoding: chunked"),
    ("Transfer-Encoding: chunked", "Content-Length: 4"),
    ("Content-Length: 4", "Content-Length: 5"),
    ("Content-Length: 4, 5",),
])
async def test_ambiguous_framing_is_a_400_and_a_close(autojump_clock, nursery, framing):
    """Finding 6: with both Content-Length and Transfer-Encoding the request was framed by TE
    and the connection stayed open, so the request hidden behind it was answered (RFC 9112
    §6.1: the server MUST close). Conflicting lengths likewise."""
    services = await serve(nursery)
    smuggled = request("/api/v1/health/ready")
    body = b"0\r\n\r\n" + smuggled if "Transfer-Encoding: chunked" in framing else b"abcd" + smuggled
    with trio.fail_after(BOUND_S):
        answer = await exchange(services.api_url, request(
            "/api/v1/sceau/activate", "Content-Type: application/json", *framing, method="POST",
            body=body))
    head, _, rest = answer.partition(b"\r\n\r\n")
    json_error(head, rest[:rest.index(b"}") + 1], 400, "bad_request")
    assert answer.count(b"HTTP/1.1 ") == 1, answer   # closed: the hidden request unanswered


async def test_one_address_cannot_take_every_api_connection(autojump_clock, nursery):
    """Finding 7 (API): one address held all 1,000 connections and everyone else got 503. Now
    one address holds at most API_MAX_CONNECTIONS_PER_ADDRESS busy ones; beyond, a new one from
    it closes its longest-idle connection, or is answered 503 when none is idle; another address
    is served all along."""
    services = await serve(nursery, api_max_connections_per_address=4)
    with trio.fail_after(BOUND_S):
        async with AsyncExitStack() as stack:
            idle = []
            for _ in range(4):   # kept alive after an answer: idle
                stream = await stack.enter_async_context(await connect(services.api_url))
                await stream.send_all(request())
                await read_response(stream, bytearray())
                idle.append(stream)
            # a fifth from the same address is served; the longest-idle one is closed for it
            answer = await exchange(services.api_url, request("/api/v1/health",
                                                              "Connection: close"))
            assert answer.startswith(b"HTTP/1.1 200 "), answer[:100]
            assert await until_closed(idle[0]) == b""
            busy = []
            for _ in range(4):   # requests whose bodies are still on their way: busy
                stream = await stack.enter_async_context(await connect(services.api_url))
                await stream.send_all(request("/api/v1/sceau/activate", "Content-Length: 30",
                                              method="POST", body=b"{"))
                busy.append(stream)
            await trio.sleep(0.5)
            answer = await exchange(services.api_url, request())
            head, _, body = answer.partition(b"\r\n\r\n")
            json_error(head, body, 503, "too_many_connections")
            answer = await exchange(services.api_url, request("/api/v1/health",
                                                              "Connection: close"),
                                    local="127.0.0.2")   # another address: served
            assert answer.startswith(b"HTTP/1.1 200 "), answer[:100]


async def test_the_openapi_document_and_docs_page_are_built_once(autojump_clock, nursery):
    """Finding 10: /openapi.json and /docs were rebuilt on every request (19 ms of CPU each, no
    session needed). Built on first use, then served from memory."""
    services = await serve(nursery)
    app = create_app(services.api_input)
    provider = app.extensions["QUART_SCHEMA"].openapi_provider
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app),
                                 base_url="http://127.0.0.1") as c:
        first, second = (await c.get("/openapi.json")), (await c.get("/openapi.json"))
        assert first.status_code == 200 and first.content == second.content
        assert first.json()["openapi"].startswith("3.")
        assert provider.schema() is provider.schema()   # one document, not one per request
        docs = [await c.get("/docs") for _ in range(2)]
        assert docs[0].status_code == 200 and docs[0].text == docs[1].text
        assert provider.docs_page() is provider.docs_page()


async def test_an_eof_waits_for_the_response_being_sent(autojump_clock, nursery):
    """Finding 11: Hypercorn's close sends EOF outside its send lock, and trio's ``send_eof``
    holds the stream across a checkpoint: a response sent meanwhile raised BusyResourceError
    (or the EOF did, and the close cut the response). The fenced stream sends one at a time:
    the client gets the whole response, then the EOF; a send after the EOF is the broken
    stream Hypercorn handles."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    with trio.fail_after(BOUND_S):
        client = await trio.open_tcp_stream("127.0.0.1", port)
        accepted = hyperworker._WatchedStream(await listeners[0].accept())
        payload = b"x" * (4 << 20)   # more than the kernel buffers: the send blocks
        received = bytearray()

        async def read_all() -> None:
            await trio.sleep(1)   # the send is in progress, blocked, when the EOF comes
            while chunk := await client.receive_some(1 << 16):
                received.extend(chunk)

        async with trio.open_nursery() as tasks:
            tasks.start_soon(accepted.send_all, payload)
            await trio.sleep(0.1)
            tasks.start_soon(read_all)
            await accepted.send_eof()   # waits for the send: no BusyResourceError
        assert bytes(received) == payload   # whole, then EOF

        # the other order: the EOF starting, a send landing around its checkpoint (which task
        # runs first is the scheduler's): sent before the EOF, or the broken stream, never busy
        client2 = await trio.open_tcp_stream("127.0.0.1", port)
        accepted2 = hyperworker._WatchedStream(await listeners[0].accept())
        async with trio.open_nursery() as tasks:
            tasks.start_soon(accepted2.send_eof)
            await trio.lowlevel.checkpoint()
            try:
                await accepted2.send_all(b"late")
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        assert await until_closed(client2) in (b"", b"late")
        for stream in (client, client2, accepted, accepted2):
            await stream.aclose()
    for listener in listeners:
        await listener.aclose()


async def test_the_probe_port_of_the_other_roles_has_the_same_bounds(autojump_clock, nursery):
    """The engine's and ws roles' API_PORT (health, /metrics) runs on the same connection shell:
    no HTTP/2, no CL + TE, no WebSocket."""

    async def checks() -> dict[str, str]:
        return {"engine": "ok"}

    app = probes.ProbesApp("engine", lambda: b"", checks, dict)
    url = await nursery.start(probes.serve_probes, app, "127.0.0.1", 0)
    with trio.fail_after(BOUND_S):
        client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        client.initiate_connection()
        assert (await exchange(url, client.data_to_send())).startswith(b"HTTP/1.1 400 ")
        answer = await exchange(url, request("/api/v1/health", "Content-Length: 4",
                                             "Transfer-Encoding: chunked", method="POST",
                                             body=b"0\r\n\r\n" + request()))
        assert answer.startswith(b"HTTP/1.1 400 ") and answer.count(b"HTTP/1.1 ") == 1, answer
        answer = await exchange(url, request("/api/v1/health", *UPGRADE_WS))
        head, _, body = answer.partition(b"\r\n\r\n")
        json_error(head, body, 404, "not_found")
        answer = await exchange(url, request("/api/v1/health", "Connection: close"))
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
