"""The API's connections as a hostile client meets them (issue 13): raw sockets on free ports.

In-process tests run the real tree (``app.serve``) on virtual time: Hypercorn's timers and ours
read trio's clock, so "closed after 5 s idle" takes no real time. The descriptor-exhaustion test
runs ``atom serve`` in a subprocess under ``prlimit``.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
from contextlib import AsyncExitStack
from functools import partial
from importlib.metadata import version
from urllib.parse import urlsplit

import httpx
import pytest
import trio
import trio.testing
from trio_websocket import open_websocket_url

from atom_actors import app as tree
from atom_actors.api import hyperworker, server
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
