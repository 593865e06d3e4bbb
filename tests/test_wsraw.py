"""The internals the fast path relies on (see the docstring of ``broadcaster/wsraw.py``).

If one of these fails after an upgrade of trio-websocket or wsproto, the fan-out may cut a frame
with a control frame or send frames wsproto does not know about: fix wsraw before anything else.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio_websocket
import wsproto
from wsproto.frame_protocol import FrameProtocol

from atom_actors.broadcaster import wsraw
from atom_actors.broadcaster.wsraw import RawStream, message_bytes, open_request

HANDSHAKE = (b"GET /ws/swarm HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
             b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
             b"Sec-WebSocket-Version: 13\r\n"
             b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n")


class RecordingRaw(RawStream):
    """A RawStream that keeps every ``send_all`` trio-websocket makes."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[bytes] = []

    async def send_all(self, data) -> None:
        self.calls.append(bytes(data))
        await super().send_all(data)


@asynccontextmanager
async def tcp_pair(rcvbuf: int | None = None) -> AsyncIterator[tuple[trio.SocketStream,
                                                                   trio.SocketStream]]:
    """(server side, client side) of one loopback TCP connection; the client's receive buffer
    can be made small so that a client that does not read fills up fast."""
    async with (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0] as listener:
        sock = trio.socket.socket()
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        await sock.connect(listener.socket.getsockname())
        server = await listener.accept()
    async with server, trio.SocketStream(sock) as client:
        yield server, client


async def read_until(stream: trio.SocketStream, marker: bytes) -> tuple[bytes, bytes]:
    buffer = b""
    while marker not in buffer:
        chunk = await stream.receive_some()
        assert chunk, buffer
        buffer += chunk
    head, _, rest = buffer.partition(marker)
    return head, rest


