#!/usr/bin/env python3
"""Soak: commands at a steady rate while subscribers stream, for minutes (issue 13's benchmark).

Starts ``atom serve`` (one process; or, with --redis-url and --database-url, the three roles
engine, api and ws as a deployment runs them), opens N WebSocket subscribers (raw sockets: the
frames are counted, not decoded, so the load client stays light) and sends swarm-changing
commands over REST at a fixed rate: partial dispersal, regroup and retune in turn. Every minute it
prints, for each server process, its RSS; then the commands answered, refused and failed, and the
subscribers' fps. At the end: each process's RSS after the warm-up and at the end, the change in
percent and per command.

Target (issue 13): RSS flat within 5 % over 20 minutes at 20 commands/s with 200 subscribers,
after warm-up.

    .venv/bin/python scripts/soak_api.py [--minutes 20] [--rate 20] [--subscribers 200]
    .venv/bin/python scripts/soak_api.py --minutes 2          # a short run while developing

The Brise-Circuit would trip on such a stream of commands (that is its job): the soak raises
SAFEGUARD_MAX_COMMANDS and SAFEGUARD_MAX_TOTAL for its own servers, and says so.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import signal
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from atom_operator import operator_env, operator_headers  # noqa: E402
SERVING = re.compile(r"atom: serving: (.*)")
TARGET_DRIFT = 0.05


@dataclass
class Server:
    role: str
    proc: subprocess.Popen
    api_url: str = ""
    ws_url: str = ""
    rss_kb: list[int] = field(default_factory=list)

    def rss(self) -> int:
        """VmRSS of the process, in KiB (0 once it is gone)."""
        try:
            text = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return 0
        return int(re.search(r"VmRSS:\s+(\d+)", text).group(1))


@dataclass
class Tally:
    answered: int = 0
    refused: int = 0          # 4xx/5xx answers
    failed: int = 0           # no answer (timeout, reset)
    failures: dict[str, int] = field(default_factory=dict)   # why, by exception type
    frames: int = 0
    events: int = 0
    closed: int = 0           # subscribers the server closed


def start(role: str, env: dict[str, str]) -> Server:
    args = [sys.executable, "-m", "atom_actors", "serve"] + ([] if role == "all" else ["--role", role])
    proc = subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    server = Server(role, proc)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            raise SystemExit(f"atom serve --role {role} exited before serving")
        if found := SERVING.search(line):
            described = found.group(1)
            api = re.search(r"\bapi (http[^\s,]+)", described)
            ws = re.search(r"\bws (ws[^\s,]+)", described)
            server.api_url = api.group(1) if api else ""
            server.ws_url = ws.group(1) if ws else ""
            # Keep draining stderr, so that the server never blocks on a full pipe.
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            return server
    raise SystemExit(f"atom serve --role {role} did not start within 60 s")


def stop(servers: list[Server]) -> None:
    for server in reversed(servers):
        if server.proc.poll() is None:
            server.proc.send_signal(signal.SIGINT)
    for server in servers:
        try:
            server.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.proc.kill()


# -- the subscribers: a hand-made WebSocket reader ------------------------------------------------

async def subscriber(ws_url: str, query: str, tally: Tally) -> None:
    """One subscriber: handshake, then count binary frames and text messages; answer pings.

    A 503 to the handshake (the broadcaster's bound on pending handshakes from one address, met
    by 200 subscribers opened at once) is retried after a growing pause, as the SDK does."""
    for attempt in range(1, 21):
        try:
            return await _subscribe(ws_url, query, tally)
        except Refused as exc:
            if b" 503 " not in exc.status_line or attempt == 20:
                raise SystemExit(f"subscriber refused: {exc.status_line!r}") from None
            await trio.sleep(0.1 * attempt)


class Refused(Exception):
    def __init__(self, status_line: bytes) -> None:
        self.status_line = status_line


async def _subscribe(ws_url: str, query: str, tally: Tally) -> None:
    parts = urlsplit(ws_url)
    stream = await trio.open_tcp_stream(parts.hostname, parts.port)
    key = base64.b64encode(os.urandom(16)).decode()
    await stream.send_all((f"GET {parts.path}?{query} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                           "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    buffer = bytearray()
    while b"\r\n\r\n" not in buffer:
        chunk = await stream.receive_some(65536)
        if not chunk:
            tally.closed += 1
            return
        buffer += chunk
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n")[0]
    if b" 101 " not in status_line:
        await stream.aclose()
        raise Refused(status_line)
    buffer = bytearray(rest)
    try:
        while True:
            while len(buffer) >= 2:
                opcode, size = buffer[0] & 0x0F, buffer[1] & 0x7F
                offset = 2
                if size == 126:
                    if len(buffer) < 4:
                        break
                    size, offset = struct.unpack_from("!H", buffer, 2)[0], 4
                elif size == 127:
                    if len(buffer) < 10:
                        break
                    size, offset = struct.unpack_from("!Q", buffer, 2)[0], 10
                if len(buffer) < offset + size:
                    break
                payload = bytes(buffer[offset:offset + size])
                del buffer[:offset + size]
                if opcode == 0x2:
                    tally.frames += 1
                elif opcode == 0x1:
                    tally.events += 1
                elif opcode == 0x9:   # ping: a masked pong with its payload
                    mask = os.urandom(4)
                    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
                    await stream.send_all(bytes((0x8A, 0x80 | len(payload))) + mask + masked)
                elif opcode == 0x8:
                    tally.closed += 1
                    return
            chunk = await stream.receive_some(65536)
            if not chunk:
                tally.closed += 1
                return
            buffer += chunk
    finally:
        await stream.aclose()


# -- the commands ---------------------------------------------------------------------------------

async def commands(api_url: str, rate: float, tally: Tally, headers: dict[str, str]) -> None:
    """Swarm-changing commands at ``rate`` per second, on a fixed schedule (a late one does not
    shift the next), each in its own task so that a slow answer never slows the rate; sent by
    the operator whose ``headers`` they carry."""
    async with httpx.AsyncClient(base_url=api_url, timeout=10,
                                 limits=httpx.Limits(max_connections=64)) as http:

        async def one(n: int) -> None:
            kind = n % 3
            try:
                if kind == 0:
                    r = await http.post("/api/v1/swarm/disperse", json={"level": "partial"},
                                        headers=headers)
                elif kind == 1:
                    r = await http.post("/api/v1/swarm/regroup", headers=headers)
                else:
                    r = await http.put(f"/api/v1/swarm/agents/{n % 350}/frequency",
                                       json={"frequency": 432 + n % 500}, headers=headers)
            except httpx.HTTPError as exc:
                tally.failed += 1
                why = type(exc).__name__
                tally.failures[why] = tally.failures.get(why, 0) + 1
                return
            if r.status_code < 300:
                tally.answered += 1
            else:
                tally.refused += 1

        async with trio.open_nursery() as nursery:
            start, n = trio.current_time(), 0
            while True:
                n += 1
                await trio.sleep_until(start + n / rate)
                nursery.start_soon(one, n)


# -- the run --------------------------------------------------------------------------------------

async def soak(args: argparse.Namespace, servers: list[Server]) -> dict:
    api = next(s for s in servers if s.api_url)
    ws = next(s for s in servers if s.ws_url)
    tally = Tally()
    minutes = args.warmup_minutes + args.minutes
    report: dict = {"minutes": []}
    async with trio.open_nursery() as nursery:
        query = f"encoding={args.encoding}&session={args.session}" + (
            f"&fps={args.fps}" if args.fps else "")
        for _ in range(args.subscribers):
            nursery.start_soon(subscriber, ws.ws_url, query, tally)
            await trio.sleep(0.005)
        nursery.start_soon(commands, api.api_url, args.rate, tally,
                           operator_headers(os.environ, subject="soak-operator"))
        last = Tally()
        for minute in range(1, minutes + 1):
            await trio.sleep(60)
            now = Tally(**{**vars(tally), "failures": dict(tally.failures)})
            fps = (now.frames - last.frames) / 60 / max(1, args.subscribers - now.closed)
            row = {"minute": minute, "warm_up": minute <= args.warmup_minutes,
                   "rss_mb": {s.role: round(s.rss() / 1024, 1) for s in servers},
                   "answered": now.answered - last.answered, "refused": now.refused - last.refused,
                   "failed": now.failed - last.failed, "fps": round(fps, 2),
                   "events": now.events - last.events, "closed": now.closed}
            for s in servers:
                s.rss_kb.append(s.rss())
            report["minutes"].append(row)
            rss = "  ".join(f"{role} {mb:7.1f} MB" for role, mb in row["rss_mb"].items())
            print(f"{minute:4d}{' (warm-up)' if row['warm_up'] else '          '}  {rss}  "
                  f"commands {row['answered']:5d} ok {row['refused']:4d} refused "
                  f"{row['failed']:4d} failed  fps {row['fps']:6.2f}  closed {row['closed']}",
                  flush=True)
            last = now
        nursery.cancel_scope.cancel()
    report["commands_answered"] = tally.answered
    report["failures"] = dict(tally.failures)
    if tally.failures:
        print("commands with no answer, by cause: "
              + ", ".join(f"{why} {n}" for why, n in sorted(tally.failures.items())))
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=int, default=20, help="measured minutes, after warm-up")
    parser.add_argument("--warmup-minutes", type=int, default=1)
    parser.add_argument("--rate", type=float, default=20.0, help="commands per second")
    parser.add_argument("--subscribers", type=int, default=200)
    parser.add_argument("--encoding", default="q16")
    parser.add_argument("--fps", type=int, default=0, help="subscribers' fps (default: TICK_HZ)")
    parser.add_argument("--redis-url", default="", help="with --database-url: three roles")
    parser.add_argument("--database-url", default="")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args()

    env = {k: v for k, v in os.environ.items() if not k.isupper() or k in ("PATH", "HOME", "LANG")}
    env.update(API_HOST="127.0.0.1", API_PORT="0", WS_PORT="0", WS_REQUIRE_SESSION="true",
               PYTHONUNBUFFERED="1", SWARM_SEED="1",
               WS_MAX_CONNECTIONS=str(max(500, args.subscribers + 10)),
               SAFEGUARD_MAX_COMMANDS="1000000000", SAFEGUARD_MAX_TOTAL="1000000000",
               **operator_env())
    print("soak: the Brise-Circuit's thresholds are raised for this server (SAFEGUARD_MAX_COMMANDS,"
          " SAFEGUARD_MAX_TOTAL), so that every command reaches the swarm")
    servers: list[Server] = []
    try:
        if args.redis_url and args.database_url:
            env.update(REDIS_URL=args.redis_url, DATABASE_URL=args.database_url,
                       SECRET_KEY=env.get("SECRET_KEY", "s" * 48))
            subprocess.run([sys.executable, "-m", "atom_actors", "migrate"], env=env, cwd=ROOT,
                           check=True, capture_output=True)
            for role in ("engine", "api", "ws"):
                servers.append(start(role, env))
        else:
            servers.append(start("all", env))
        # The subscribers' session: opened through the API (shared with a ws role via the store).
        api = next(s for s in servers if s.api_url)
        opened = httpx.post(f"{api.api_url}/api/v1/sceau/activate", json={"duration_ms": 2000})
        opened.raise_for_status()
        args.session = opened.json()["session"]
        print(f"soak: {args.warmup_minutes} min warm-up, then {args.minutes} min; {args.rate:g} "
              f"commands/s, {args.subscribers} subscribers ({args.encoding}); processes: "
              + ", ".join(f"{s.role} pid {s.proc.pid}" for s in servers), flush=True)
        report = trio.run(soak, args, servers)
    finally:
        stop(servers)

    print("\nprocess     RSS after warm-up    RSS at the end    change    per command")
    measured = report["commands_answered"]
    ok = True
    for server in servers:
        samples = server.rss_kb[args.warmup_minutes - 1:] if args.warmup_minutes else server.rss_kb
        first, end = samples[0], samples[-1]
        drift = (end - first) / first if first else 0.0
        ok &= abs(drift) <= TARGET_DRIFT
        per = (end - first) * 1024 / max(1, measured)
        print(f"{server.role:<10}{first / 1024:12.1f} MB{end / 1024:16.1f} MB{drift * 100:+9.1f} %"
              f"{per:+11.0f} B")
        report.setdefault("rss", {})[server.role] = {"after_warm_up_mb": round(first / 1024, 1),
                                                    "end_mb": round(end / 1024, 1),
                                                    "drift": round(drift, 4)}
    print(f"\ntarget: RSS within {TARGET_DRIFT:.0%} after warm-up: {'met' if ok else 'NOT met'}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
