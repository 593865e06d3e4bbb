"""``atom watch``: where it connects, what it computes and shows, and its health probe.

The pure part is fed the messages a server sends; the probe runs as a user runs it, against a
real ``atom serve`` (see the end of this file).
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import trio
from rich.console import Console

from atom_actors.catalog import CATALOG
from atom_actors.errors import MalformedFrame
from atom_actors.protocol import DeltaStream, Frame, encode_f32
from atom_actors.watch import WatchState, endpoints, render, summary_line
from tests.atom_process import ATOM, atom_env, running_atom

PORTS = {"api_host": "127.0.0.1", "api_port": 8000, "ws_port": 8001}


@pytest.mark.parametrize("url, ws, expected", [
    (None, None, ("http://127.0.0.1:8000", "ws://127.0.0.1:8001/ws/swarm")),
    ("http://10.0.0.5:9000/", None, ("http://10.0.0.5:9000", "ws://10.0.0.5:8001/ws/swarm")),
    ("https://atom.example", None, ("https://atom.example", "wss://atom.example/ws/swarm")),
    ("http://[::1]:8000", None, ("http://[::1]:8000", "ws://[::1]:8001/ws/swarm")),
    ("127.0.0.2:8000", None, ("http://127.0.0.2:8000", "ws://127.0.0.2:8001/ws/swarm")),
    ("http://h:1", "ws://h:2/ws/swarm", ("http://h:1", "ws://h:2/ws/swarm")),
    # The stream's URL as the argument (a newcomer's first try: it was "unknown url type: ws").
    ("ws://10.0.0.5:9001/ws/swarm", None, ("http://10.0.0.5:8000", "ws://10.0.0.5:9001/ws/swarm")),
    ("ws://[::1]:8001", None, ("http://[::1]:8000", "ws://[::1]:8001/ws/swarm")),
    ("wss://atom.example/ws/swarm", None, ("https://atom.example", "wss://atom.example/ws/swarm")),
])
def test_endpoints(url, ws, expected):
    where = endpoints(url, ws, **PORTS)
    assert (where.api, where.ws) == expected


def test_endpoints_of_a_server_bound_to_every_address():
    where = endpoints(None, None, api_host="0.0.0.0", api_port=80, ws_port=81)
    assert where.api == "http://127.0.0.1:80"


def hello() -> dict:
    return {"type": "hello", "protocol": 1, "agents": CATALOG.size, "tick_hz": 60, "fps": 60,
            "encoding": "f32", "q16_range": 64.0,
            "spheres": [{"name": s.name, "count": s.count, "first_agent": s.first, "color": s.color}
                        for s in CATALOG.spheres],
            "roster": [{"id": a, "sphere": s.name, "status": "active"}
                       for s in CATALOG.spheres for a in s.agent_ids]}


def fed(frames: int, *, interval: float = 1 / 60, latency: float = 0.002, start_seq: int = 0,
        every: int = 1) -> WatchState:
    state = WatchState()
    state.on_hello(hello())
    positions = np.zeros((CATALOG.size, 3), np.float32)
    for k in range(frames):
        t = 1_000.0 + k * interval * every
        state.on_message(encode_f32(start_seq + k * every, t, positions), t + latency)
    return state


def test_fps_latency_and_skips_from_binary_frames():
    state = fed(181)  # three seconds at 60 fps
    assert state.mean_fps() == pytest.approx(60, rel=1e-6)
    assert state.fps(state.last_at) == pytest.approx(60, rel=0.02)
    p50, p99 = state.latency_ms()
    assert p50 == pytest.approx(2.0) and p99 == pytest.approx(2.0)
    assert state.skipped == 0
    slow = fed(31, every=2)  # a server that sent us every other frame
    assert slow.mean_fps() == pytest.approx(30, rel=1e-6) and slow.skipped == 30


def test_seq_wraps_without_counting_a_skip():
    state = fed(3, start_seq=2**32 - 2)
    assert state.frames == 3 and state.skipped == 0


def test_status_and_safeguard_follow_events():
    state = fed(2)
    for agent in (0, 1, 300):
        state.on_message(json.dumps({"type": "event", "event": "agent.status", "agent": agent,
                                     "status": "dispersed"}), 1.0)
    state.on_message(json.dumps({"type": "event", "event": "agent.status", "agent": 1,
                                 "status": "regrouping"}), 1.0)
    state.on_message(json.dumps({"type": "event", "event": "safeguard", "state": "open",
                                 "reason": "too many total dispersals"}), 1.0)
    assert state.by_status() == {"active": 347, "dispersed": 2, "regrouping": 1}
    personal, environment = state.by_sphere()["personal"], state.by_sphere()["environment"]
    assert personal == {"active": 26, "dispersed": 1, "regrouping": 1}
    assert environment["dispersed"] == 1   # agent 300 is in environment (ids 278..302)
    assert state.safeguard == "open" and state.safeguard_reason == "too many total dispersals"


def test_json_frames_count_too():
    state = WatchState()
    state.on_hello(hello())
    for seq in range(3):
        state.on_message(json.dumps({"type": "frame", "seq": seq, "t": 10.0 + seq / 60,
                                     "positions": []}), 10.0 + seq / 60 + 0.001)
    assert state.frames == 3 and state.mean_fps() == pytest.approx(60)


def test_the_delta_stream_is_decoded_and_its_bytes_counted():
    state = WatchState()
    state.on_hello({**hello(), "encoding": "delta"})
    stream = DeltaStream()
    rng = np.random.default_rng(5)
    positions = rng.uniform(-20, 20, (CATALOG.size, 3))
    sent = 0
    for k in range(121):
        positions += rng.uniform(-0.01, 0.01, positions.shape)
        delta = stream.advance(Frame.compose(k, 1_000.0 + k / 60, positions))
        message = stream.keyframe() if k == 0 else delta
        sent += len(message)
        state.on_message(message, 1_000.0 + k / 60 + 0.002)
        assert np.array_equal(state.delta.prev, stream.prev)
    assert state.frames == 121 and state.delta.keyframes == 1
    assert state.mean_kbytes_per_s() == pytest.approx(sent / 2 / 1000)
    assert state.kbytes_per_s(state.last_at) == pytest.approx(sent / 2 / 1000, rel=0.05)
    assert f"kB_s={sent / 2000:.1f} " in summary_line(state, 55)[0]
    with pytest.raises(MalformedFrame):
        state.on_message(delta[:-1], 1_003.0)


def test_the_screen_shows_what_the_stream_says():
    state = fed(121)
    state.on_event({"event": "agent.status", "agent": 5, "status": "dispersed"})
    state.set_safeguard("open", "crash loop")
    console = Console(record=True, width=100, color_system=None, file=io.StringIO())
    console.print(render(state, state.last_at, "http://api ws://ws"))
    screen = console.export_text()
    assert "fps" in screen and "60.0 / 60" in screen and "kB/s (f32)" in screen
    assert "p50 2.0 ms" in screen and "p99 2.0 ms" in screen
    assert "open (crash loop)" in screen
    assert "active 349" in screen and "dispersed 1" in screen and "(of 350)" in screen
    rows = {cells[0]: cells[1:] for line in screen.splitlines()
            if (cells := line.replace("│", " ").split())}
    assert rows["transport"] == ["50", "50", "0", "0"]
    assert rows["personal"] == ["28", "27", "1", "0"]


def test_summary_line_says_ok_or_low():
    state = fed(121)
    state.set_safeguard("closed")
    line, healthy = summary_line(state, 55)
    assert healthy and line.startswith("atom watch: ok fps=60.0 min_fps=55 ")
    assert "agents=350 active=350" in line and "safeguard=closed" in line
    line, healthy = summary_line(fed(31, every=2), 55)
    assert not healthy and line.startswith("atom watch: LOW fps=30.0")
    line, healthy = summary_line(WatchState(), 1)
    assert not healthy and "frames=0" in line


# -- the probe, as a deployment runs it ------------------------------------------------------------

async def watch_once(atom_urls: tuple[str, str], *args: str) -> tuple[int, str]:
    api, ws = atom_urls
    done = await trio.run_process([*ATOM, "watch", api, "--ws", ws, "--once", *args],
                                  capture_stdout=True, capture_stderr=True, check=False,
                                  env=atom_env())
    return done.returncode, (done.stdout + done.stderr).decode()


async def test_once_is_a_health_probe(tmp_path):
    """Exit 0 and an ``ok`` line on a healthy server; 1 and ``LOW`` when it streams below
    --min-fps; 1 and ``UNREACHABLE`` once it is stopped."""
    with trio.fail_after(120):
        async with running_atom(tmp_path) as atom:
            urls = (atom.api_url, atom.ws_url)
            code, out = await watch_once(urls, "--min-fps", "30", "--seconds", "2")
            assert code == 0, out
            (line,) = out.splitlines()
            assert line.startswith("atom watch: ok fps=") and "agents=350 active=350" in line
            assert "safeguard=closed" in line
            # On the delta stream (the default), every frame decoded: a few hundred bytes each.
            kbytes = float(line.split("kB_s=")[1].split()[0])
            assert 5 <= kbytes <= 60, line
            assert 30 <= float(line.split("fps=")[1].split()[0]) <= 61
            # The stream's URL alone: the API is its host on API_PORT (here the test's own port).
            api_port = atom.api_url.rsplit(":", 1)[1]
            done = await trio.run_process(
                [*ATOM, "watch", atom.ws_url, "--once", "--min-fps", "30", "--seconds", "1"],
                capture_stdout=True, capture_stderr=True, check=False,
                env={**atom_env(), "API_PORT": api_port})
            assert done.returncode == 0, done.stdout + done.stderr
            assert done.stdout.decode().startswith("atom watch: ok fps=")
            code, out = await watch_once(urls, "--min-fps", "1000", "--seconds", "1")
            assert code == 1 and out.startswith("atom watch: LOW fps="), out
            code, out = await watch_once((atom.api_url, atom.ws_url.replace("/ws/swarm", "/ws/x")))
            assert code == 1 and out == (f"atom watch: UNREACHABLE {atom.ws_url[:-5]}x refused "
                                         "the subscription: HTTP 404\n"), out
        code, out = await watch_once(urls, "--seconds", "1")
    assert code == 1 and out.startswith("atom watch: UNREACHABLE"), out
    assert len(out.splitlines()) == 1