def parse_frames(data: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """Server frames (unmasked) in ``data``: [(first byte, payload)], and the incomplete rest."""
    frames = []
    while len(data) >= 2:
        first, n = data[0], data[1] & 0x7F
        assert data[1] & 0x80 == 0, "a server frame must not be masked"
        offset = 2
        if n == 126:
            if len(data) < 4:
                break
            n, offset = struct.unpack_from("!H", data, 2)[0], 4
        elif n == 127:
            if len(data) < 10:
                break
            n, offset = struct.unpack_from("!Q", data, 2)[0], 10
        if len(data) < offset + n:
            break
        frames.append((first, data[offset:offset + n]))
        data = data[offset + n:]
    return frames, data


async def accepted(nursery: trio.Nursery, raw: RawStream, client: trio.SocketStream,
                   ) -> tuple[trio_websocket.WebSocketConnection, bytes, bytes]:
    await client.send_all(HANDSHAKE)
    request = await open_request(nursery, raw, timeout_s=5, max_message_size=4096)
    assert request is not None
    conn = await request.accept()
    head, rest = await read_until(client, b"\r\n\r\n")
    return conn, head, rest


def test_the_pinned_versions_are_the_ones_checked():
    minor = ".".join(trio_websocket.__version__.split(".")[:2])
    assert minor in wsraw.TESTED_TRIO_WEBSOCKET, (
        f"trio-websocket {trio_websocket.__version__}: re-check broadcaster/wsraw.py's assumptions "
        "and add its minor version to TESTED_TRIO_WEBSOCKET")
    assert hasattr(trio_websocket, "wrap_server_stream")


@pytest.mark.parametrize("size", [0, 1, 125, 126, 4216, 65535, 65536, 70000])
@pytest.mark.parametrize("text", [False, True])
def test_message_bytes_frame_like_wsproto(size, text):
    payload = "é" * (size // 2) if text else bytes(range(256)) * (size // 256) + bytes(size % 256)
    wsproto_bytes = bytes(FrameProtocol(client=False, extensions=[]).send_data(payload, fin=True))
    assert message_bytes(payload) == wsproto_bytes


async def test_trio_websocket_writes_one_event_per_send_all(autojump_clock, nursery):
    async with tcp_pair() as (server, client):
        raw = RecordingRaw(server, stall_timeout_s=5)
        with trio.fail_after(10):
            conn, head, rest = await accepted(nursery, raw, client)
            assert head.startswith(b"HTTP/1.1 101")
            # permessage-deflate was offered and is declined: frames go out as built.
            assert b"sec-websocket-extensions" not in head.lower()
            assert len(raw.calls) == 1 and raw.calls[0].startswith(b"HTTP/1.1 101")
            for message in ("hello", b"\x00" * 4216, "x" * 70000):
                await conn.send_message(message)
                assert raw.calls[-1] == message_bytes(message)
            nursery.start_soon(conn.ping, b"1234")
            await trio.testing.wait_all_tasks_blocked()
            assert raw.calls[-1] == b"\x89\x041234"
            nursery.start_soon(conn.aclose, 1001)
            await trio.testing.wait_all_tasks_blocked()
            assert raw.calls[-1][0] == wsraw.OP_CLOSE and raw.close_sent
            assert len(raw.calls) == 6
            assert raw.try_write(message_bytes(b"late")) == wsraw.BUSY, "no data after a close"


async def test_fast_path_never_cuts_a_message_with_a_control_frame(autojump_clock, nursery):
    async with tcp_pair(rcvbuf=4096) as (server, client):
        raw = RawStream(server, stall_timeout_s=30)
        with trio.fail_after(60):
            conn, _, data = await accepted(nursery, raw, client)
            frames = [message_bytes(bytes([i]) * 4216) for i in range(200)]
            # The client does not read: the kernel takes some frames, then a tail is left.
            written = 0
            while (done := raw.try_write(frames[written])) == wsraw.DONE:
                written += 1
            assert done == wsraw.STARTED
            written += 1
            assert raw.behind and raw.try_write(frames[written]) == wsraw.BUSY
            # trio-websocket's ping waits behind the tail instead of cutting into it.
            nursery.start_soon(conn.ping, b"ping")
            await trio.testing.wait_all_tasks_blocked()
            queue = list(frames[written:written + 3])
            nursery.start_soon(raw.send_from, lambda: queue.pop(0) if queue else None)
            while len(parse_frames(data)[0]) < written + 4:
                data += await client.receive_some()
            got, left = parse_frames(data)
    assert left == b""
    kinds = [first for first, _ in got]
    assert kinds.count(0x89) == 1
    binary = [payload for first, payload in got if first == 0x82]
    assert binary == [f[4:] for f in frames[:written + 3]], "every frame arrives whole, in order"
    assert kinds.index(0x89) >= written, "the ping went out after the frame it waited for"


async def test_a_write_without_progress_stalls_the_stream(autojump_clock, nursery):
    async with tcp_pair(rcvbuf=4096) as (server, client):
        raw = RawStream(server, stall_timeout_s=2)
        with trio.fail_after(30):
            await accepted(nursery, raw, client)
            start = trio.current_time()
            with pytest.raises(trio.BrokenResourceError):
                await raw.send_from(iter([b"\x82\x00" * 200_000, None]).__next__)
            assert 2 <= trio.current_time() - start < 3
            assert raw.stalled and raw.closed and raw.ended.is_set()
            assert raw.try_write(b"x") == wsraw.BUSY   # nothing more goes to a dead stream


async def test_open_request_gives_up_on_garbage_and_on_silence(autojump_clock, nursery):
    with trio.fail_after(30):
        async with tcp_pair() as (server, client):
            raw = RawStream(server, stall_timeout_s=5)
            await client.send_all(b"\x16\x03\x01\x02\x00garbage that is not HTTP\r\n\r\n")
            start = trio.current_time()
            assert await open_request(nursery, raw, timeout_s=5, max_message_size=4096) is None
            assert trio.current_time() - start < 1, "garbage is dropped at once, not at the timeout"
        async with tcp_pair() as (server, client):
            raw = RawStream(server, stall_timeout_s=5)
            start = trio.current_time()
            assert await open_request(nursery, raw, timeout_s=5, max_message_size=4096) is None
            assert trio.current_time() - start == pytest.approx(5)


def test_wsproto_keeps_no_state_across_whole_messages():
    connection = wsproto.Connection(wsproto.ConnectionType.SERVER)
    before = connection.send(wsproto.events.TextMessage(data="a"))
    connection.send(wsproto.events.BytesMessage(data=b"b"))
    assert connection.send(wsproto.events.TextMessage(data="a")) == before == message_bytes("a")
