"""L'Essaim over real WebSockets on loopback: the whole app in the test's nursery, real clients.

Time is virtual (``autojump_clock``); every test is bounded by ``trio.fail_after(BOUND_S)``.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import struct
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
import trio
import trio_websocket
from trio_websocket import ConnectionClosed

from atom_actors import app
from atom_actors.broadcaster import server as broadcaster_server
from atom_actors.catalog import CATALOG
from atom_actors.broadcaster import Broadcaster
from atom_actors.bus import MemoryBus
from atom_actors.engine import Engine
from atom_actors.protocol import Q16_RANGE, DeltaDecoder, Frame, decode_binary

from .atom_process import ATOM, atom_env
from .conftest import make_settings
from .servers import free_port
from .test_wsraw import parse_frames

# A bound on every test. It is on the virtual clock: a test stuck waiting for real I/O that will
# never come is jumped to it and fails at once, instead of hanging.
BOUND_S = 120


class _AnyText:
    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and bool(other)


ANY_TEXT = _AnyText()


@pytest.fixture
async def serve(nursery: trio.Nursery) -> Callable:
    """``await serve(**settings)`` starts the app (engine and broadcaster) on free ports."""
    started: list[app.Services] = []

    async def start(**overrides: object) -> app.Services:
        overrides = {"ws_port": 0, "api_port": 0, "ws_require_session": "false", **overrides}
        services = await nursery.start(app.serve, make_settings(**overrides))
        started.append(services)
        return services

    yield start
    for services in started:
        assert services.broadcaster.stats.errors == 0, "a connection failed unexpectedly (see log)"


@asynccontextmanager
async def open_websocket_url(url: str, extra_headers: list[tuple[bytes, bytes]] | None = None
                             ) -> AsyncIterator[trio_websocket.WebSocketConnection]:
    """trio-websocket's client on a TCP stream this test owns and closes: its own
    ``open_websocket_url`` leaves the socket open when the server ends the connection."""
    parts = urlsplit(url)
    resource = parts.path + (f"?{parts.query}" if parts.query else "")
    async with await trio.open_tcp_stream(parts.hostname, parts.port) as stream, \
            trio.open_nursery() as nursery:
        ws = await trio_websocket.wrap_client_stream(
            nursery, stream, f"{parts.hostname}:{parts.port}", resource,
            extra_headers=extra_headers)
        try:
            yield ws
        finally:
            with trio.move_on_after(1):
                await ws.aclose()
            nursery.cancel_scope.cancel()


async def next_frame(ws: trio_websocket.WebSocketConnection) -> bytes | dict:
    """The next frame, skipping events; binary frames as bytes, JSON frames parsed."""
    while True:
        message = await ws.get_message()
        if isinstance(message, bytes):
            return message
        parsed = json.loads(message)
        if parsed["type"] == "frame":
            return parsed


async def raw_subscribe(port: int, query: str = "", rcvbuf: int | None = None,
                        headers: bytes = b"", path: str = "/ws/swarm", host: str = "127.0.0.1",
                        ) -> tuple[trio.SocketStream, bytes, bytes]:
    """A hand-made WebSocket client: returns the stream, the HTTP response head and what followed.

    (trio-websocket's own client leaks its socket when a handshake is refused, so refusals are
    tested with this one.)"""
    sock = trio.socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    await sock.connect(("127.0.0.1", port))
    stream = trio.SocketStream(sock)
    await stream.send_all(
        b"GET " + path.encode() + query.encode() + b" HTTP/1.1\r\nHost: " + host.encode() + b"\r\n"
        b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" + headers + b"\r\n")
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        chunk = await stream.receive_some()
        assert chunk, buffer
        buffer += chunk
    head, _, rest = buffer.partition(b"\r\n\r\n")
    return stream, head, rest


async def refusal(port: int, target: str, headers: list[tuple[bytes, bytes]] = (),
                  host: str = "127.0.0.1") -> tuple[int, dict | None]:
    """Open a handshake; (HTTP status, JSON body) of a refusal, or (101, None) if accepted."""
    path, _, query = target.partition("?")
    extra = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
    stream, head, body = await raw_subscribe(port, "?" + query if query else "", headers=extra,
                                             path=path, host=host)
    async with stream:
        status = int(head.split(b" ", 2)[1])
        if status == 101:
            return status, None
        assert b"content-type: application/json" in head.lower()
        while chunk := await stream.receive_some():   # the server closes after the body
            body += chunk
        return status, json.loads(body)


async def test_hello_matches_the_engine(autojump_clock, serve):
    services = await serve()
    assert services.ws_url.startswith("ws://127.0.0.1:") and services.ws_url.endswith("/ws/swarm")
    assert f"ws {services.ws_url}" in services.describe()
    with trio.fail_after(BOUND_S):
        async with open_websocket_url(services.ws_url + "?encoding=q16&fps=30") as ws:
            hello = json.loads(await ws.get_message())
            roster = services.engine.roster()
    assert {k: hello[k] for k in ("type", "protocol", "agents", "tick_hz", "fps", "encoding")} == {
        "type": "hello", "protocol": 1, "agents": 350, "tick_hz": 60, "fps": 30, "encoding": "q16"}
    assert hello["q16_range"] == Q16_RANGE
    assert hello["spheres"] == [{"name": s.name, "count": s.count, "first_agent": s.first,
                                 "color": s.color} for s in CATALOG.spheres]
    assert hello["roster"] == roster and len(roster) == 350
    assert all("position" not in agent for agent in hello["roster"])


async def test_f32_frames_parse_with_every_seq_in_order(autojump_clock, serve):
    services = await serve()
    with trio.fail_after(BOUND_S):
        async with open_websocket_url(services.ws_url) as ws:
            json.loads(await ws.get_message())
            frames = [decode_binary(await next_frame(ws)) for _ in range(120)]
    seqs = [seq for seq, _, _ in frames]
    assert seqs == list(range(seqs[0], seqs[0] + 120))
    assert all(positions.shape == (350, 3) for _, _, positions in frames)
    times = np.array([t for _, t, _ in frames])
    assert np.allclose(np.diff(times), 1 / 60, atol=1e-6)


async def test_q16_and_json_frames_agree_with_f32(autojump_clock, serve):
    services = await serve()
    got: dict[str, dict[int, np.ndarray]] = {"f32": {}, "q16": {}, "json": {}}

    async def subscribe(encoding: str) -> None:
        async with open_websocket_url(f"{services.ws_url}?encoding={encoding}") as ws:
            assert json.loads(await ws.get_message())["encoding"] == encoding
            for _ in range(60):
                frame = await next_frame(ws)
                if encoding == "json":
                    assert isinstance(frame, dict) and frame.keys() == {"type", "seq", "t", "positions"}
                    got[encoding][frame["seq"]] = np.array(frame["positions"])
                else:
                    seq, _, positions = decode_binary(frame)
                    got[encoding][seq] = positions

    with trio.fail_after(BOUND_S):
        async with trio.open_nursery() as clients:
            for encoding in got:
                clients.start_soon(subscribe, encoding)
    common = set(got["f32"]) & set(got["q16"]) & set(got["json"])
    assert len(common) >= 50
    for seq in common:
        f32 = got["f32"][seq]
        assert got["q16"][seq].shape == got["json"][seq].shape == (350, 3)
        assert np.abs(got["q16"][seq] - f32).max() <= Q16_RANGE / 32767
        assert np.abs(got["json"][seq] - f32).max() <= 1e-4 + 1e-6


async def test_fps_is_a_decimation_of_the_tick(autojump_clock, serve):
    services = await serve()
    counts: dict[int, list[int]] = {}

    async def subscribe(fps: int) -> None:
        async with open_websocket_url(f"{services.ws_url}?fps={fps}") as ws:
            assert json.loads(await ws.get_message())["fps"] == fps
            seqs = counts[fps] = []
            with trio.move_on_after(2.0):
                while True:
                    seqs.append(decode_binary(await next_frame(ws))[0])

    with trio.fail_after(BOUND_S):
        async with trio.open_nursery() as clients:
            for fps in (60, 15, 1):
                clients.start_soon(subscribe, fps)
    assert abs(len(counts[60]) - 120) <= 1
    assert abs(len(counts[15]) - 30) <= 1 and set(np.diff(counts[15])) == {4}
    assert len(counts[1]) in (2, 3) and set(np.diff(counts[1])) == {60}


@pytest.mark.parametrize("target, status, code", [
    ("/ws/other", 404, "not_found"),
    ("/ws/swarm?encoding=f64", 400, "bad_parameter"),
    ("/ws/swarm?fps=7", 400, "bad_parameter"),
    ("/ws/swarm?fps=0", 400, "bad_parameter"),
    ("/ws/swarm?fps=abc", 400, "bad_parameter"),
    ("/ws/swarm?fps=30&fps=60", 400, "bad_parameter"),
])
async def test_bad_handshakes_are_refused_with_their_status(autojump_clock, serve, target, status,
                                                            code):
    services = await serve()
    with trio.fail_after(BOUND_S):
        got, body = await refusal(services.broadcaster.port, target)
    assert got == status
    assert body["error"] == code and body["detail"]
    assert services.broadcaster.stats.refused == {status: 1}


@pytest.mark.parametrize("origin, allowed", [
    ("https://atom-interface.vercel.app", True),
    ("https://atom-interface.vercel.app/", True),
    ("http://localhost:{api}", True),      # the API's own (bound) origin, under its loopback names
    ("http://127.0.0.1:{api}", True),
    ("https://evil.example", False),
    ("http://localhost:{other}", False),
    ("null", False),
])
async def test_origin_is_checked(autojump_clock, serve, origin, allowed):
    services = await serve()   # both on free ports: never the shared 8000/8001
    api_port = int(services.api_url.rsplit(":", 1)[1])
    origin = origin.format(api=api_port, other=api_port + 1 if api_port < 65535 else 1)
    with trio.fail_after(BOUND_S):
        status, body = await refusal(services.broadcaster.port, "/ws/swarm",
                                     [(b"Origin", origin.encode())])
    if allowed:
        assert status == 101
    else:
        assert status == 403 and body["error"] == "origin_forbidden"


@pytest.mark.parametrize("origin, allowed", [
    ("https://atom.example", True),       # the site's own page, behind a proxy that keeps Host
    ("https://atom.example:8443", False),
    ("https://evil.example", False),
])
async def test_a_page_of_the_site_itself_is_allowed(autojump_clock, serve, origin, allowed):
    services = await serve(allowed_hosts="atom.example")
    headers = [(b"Origin", origin.encode())]
    with trio.fail_after(BOUND_S):
        status, _ = await refusal(services.broadcaster.port, "/ws/swarm", headers,
                                  host="atom.example")
    assert status == (101 if allowed else 403)


@pytest.mark.parametrize("host", ["evil.example:{port}", "evil.example", "localhost.evil:{port}"])
async def test_a_rebound_host_is_refused_400(autojump_clock, serve, host):
    """Issue 13 finding 2 (DNS rebinding): a page on evil.example, re-pointed at 127.0.0.1, sends
    its own name as Host and Origin; the Host is not on ALLOWED_HOSTS, so no stream."""
    services = await serve()
    port = services.broadcaster.port
    host = host.format(port=port)
    with trio.fail_after(BOUND_S):
        status, body = await refusal(port, "/ws/swarm", [(b"Origin", f"http://{host}".encode())],
                                     host=host)
    assert (status, body) == (400, {"error": "host_not_allowed", "detail": ANY_TEXT})
    assert "evil" not in body["detail"]


async def test_the_api_origin_bound_later_is_allowed(autojump_clock, serve):
    services = await serve()
    services.broadcaster.allow_origin("http://127.0.0.1:43210")
    with trio.fail_after(BOUND_S):
        async with open_websocket_url(services.ws_url,
                                      extra_headers=[(b"Origin", b"http://localhost:43210")]) as ws:
            assert json.loads(await ws.get_message())["type"] == "hello"


async def test_sessions_are_required_when_configured(autojump_clock, serve):
    services = await serve(ws_require_session="true")
    session = await services.sessions.activate(2000)
    revoked = await services.sessions.activate(2000)
    await services.sessions.revoke(revoked.token)
    port = services.broadcaster.port
    with trio.fail_after(BOUND_S):
        for target, headers, code in [
            ("/ws/swarm", [], "sceau_session_required"),
            ("/ws/swarm?session=", [], "sceau_session_required"),
            ("/ws/swarm?session=v1.forged.token", [], "sceau_session_invalid"),
            (f"/ws/swarm?session={revoked.token}", [], "sceau_session_invalid"),
            ("/ws/swarm", [(b"X-Sceau-Session", b"nope")], "sceau_session_invalid"),
        ]:
            assert await refusal(port, target, headers) == (401, {
                "error": code, "detail": ANY_TEXT})
        async with open_websocket_url(f"{services.ws_url}?session={session.token}") as ws:
            assert json.loads(await ws.get_message())["type"] == "hello"
        async with open_websocket_url(services.ws_url, extra_headers=[
                (b"X-Sceau-Session", session.token.encode())]) as ws:
            assert json.loads(await ws.get_message())["type"] == "hello"
    assert services.broadcaster.stats.refused == {401: 5}


async def test_the_connection_limit_answers_503_and_frees_up(autojump_clock, serve):
    services = await serve(ws_max_connections=2)
    url = services.ws_url
    with trio.fail_after(BOUND_S):
        async with open_websocket_url(url) as first, open_websocket_url(url) as second:
            await first.get_message()
            await second.get_message()
            status, body = await refusal(services.broadcaster.port, "/ws/swarm")
            assert status == 503 and body["error"] == "too_many_subscribers"
            assert services.broadcaster.stats.clients == 2
        await trio.sleep(0.1)
        async with open_websocket_url(url) as third:
            assert json.loads(await third.get_message())["type"] == "hello"


async def test_permessage_deflate_is_declined(autojump_clock, serve):
    services = await serve()
    with trio.fail_after(BOUND_S):
        stream, head, _ = await raw_subscribe(
            services.broadcaster.port,
            headers=b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n")
        async with stream:
            assert head.startswith(b"HTTP/1.1 101")
            assert b"sec-websocket-extensions" not in head.lower()


async def test_a_stalled_client_does_not_slow_a_fast_one(autojump_clock, serve):
    """A client that stops reading fills its buffers, holds only the newest frame, and is closed
    after WS_STALL_TIMEOUT_S; meanwhile the fast client misses nothing."""
    services = await serve(ws_stall_timeout_s=2)
    stats = services.broadcaster.stats
    with trio.fail_after(BOUND_S):
        stalled = await read_hello_then_stall(services.broadcaster.port)
        async with stalled, open_websocket_url(services.ws_url) as fast:
            await fast.get_message()
            start = trio.current_time()
            seqs = []
            while trio.current_time() - start < 5:
                seqs.append(decode_binary(await next_frame(fast))[0])
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
            assert len(seqs) >= 5 * 60 - 1
            assert stats.closed_stall == 1 and stats.clients == 1
            assert stats.frames_dropped > 0
            # The stalled client, reading at last, finds a few buffered frames, then a reset.
            held = 0
            with pytest.raises(trio.BrokenResourceError):
                while chunk := await stalled.receive_some():
                    held += len(chunk)
            assert held < 200_000, "the kernel buffers are all it ever held"


async def read_hello_then_stall(port: int, query: str = "") -> trio.SocketStream:
    """A subscriber that reads its hello (about 40 KB: the 350-agent roster), then nothing."""
    stream, head, rest = await raw_subscribe(port, query, rcvbuf=4096)
    assert head.startswith(b"HTTP/1.1 101")
    length = 0
    while len(rest) < 4 or len(rest) < 4 + (length := struct.unpack_from("!H", rest, 2)[0]):
        rest += await stream.receive_some()
    assert rest[0] == 0x81 and json.loads(rest[4:4 + length])["type"] == "hello"
    return stream


async def test_a_client_that_cannot_take_the_events_is_cut_off(autojump_clock, serve):
    """Events are never dropped for a slow client: past EVENT_BACKLOG_BYTES waiting, it is
    closed instead (it reconnects and gets a fresh roster)."""
    services = await serve(ws_stall_timeout_s=30)
    stats = services.broadcaster.stats
    with trio.fail_after(BOUND_S):
        stalled = await read_hello_then_stall(services.broadcaster.port)
        async with stalled, open_websocket_url(services.ws_url + "?fps=1") as fast:
            await fast.get_message()
            received = 0

            async def keep_up() -> None:
                nonlocal received
                while True:
                    message = await fast.get_message()
                    received += isinstance(message, str) and '"agent.frequency"' in message

            async with trio.open_nursery() as reading:
                reading.start_soon(keep_up)
                for tick in range(4):
                    for agent in range(1000):
                        services.engine.emit({"type": "event", "event": "agent.frequency",
                                              "agent": agent, "frequency": 432.0 + tick})
                    await trio.sleep(1 / 60)
                await trio.sleep(2)
                reading.cancel_scope.cancel()
            assert stats.closed_lagging == 1 and stats.clients == 1 and stats.closed_stall == 0
            assert received == 4000, "the client that keeps up gets every event"
    assert "closed stall 0 oversize 0 lagging 1" in stats.summary()


async def test_keepalive_pings_cut_off_a_client_that_never_answers(autojump_clock, serve):
    services = await serve(ws_stall_timeout_s=2)
    stats = services.broadcaster.stats
    interval = broadcaster_server.PING_INTERVAL_S
    with trio.fail_after(BOUND_S):
        mute, head, _ = await raw_subscribe(services.broadcaster.port)
        assert head.startswith(b"HTTP/1.1 101")
        async with mute, open_websocket_url(services.ws_url + "?fps=1") as polite, \
                trio.open_nursery() as reading:
            frames = 0

            async def answer_pings() -> None:   # trio-websocket does, while its app reads
                nonlocal frames
                while True:
                    frames += isinstance(await polite.get_message(), bytes)

            reading.start_soon(answer_pings)
            start, buffer, kinds = trio.current_time(), b"", set()
            with contextlib.suppress(trio.BrokenResourceError):   # reads all, answers nothing
                while chunk := await mute.receive_some():
                    frames_read, buffer = parse_frames(buffer + chunk)
                    kinds |= {first for first, _ in frames_read}
            assert kinds == {0x81, 0x82, 0x89}, "hello, frames, and a ping"
            assert interval + 2 <= trio.current_time() - start <= interval + 3
            assert stats.closed_stall == 1 and stats.clients == 1
            await trio.sleep(interval * 2)
            assert stats.clients == 1 and frames >= 3 * interval - 1, "the one that answers stays"
            reading.cancel_scope.cancel()


async def test_a_slow_client_gets_the_newest_frame_not_a_backlog(autojump_clock, serve):
    services = await serve(ws_stall_timeout_s=10)
    with trio.fail_after(BOUND_S):
        async with open_websocket_url(services.ws_url) as slow:
            await slow.get_message()
            first = decode_binary(await next_frame(slow))[0]
            await trio.sleep(3)   # 180 frames go by while the client reads nothing
            seqs = [decode_binary(await next_frame(slow))[0] for _ in range(60)]
    gaps = np.diff([first, *seqs])
    jump = int(np.argmax(gaps))
    assert gaps[jump] > 100, "the frames it missed were dropped, not queued"
    assert jump < 50, "what it read before the jump (the kernel's buffers) is short"
    assert set(gaps[jump + 1:]) == {1} and seqs[-1] - first >= 180, "then it is live again"
    assert services.broadcaster.stats.frames_dropped > 100
    assert services.broadcaster.stats.closed_stall == 0


async def test_an_oversize_message_closes_only_its_sender(autojump_clock, serve):
    services = await serve()
    with trio.fail_after(BOUND_S):
        async with open_websocket_url(services.ws_url) as talker, \
                open_websocket_url(services.ws_url) as listener:
            await talker.get_message()
            await listener.get_message()
            await talker.send_message("x" * 4096)   # at the limit: fine
            await talker.send_message(b"x" * 4097)
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await talker.get_message()
            assert closed.value.reason.code == 1009
            seqs = [decode_binary(await next_frame(listener))[0] for _ in range(60)]
            assert seqs == list(range(seqs[0], seqs[0] + 60))
    assert services.broadcaster.stats.closed_oversize == 1


async def test_events_arrive_when_the_engine_disperses(autojump_clock, serve):
    services = await serve()
    with trio.fail_after(BOUND_S):
        async with open_websocket_url(services.ws_url + "?fps=1") as ws:
            await ws.get_message()
            result = await services.engine.disperse("partial", "transport")
            events = []
            with trio.move_on_after(0.5):
                while True:
                    message = await ws.get_message()
                    if isinstance(message, str):
                        events.append(json.loads(message))
    assert all(e["type"] == "event" for e in events)
    dispersal = [e for e in events if e["event"] == "swarm.dispersal"]
    assert dispersal == [{"type": "event", "event": "swarm.dispersal", "level": "partial",
                          "sphere": "transport", "count": 10, "command_id": result["command_id"]}]
    statuses = [e for e in events if e["event"] == "agent.status"]
    assert len(statuses) == 10 and {e["status"] for e in statuses} == {"dispersed"}
    assert {e["agent"] for e in statuses} <= set(CATALOG.by_name["transport"].agent_ids)


async def test_garbage_and_silent_connections_cost_nothing(autojump_clock, serve):
    services = await serve()
    stats = services.broadcaster.stats
    port = services.broadcaster.port
    with trio.fail_after(BOUND_S):
        async with open_websocket_url(services.ws_url) as ws:
            await ws.get_message()
            garbage = await trio.open_tcp_stream("127.0.0.1", port)
            silent = await trio.open_tcp_stream("127.0.0.1", port)
            half = await trio.open_tcp_stream("127.0.0.1", port)
            async with garbage, silent, half:
                await garbage.send_all(b"\x00\xff" * 3000 + b"\r\n\r\n")
                await half.send_all(b"GET /ws/swarm HTTP/1.1\r\nHost: x\r\n")   # never finished
                answer = b""
                with contextlib.suppress(trio.BrokenResourceError):   # reset: garbage was unread
                    while chunk := await garbage.receive_some():
                        answer += chunk
                assert answer == b"" or answer.startswith(b"HTTP/1.1 4")
                start = trio.current_time()
                assert await silent.receive_some() == b""
                assert await half.receive_some() == b""
                assert trio.current_time() - start <= broadcaster_server.HANDSHAKE_TIMEOUT_S
            assert stats.handshakes_failed == 3 and stats.clients == 1
            await trio.sleep(1)   # what it did not read while waiting is dropped; then live again
            seqs = [decode_binary(await next_frame(ws))[0] for _ in range(120)]
            assert seqs[-60:] == list(range(seqs[-60], seqs[-60] + 60))


async def read_all(stream: trio.abc.Stream) -> bytes:
    data = b""
    while chunk := await stream.receive_some():
        data += chunk
    return data


def busy_answer(data: bytes) -> dict:
    """The 503 JSON answer of a handshake refused before it was read."""
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 "), data[:200]
    assert b"content-type: application/json" in head.lower()
    return json.loads(body)


async def test_unfinished_handshakes_are_bounded_in_number(autojump_clock, serve):
    services = await serve(ws_max_connections=2)
    port = services.broadcaster.port
    with trio.fail_after(BOUND_S):
        silent = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(3)]
        try:
            await trio.testing.wait_all_tasks_blocked()
            start = trio.current_time()
            assert busy_answer(await read_all(silent[2])) == {
                "error": "too_many_handshakes", "detail": ANY_TEXT}
            assert trio.current_time() == start, "the one over the bound is answered at once"
            assert await silent[0].receive_some() == b""
            assert trio.current_time() - start == pytest.approx(
                broadcaster_server.HANDSHAKE_TIMEOUT_S, abs=0.1)
        finally:
            for stream in silent:
                await stream.aclose()
    assert services.broadcaster.stats.handshakes_failed == 3


async def open_from(address: str, port: int) -> trio.SocketStream:
    """A TCP connection to 127.0.0.1:``port`` from the loopback ``address`` (127.0.0.0/8)."""
    sock = trio.socket.socket()
    await sock.bind((address, 0))
    await sock.connect(("127.0.0.1", port))
    return trio.SocketStream(sock)


async def test_a_handshake_flood_from_one_address_locks_no_one_else_out(autojump_clock, serve):
    """Issue 13 finding 4: connections that never send their handshake, from one address, beyond
    what it may hold are answered 503 at once; a subscriber from another address is served."""
    services = await serve(ws_max_connections=40)
    port = services.broadcaster.port
    with trio.fail_after(BOUND_S):
        async with AsyncExitStack() as stack:
            flood = [await stack.enter_async_context(await open_from("127.0.0.1", port))
                     for _ in range(60)]
            await trio.testing.wait_all_tasks_blocked()
            share = services.broadcaster.pending.address_share
            assert share < 40
            for stream in flood[share:]:
                assert busy_answer(await read_all(stream))["error"] == "too_many_handshakes"
            stream, head, _ = await raw_subscribe(port)    # from 127.0.0.1 still: refused
            assert b" 503 " in head.split(b"\r\n")[0]
            await stream.aclose()
            other = await stack.enter_async_context(await open_from("127.0.0.2", port))
            await other.send_all(
                b"GET /ws/swarm HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
            answer = await other.receive_some()
            assert answer.startswith(b"HTTP/1.1 101 "), answer[:200]


async def test_shutdown_closes_every_subscriber_with_1001(autojump_clock, nursery):
    app_scope = trio.CancelScope()

    async def run_app(*, task_status=trio.TASK_STATUS_IGNORED) -> None:
        with app_scope:
            await app.serve(make_settings(ws_port=0, api_port=0, ws_require_session="false"),
                            task_status=task_status)

    with trio.fail_after(BOUND_S):
        services = await nursery.start(run_app)
        async with AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(open_websocket_url(services.ws_url))
                       for _ in range(3)]
            for ws in clients:
                await ws.get_message()
            app_scope.cancel()
            for ws in clients:
                with pytest.raises(ConnectionClosed) as closed:
                    while True:
                        await ws.get_message()
                assert closed.value.reason.code == 1001
    assert services.broadcaster.stats.errors == 0


# -- the delta stream (CONTRACT §4.1) ---------------------------------------------------------------

async def test_every_delta_frame_is_the_q16_frame_of_its_seq(autojump_clock, nursery):
    """Issue 11's scenario, on a broadcaster fed like a ``ws`` process (frames rebuilt from their
    f32 bytes off a bus): a total dispersal, a sphere crash and restart, a regroup, a seq that
    wraps past 2**32, an engine failover's seq jump, a subscriber at 20 fps and a slow one whose
    frames the newest-wins rule drops. Every frame each delta subscriber decodes equals, bit for
    bit, the q16 frame of the same seq."""
    settings = make_settings(ws_port=0, api_port=0, ws_require_session="false",
                             ws_stall_timeout_s=60)
    engine_bus, ws_bus = MemoryBus(), MemoryBus()
    engine = await nursery.start(Engine(settings, engine_bus).run)
    offset = 2**32 - 150   # the seq wraps 2.5 s in

    async def relay() -> None:
        nonlocal offset
        frames = engine_bus.subscribe_frames()
        while True:
            frame = await frames.receive()
            data = bytearray(frame.f32)
            struct.pack_into("<I", data, 4, (frame.seq + offset) % 2**32)
            ws_bus.publish_frame(Frame.from_bytes(bytes(data)))

    nursery.start_soon(relay)
    broadcaster = await nursery.start(Broadcaster(settings, ws_bus, engine, None).run)
    truth: dict[int, np.ndarray] = {}
    decoded: dict[str, list[tuple[int, np.ndarray]]] = {"delta": [], "delta20": [], "slow": []}
    keyframes: dict[str, int] = {}

    async def q16(task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with open_websocket_url(broadcaster.url + "?encoding=q16") as ws:
            await ws.get_message()
            task_status.started()
            while True:
                data = await next_frame(ws)
                truth[struct.unpack_from("<I", data, 4)[0]] = np.frombuffer(
                    data, "<i2", offset=16).reshape(350, 3)

    async def delta(name: str, query: str, task_status=trio.TASK_STATUS_IGNORED) -> None:
        decoder = DeltaDecoder()
        async with open_websocket_url(broadcaster.url + query) as ws:
            hello = json.loads(await ws.get_message())
            assert hello["encoding"] == "delta"
            task_status.started()
            try:
                while True:
                    seq, _, q = decoder.decode(await next_frame(ws))
                    decoded[name].append((seq, q.copy()))
            finally:
                keyframes[name] = decoder.keyframes

    async def slow(task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Reads its hello, then nothing for 8 s (its buffers fill), then everything."""
        decoder = DeltaDecoder()
        stream = await read_hello_then_stall(broadcaster.port, "?encoding=delta")
        async with stream:
            task_status.started()
            await trio.sleep(8)
            buffer = b""
            try:
                while chunk := await stream.receive_some():
                    frames, buffer = parse_frames(buffer + chunk)
                    for first, payload in frames:
                        if first == 0x82:
                            seq, _, q = decoder.decode(payload)
                            decoded["slow"].append((seq, q.copy()))
            finally:
                keyframes["slow"] = decoder.keyframes

    with trio.fail_after(BOUND_S):
        async with trio.open_nursery() as clients:
            await clients.start(q16)
            await clients.start(delta, "delta", "?encoding=delta")
            await clients.start(delta, "delta20", "?encoding=delta&fps=20")
            await clients.start(slow)
            await trio.sleep(0.5)
            assert (await engine.disperse("total"))["dispersed"] == 350
            await trio.sleep(2)
            engine.inject_crash("transport")
            await trio.sleep(1.5)
            await engine.regroup()
            await trio.sleep(2)
            offset += 10_000        # a new leader, further on
            await trio.sleep(4)
            clients.cancel_scope.cancel()

    stats = broadcaster.stats
    assert stats.frames_dropped > 0 and keyframes["slow"] >= 2, "the slow one lost frames"
    assert keyframes["delta"] == keyframes["delta20"] == 1, "the others needed only their first"
    for name, frames in decoded.items():
        seqs = [seq for seq, _ in frames]
        assert len(seqs) > {"delta": 500, "delta20": 170, "slow": 100}[name], (name, len(seqs))
        if name != "slow":   # (the slow one's frames around the wrap were dropped)
            assert min(seqs) < 100 and max(seqs) > 2**32 - 100, f"{name} saw the wrap"
        for seq, q in frames:
            assert seq in truth, (name, seq)
            assert np.array_equal(q, truth[seq]), f"{name}: frame {seq} differs from q16"
    gaps = set(np.diff(np.array([seq for seq, _ in decoded["delta20"]], dtype=np.int64)) % 2**32)
    assert 3 in gaps and gaps <= {3, 10_002, 10_003}, gaps
    far = max(np.abs(q.astype(int)).max() for _, q in decoded["delta"])
    assert far * Q16_RANGE / 32767 > 30, "the total dispersal is in the stream"


