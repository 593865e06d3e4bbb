"""A real ``atom serve`` in a subprocess, with every byte it writes kept, and the client scenario
the observability tests run against it (``test_logs``, ``test_metrics``, ``test_watch``).

The server binds 127.0.0.2 and the clients connect from 127.0.0.1 (:func:`client_address` checks
that the kernel really picks it), so "the client address appears nowhere" is an honest check: the
server's own address, which it may well print, is another one.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt
import trio

from atom_actors.watch import subscribe
from tests import servers
from tests.operators import bearer

ATOM = [sys.executable, "-m", "atom_actors"]
SERVER_HOST = "127.0.0.2"
CLIENT_HOST = "127.0.0.1"
# What a person's client would give away: the scenario sends these, the tests look for them.
USER_AGENT = "AtomProbe/9.99 (Quokka-7f3e; zero-log test)"
UA_MARK = "Quokka-7f3e"
FORWARDED_FOR = "203.0.113.77"   # TEST-NET-3, only ever a header value: no traffic goes there
# The operator of the scenario, as Supabase Auth would describe them in their access token.
OPERATOR_SUBJECT = "5c1e0f3a-operator-7f3e"
OPERATOR_PHONE = "+15555550199"
SERVING = re.compile(rb"atom: serving: ([^\n]*)\n")
API_URL = re.compile(r"\bapi (http[^\s,]+)")
WS_URL = re.compile(r"\bws (ws[^\s,]+)")


def atom_env(**extra: str) -> dict[str, str]:
    """The environment of a fresh deployment (no inherited settings), bound to SERVER_HOST."""
    return servers.atom_env(**{"API_HOST": SERVER_HOST,
                               "ALLOWED_HOSTS": f"{SERVER_HOST},localhost,127.0.0.1",
                               "SWARM_SEED": "11", **extra})


@dataclass
class AtomProcess:
    proc: trio.Process
    api_url: str = ""
    ws_url: str = ""
    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)

    @property
    def output(self) -> bytes:
        return bytes(self.stdout) + bytes(self.stderr)


@asynccontextmanager
async def running_atom(cwd: Any, *args: str, **env: str) -> AsyncIterator[AtomProcess]:
    """``atom serve [args]`` until the block ends, then SIGINT; its output is complete after the
    block. ``api_url`` and ``ws_url`` are those it serves (a role serves one of them, or none)."""
    proc = await trio.lowlevel.open_process([*ATOM, "serve", *args], env=atom_env(**env),
                                            cwd=str(cwd), stdout=subprocess.PIPE,
                                            stderr=subprocess.PIPE)
    atom = AtomProcess(proc)
    serving = trio.Event()

    async def drain(stream: Any, into: bytearray) -> None:
        while chunk := await stream.receive_some():
            into += chunk
            if not serving.is_set() and (found := SERVING.search(atom.stderr)):
                described = found.group(1).decode()
                atom.api_url = next(iter(API_URL.findall(described)), "")
                atom.ws_url = next(iter(WS_URL.findall(described)), "")
                serving.set()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain, proc.stdout, atom.stdout)
            nursery.start_soon(drain, proc.stderr, atom.stderr)
            with trio.fail_after(30):
                while not serving.is_set():
                    assert proc.poll() is None, atom.output.decode(errors="replace")
                    with trio.move_on_after(0.1):
                        await serving.wait()
            try:
                yield atom
            finally:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGINT)
                with trio.fail_after(15):
                    await proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()


async def client_address(url: str) -> str:
    """The address the kernel gives a client connecting to ``url`` (the scenario's clients too)."""
    parts = urlsplit(url)
    stream = await trio.open_tcp_stream(parts.hostname, parts.port)
    try:
        return stream.socket.getsockname()[0]
    finally:
        await stream.aclose()


async def raw_handshake(ws_url: str, query: str, headers: dict[str, str]) -> tuple[int, bytes]:
    """A WebSocket upgrade request written by hand, for a handshake the server must refuse:
    returns its HTTP status and the whole response. (trio-websocket's client leaves the socket of
    a refused handshake open.)"""
    parts = urlsplit(ws_url)
    lines = [f"GET {parts.path}?{query} HTTP/1.1", f"Host: {parts.netloc}", "Upgrade: websocket",
             "Connection: Upgrade", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
             "Sec-WebSocket-Version: 13", *(f"{k}: {v}" for k, v in headers.items())]
    response = b""
    async with await trio.open_tcp_stream(parts.hostname, parts.port) as stream:
        await stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode())
        with trio.move_on_after(5):
            while chunk := await stream.receive_some():
                response += chunk
    return int(response.split(b" ", 2)[1]), response


class Tally:
    """A count that a test can wait on: ``await tally.reach(n)``."""

    def __init__(self) -> None:
        self.count = 0
        self._changed = trio.Event()

    def add(self, n: int = 1) -> None:
        self.count += n
        self._changed.set()
        self._changed = trio.Event()

    async def reach(self, n: int) -> None:
        while self.count < n:
            await self._changed.wait()


