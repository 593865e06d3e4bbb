#!/usr/bin/env python3
"""Soak: commands at a steady rate while subscribers stream, for minutes (issue 13's benchmark).

Starts ``atom serve`` (one process; or, with --redis-url and --database-url, the three roles
engine, api and ws as a deployment runs them), opens N WebSocket subscribers (the project's load
client, clients/js/tools/loadclient.js: SDK clients that decode and reconnect) and sends swarm-changing
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
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import trio

import loadclient  # scripts/loadclient.py, beside this file

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


# -- the subscribers: the project's load client ---------------------------------------------------

class Subscribers:
    """N SDK subscribers in one Node process (clients/js/tools/loadclient.js): they decode every
    frame and reconnect with jitter, as frontends do. It says its fps every 5 s (``# progress``);
    :meth:`minute` sums up what it said since the last call."""

    def __init__(self, url: str, clients: int, seconds: float) -> None:
        loadclient.prepare()
        self.proc = subprocess.Popen(
            loadclient.command(url, clients, seconds, ramp_ms=max(1000, clients * 10),
                               warmup_ms=0, report_every_s=5),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.progress: list[dict] = []
        self.taken = 0
        self.result: dict = {}
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)
            if line.startswith("# progress "):
                self.progress.append(json.loads(line.removeprefix("# progress ")))
            elif line.startswith("{"):
                self.result = json.loads(line)

    def minute(self) -> dict:
        """Mean fps over the reports since the last call; clients live and reconnects, newest."""
        fresh, self.taken = self.progress[self.taken:], len(self.progress)
        if not fresh:
            return {"fps_mean": 0.0, "live": 0, "reconnects": 0}
        fps = sum(p["fps_mean"] or 0 for p in fresh) / len(fresh)
        return {"fps_mean": round(fps, 2), "live": fresh[-1]["live"],
                "reconnects": fresh[-1]["reconnects"]}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(timeout=10)


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
    query = f"encoding={args.encoding}&session={args.session}" + (
        f"&fps={args.fps}" if args.fps else "")
    subscribers = Subscribers(f"{ws.ws_url}?{query}", args.subscribers, minutes * 60 + 30) \
        if args.subscribers else None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(commands, api.api_url, args.rate, tally,
                           operator_headers(os.environ, subject="soak-operator"))
        last = Tally()
        for minute in range(1, minutes + 1):
            await trio.sleep(60)
            now = Tally(**{**vars(tally), "failures": dict(tally.failures)})
            progress = subscribers.minute() if subscribers else {}
            row = {"minute": minute, "warm_up": minute <= args.warmup_minutes,
                   "rss_mb": {s.role: round(s.rss() / 1024, 1) for s in servers},
                   "answered": now.answered - last.answered, "refused": now.refused - last.refused,
                   "failed": now.failed - last.failed, "fps": progress.get("fps_mean") or 0.0,
                   "live": progress.get("live", 0), "reconnects": progress.get("reconnects", 0)}
            for s in servers:
                s.rss_kb.append(s.rss())
            report["minutes"].append(row)
            rss = "  ".join(f"{role} {mb:7.1f} MB" for role, mb in row["rss_mb"].items())
            print(f"{minute:4d}{' (warm-up)' if row['warm_up'] else '          '}  {rss}  "
                  f"commands {row['answered']:5d} ok {row['refused']:4d} refused "
                  f"{row['failed']:4d} failed  fps {row['fps']:6.2f}  live {row['live']}"
                  f"/{args.subscribers}  reconnects {row['reconnects']}", flush=True)
            last = now
        nursery.cancel_scope.cancel()
    if subscribers is not None:
        subscribers.stop()
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
               # one load client, one address (often one session): no fair share here (issue 24)
               WS_MAX_PER_SESSION=str(max(500, args.subscribers + 10)),
               WS_MAX_PER_ADDRESS=str(max(500, args.subscribers + 10)),
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