async def test_delta_is_smaller_than_q16_on_the_wire(autojump_clock, serve):
    services = await serve()
    sizes: dict[str, list[int]] = {"q16": [], "delta": []}

    async def subscribe(encoding: str) -> None:
        async with open_websocket_url(f"{services.ws_url}?encoding={encoding}") as ws:
            await ws.get_message()
            for _ in range(120):
                sizes[encoding].append(len(await next_frame(ws)))

    with trio.fail_after(BOUND_S):
        async with trio.open_nursery() as clients:
            for encoding in sizes:
                clients.start_soon(subscribe, encoding)
    assert set(sizes["q16"]) == {16 + 350 * 6}
    assert sizes["delta"][0] == 16 + 350 * 12, "a keyframe first"
    assert np.mean(sizes["delta"][1:]) < 600


async def test_a_delta_subscriber_that_talks_gets_the_same_treatment(autojump_clock, serve):
    """Whatever a client sends is read and dropped; over 4 KiB closes it (1009). The other delta
    subscriber of the group decodes on, undisturbed."""
    services = await serve()
    url = services.ws_url + "?encoding=delta"
    with trio.fail_after(BOUND_S):
        async with open_websocket_url(url) as talker, open_websocket_url(url) as listener:
            await talker.get_message()
            await listener.get_message()
            decoder = DeltaDecoder()
            decoder.decode(await next_frame(listener))
            await talker.send_message(b"\x01\x04" + bytes(100))   # looks like a keyframe: ignored
            await talker.send_message("x" * 4096)
            await talker.send_message(b"x" * 4097)
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await talker.get_message()
            assert closed.value.reason.code == 1009
            seqs = [decoder.decode(await next_frame(listener))[0] for _ in range(60)]
    assert seqs == list(range(seqs[0], seqs[0] + 60)) and decoder.keyframes == 1
    assert services.broadcaster.stats.closed_oversize == 1