@dataclass
class Seen:
    """What the scenario's clients received and did."""

    token: str = ""
    command_ids: dict[str, str] = field(default_factory=dict)
    error_bodies: list[bytes] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    frames: Tally = field(default_factory=Tally)         # binary frames, both subscribers
    dispersed: Tally = field(default_factory=Tally)      # agent.status "dispersed", f32 subscriber
    regroups: Tally = field(default_factory=Tally)       # swarm.regroup events, f32 subscriber
    refused_handshake: int | None = None
    operator_token: str = ""
    operator_session_id: str = ""   # the token's session_id claim
    metrics_during: str = ""   # /metrics while two subscribers stream


async def scenario(api_url: str, ws_url: str) -> Seen:
    """A person's session: Sceau, subscribers, dispersal, retune, malformed requests, a refused
    handshake, then the session revoked. Every request carries a distinctive user agent and a
    forwarded-for address. It waits on what the subscribers receive, never on a clock."""
    seen = Seen()
    headers = {"User-Agent": USER_AGENT, "X-Forwarded-For": FORWARDED_FOR}
    async with httpx.AsyncClient(base_url=api_url, headers=headers, timeout=10) as http:

        async def call(name: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
            response = await http.request(method, path, **kwargs)
            seen.statuses[name] = response.status_code
            if response.status_code >= 400:
                seen.error_bodies.append(response.content)
            return response

        await call("too_short", "POST", "/api/v1/sceau/activate", json={"duration_ms": 500})
        opened = await call("activate", "POST", "/api/v1/sceau/activate",
                            json={"duration_ms": 2000})
        seen.token = token = opened.headers["X-Sceau-Session"]
        session = {"X-Sceau-Session": token}
        # The commands are an operator's, with a Supabase-shaped token (email, phone, session_id).
        seen.operator_token = bearer(subject=OPERATOR_SUBJECT,
                                     phone=OPERATOR_PHONE)["Authorization"].split()[1]
        seen.operator_session_id = jwt.decode(seen.operator_token,
                                              options={"verify_signature": False})["session_id"]
        operator = {"Authorization": f"Bearer {seen.operator_token}"}
        await call("no_session", "GET", "/api/v1/swarm")
        await call("bad_session", "GET", "/api/v1/swarm",
                   headers={"X-Sceau-Session": token[:-4] + "AAAA"})

        async def subscriber(encoding: str, task_status=trio.TASK_STATUS_IGNORED) -> None:
            url = f"{ws_url}?session={token}&encoding={encoding}"
            async with subscribe(url, [(k.encode(), v.encode()) for k, v in headers.items()]) as ws:
                hello = json.loads(await ws.get_message())
                assert hello["type"] == "hello" and hello["agents"] == 350
                task_status.started()
                while True:
                    message = await ws.get_message()
                    if isinstance(message, bytes):
                        seen.frames.add()
                    elif encoding == "f32":
                        event = json.loads(message)
                        if event.get("status") == "dispersed":
                            seen.dispersed.add()
                        elif event.get("event") == "swarm.regroup":
                            seen.regroups.add()

        with trio.fail_after(60):
            async with trio.open_nursery() as subscribers:
                await subscribers.start(subscriber, "f32")
                await subscribers.start(subscriber, "q16")
                seen.refused_handshake, body = await raw_handshake(
                    ws_url, f"session={token[:-4]}AAAA", headers)
                seen.error_bodies.append(body)
                partial = await call("disperse", "POST", "/api/v1/swarm/disperse", headers=operator,
                                     json={"level": "partial"})
                seen.command_ids["disperse"] = partial.json()["command_id"]
                sectoral = await call("disperse_sphere", "POST", "/api/v1/swarm/disperse",
                                      headers=operator,
                                      json={"level": "sectoral", "sphere": "transport"})
                seen.command_ids["disperse_sphere"] = sectoral.json()["command_id"]
                await call("bad_level", "POST", "/api/v1/swarm/disperse", headers=operator,
                           json={"level": "huge"})
                await call("bad_json", "POST", "/api/v1/swarm/disperse", headers=operator,
                           content=b"{not json")
                await call("retune", "PUT", "/api/v1/swarm/agents/217/frequency", headers=operator,
                           json={"frequency": 500})
                await call("retune_high", "PUT", "/api/v1/swarm/agents/217/frequency",
                           headers=operator, json={"frequency": 100_000})
                await call("no_agent", "GET", "/api/v1/swarm/agents/9999", headers=session)
                await call("no_route", "GET", "/api/v1/nowhere")
                await call("bad_method", "DELETE", "/api/v1/swarm", headers=session)
                # Every dispersed agent reached the subscribers, then 1.5 s of frames (for two
                # subscribers at 60 fps): long enough for the once-a-second stats lines.
                await seen.dispersed.reach(70)
                await seen.frames.reach(seen.frames.count + 180)
                seen.metrics_during = (await call("metrics", "GET", "/metrics")).text
                regroup = await call("regroup", "POST", "/api/v1/swarm/regroup", headers=operator)
                seen.command_ids["regroup"] = regroup.json()["command_id"]
                await seen.regroups.reach(1)
                await seen.frames.reach(seen.frames.count + 60)
                subscribers.cancel_scope.cancel()

        await call("revoke", "DELETE", "/api/v1/sceau/session", headers=session)
        await call("revoked", "GET", "/api/v1/swarm", headers=session)
    return seen