# -- issue 24: fair shares ---------------------------------------------------------------------------

async def subscribe_from(stack: AsyncExitStack, address: str, port: int, query: str = "",
                         headers: bytes = b"") -> int:
    """A raw handshake from the loopback ``address``; its HTTP status. An accepted subscriber is
    kept open until ``stack`` closes."""
    stream = await stack.enter_async_context(await open_from(address, port))
    await stream.send_all(
        b"GET /ws/swarm" + query.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" + headers + b"\r\n")
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        chunk = await stream.receive_some()
        assert chunk, buffer
        buffer += chunk
    status = int(buffer.split(b" ", 2)[1])
    if status != 101:
        body = buffer.partition(b"\r\n\r\n")[2] + await read_all(stream)
        assert json.loads(body)["error"] == "too_many_subscribers", body
    return status


async def test_one_session_and_one_address_take_only_their_share(autojump_clock, serve):
    """Issue 24, finding 7: one session from one address held all 500 subscriber slots (fps 1,
    reading a frame a second). Now a session holds WS_MAX_PER_SESSION, an address
    WS_MAX_PER_ADDRESS; beyond, 503 before the handshake; others are served, and a closed
    subscriber gives its share back."""
    services = await serve(ws_require_session="true", ws_max_per_session=3, ws_max_per_address=5)
    port = services.broadcaster.port
    a, b, c = [(await services.sessions.activate(2000)).token for _ in range(3)]
    with trio.fail_after(BOUND_S):
        async with AsyncExitStack() as stack:
            assert [await subscribe_from(stack, "127.0.0.1", port, f"?fps=1&session={a}")
                    for _ in range(4)] == [101, 101, 101, 503]       # the session's share
            assert [await subscribe_from(stack, "127.0.0.1", port, f"?fps=1&session={b}")
                    for _ in range(3)] == [101, 101, 503]            # the address's share
            assert await subscribe_from(stack, "127.0.0.2", port, f"?fps=1&session={c}") == 101
            assert services.broadcaster.stats.refused == {503: 2}
        await trio.sleep(1)   # all closed: the shares are back
        async with AsyncExitStack() as stack:
            assert [await subscribe_from(stack, "127.0.0.1", port, f"?fps=1&session={a}")
                    for _ in range(3)] == [101, 101, 101]


async def test_behind_a_trusted_proxy_the_share_is_the_forwarded_addresss(autojump_clock, serve):
    """Issue 24, findings 7 and 8: behind TRUSTED_PROXY_HOPS the per-address share applies to
    the address the proxy forwarded; a peer not on TRUSTED_PROXIES is its own address, whatever
    it forwards."""
    services = await serve(ws_max_per_address=2, trusted_proxy_hops=1,
                           trusted_proxies="127.0.0.1")
    port = services.broadcaster.port

    def forwarded(address: str) -> bytes:
        return b"X-Forwarded-For: 198.51.100.9, " + address.encode() + b"\r\n"

    with trio.fail_after(BOUND_S):
        async with AsyncExitStack() as stack:
            assert [await subscribe_from(stack, "127.0.0.1", port, "?fps=1",
                                         forwarded("203.0.113.1")) for _ in range(3)] \
                == [101, 101, 503]                                   # the client behind it
            assert await subscribe_from(stack, "127.0.0.1", port, "?fps=1",
                                        forwarded("203.0.113.2")) == 101   # another client
            assert [await subscribe_from(stack, "127.0.0.3", port, "?fps=1",
                                         forwarded(f"203.0.113.{10 + i}")) for i in range(3)] \
                == [101, 101, 503]                                   # not a proxy: itself


PRLIMIT = shutil.which("prlimit")
NOFILE = 256


@pytest.mark.skipif(PRLIMIT is None, reason="prlimit (util-linux) is not installed")
async def test_a_flood_of_subscribers_under_a_low_descriptor_limit_leaves_others_served(tmp_path):
    """Issue 24, finding 4: under ``prlimit --nofile=256``, 244 subscribers used every
    descriptor and new REST and WebSocket clients got no answer at all. Now the subscribers
    have a share of the limit (said at start), one address a part of it: a flood from one
    address leaves REST and a subscriber from elsewhere served, and a flood from several is
    answered 503 beyond the share while REST is still served. (Real time: a subprocess.)"""
    api_port, ws_port = free_port(), free_port()
    env = atom_env(API_PORT=str(api_port), WS_PORT=str(ws_port), WS_REQUIRE_SESSION="false")
    host = env["API_HOST"]
    proc = await trio.lowlevel.open_process(
        [PRLIMIT, f"--nofile={NOFILE}:{NOFILE}", *ATOM, "serve"], env=env, cwd=str(tmp_path),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = bytearray()

    async def drain() -> None:
        while chunk := await proc.stderr.receive_some():
            stderr.extend(chunk)

    async def subscribe(stack: AsyncExitStack, address: str) -> int:
        sock = trio.socket.socket()
        await sock.bind((address, 0))
        await sock.connect((host, ws_port))
        stream = await stack.enter_async_context(trio.SocketStream(sock))
        await stream.send_all(
            b"GET /ws/swarm?fps=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        buffer = b""
        while b"\r\n\r\n" not in buffer:
            chunk = await stream.receive_some()
            assert chunk, buffer
            buffer += chunk
        return int(buffer.split(b" ", 2)[1])

    async def rest_answers() -> None:
        with trio.fail_after(10):
            async with httpx.AsyncClient(base_url=f"http://{host}:{api_port}") as c:
                assert (await c.get("/api/v1/health")).status_code == 200

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain)
            with trio.fail_after(30):
                while b"serving:" not in stderr:
                    assert proc.poll() is None, stderr.decode(errors="replace")
                    await trio.sleep(0.1)
            line = next(l for l in stderr.decode().splitlines() if "descriptors:" in l)
            assert line == ("atom: descriptors: 256 = subscribers 128, API connections 64, "
                            "pending handshakes 32, own needs 32"), line
            async with AsyncExitStack() as stack:
                with trio.fail_after(60):
                    flood = [await subscribe(stack, "127.0.0.1") for _ in range(300)]
                assert flood.count(101) == NOFILE // 4 and set(flood) == {101, 503}, flood
                await rest_answers()
                with trio.fail_after(10):
                    assert await subscribe(stack, "127.0.0.3") == 101
                with trio.fail_after(60):   # three more addresses: beyond the share, 503
                    more = [await subscribe(stack, f"127.0.0.{4 + i % 3}") for i in range(150)]
                assert set(more) == {101, 503} and flood.count(101) + more.count(101) + 1 <= 128
                await rest_answers()
            nursery.cancel_scope.cancel()
    finally:
        if proc.poll() is None:
            proc.terminate()
        with trio.move_on_after(10):
            await proc.wait()
        if proc.poll() is None:
            proc.kill()
    text = stderr.decode(errors="replace")
    assert "Traceback" not in text, text[-3000:]
