#!/usr/bin/env python3
"""Chaos run of the split topology: faults on a schedule under load, then one table.

    The subscribers are the project's Node load client (clients/js/tools/loadclient.js, SDK
    clients that reconnect with jitter); `npm ci` in clients/js is done for you when needed.
    .venv/bin/python scripts/chaos.py                  # full: 6 minutes, 200 subscribers
    .venv/bin/python scripts/chaos.py --mode short     # ~40 s (the test suite runs this one)

What it starts, all on free ports and all its own (never the machine's shared servers):

* a throwaway ``redis-server`` keeping an append-only file (as a deployment's Redis does: the
  command stream survives a restart) and a throwaway PostgreSQL (``initdb`` in a temporary
  directory, as ``tests/servers.py`` does);
* ``atom serve --role engine`` twice (a leader and a hot standby), ``--role ws`` twice and
  ``--role api`` once, with REDIS_URL and DATABASE_URL;
* ``--subscribers`` subscribers of the Node load client, spread over the two ws processes and
  opened RAMP_PER_S a second on each, and one probe subscriber per ws process (this script's own:
  it timestamps every frame);
* a command driver: disperse (partial, sectoral, of a sphere or not) and regroup, about
  ``--rate`` a second, through the api process (the commands whose answer names their
  ``command_id``, so that each can be followed to the engine and the events table).

The faults, on a schedule (seconds from the start of the load; full mode): the leader killed
with SIGKILL three times (40, 110, 180; the killed engine is started again as a standby), Redis
stopped and started again (150), PostgreSQL stopped for 10 s (230), a session revoked while it
streams on both ws processes (270), a ws process killed (300). Short mode runs each once, sooner.

Then the table: per fault, the longest gap between two frames at a probe and how long after the
fault (after its end, for Redis) the stream was back; and the command accounting: sent,
accepted, refused (by status), applied exactly once, lost, duplicated — from the engine's
applied-commands log in Redis — and recorded in PostgreSQL's ``events`` table. Targets: 0 lost, 0
duplicated, 0 refused while only PostgreSQL is down, stream back <= 2 s after a leader's kill
and <= 1 s after Redis returns, 4401 <= 1 s after a revocation on every ws process.

Everything it started is stopped by PID at the end (SIGTERM, then SIGKILL), even on Ctrl-C.
``--json`` prints the figures as one JSON line as well (the test suite reads it).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import trio
import trio_websocket

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
from atom_operator import operator_env, operator_headers  # noqa: E402
from tests.sentinel import SentinelCluster  # noqa: E402
from tests.servers import PostgresServer, RedisServer, sql  # noqa: E402

import loadclient  # noqa: E402  (scripts/loadclient.py, beside this file)

SPHERES = ("personal", "business", "transport", "creative_studio", "my_team", "scholar")
MAX_IN_FLIGHT = 32        # commands the driver has sent and not yet had answered
RETRIES_503 = 3          # a command answered 503 is sent again with its key, this many times
RETRY_503_S = 0.5
# New load-client subscribers a second per ws process. The run measures failover, not a connect
# storm: 100 a second (200 in 2 s) on a 2-core machine shared with other work starved the ws
# processes, their session checks went past Redis calls' 2 s bound, and most subscribers got
# 503 (the load client does not retry). 20 a second connected all of them under two CPU hogs.
RAMP_PER_S = 20


@dataclass
class Schedule:
    duration_s: float
    leader_kills: tuple[float, ...]
    redis_restart: float
    redis_down_s: float
    pg_stop: float
    pg_down_s: float
    revocation: float
    ws_kill: float
    # With --redis sentinel: kill -9 of the Redis primary at these times instead of the Redis
    # restart (the killed one started again on its append-only file: it rejoins as a replica).
    primary_kills: tuple[float, ...] = ()


SCHEDULES = {
    "full": Schedule(360, (40, 110, 180), 150, 2.0, 230, 10.0, 270, 300, (150, 205)),
    "short": Schedule(38, (6,), 13, 1.0, 19, 5.0, 27, 31, (12, 33)),
}
PRIMARY_BACK_S = 3.0      # a killed Redis primary is started again this long after the failover


@dataclass
class Atom:
    """One ``atom serve --role`` process."""

    role: str
    proc: subprocess.Popen
    lines: list[str] = field(default_factory=list)
    api_url: str = ""
    ws_url: str = ""

    def said(self, text: str, after: int = 0) -> bool:
        return any(text in line for line in self.lines[after:])


@dataclass
class Fault:
    name: str
    at: float                  # when it began (monotonic)
    back_from: float           # the moment "back" is measured from (its end, for an outage)
    gap_s: float | None = None
    back_s: float | None = None
    note: str = ""


@dataclass
class Tally:
    sent: int = 0
    accepted: list[str] = field(default_factory=list)
    refused: Counter = field(default_factory=Counter)   # by status (or "error")
    refused_while_pg_down: int = 0
    # 503 (outcome unknown: Redis down, or the write not confirmed by a replica), sent again
    # with the same Idempotency-Key: how many, and how many of those were then accepted.
    retried_503: int = 0
    accepted_on_retry: int = 0
    answered_over_1s: int = 0     # requests (each attempt) whose answer took more than a second


class Chaos:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.schedule = SCHEDULES[args.mode]
        self.tmp = Path(tempfile.mkdtemp(prefix="atom-chaos-"))
        self.redis: RedisServer | None = None
        self.cluster: SentinelCluster | None = None   # --redis sentinel
        self.pg: PostgresServer | None = None
        self.env: dict[str, str] = {}
        self.atoms: list[Atom] = []
        self.loaders: list[subprocess.Popen] = []
        self.frames: dict[str, list[float]] = {}    # probe (ws url) -> frame arrival times
        self.faults: list[Fault] = []
        self.tally = Tally()
        self.pg_down = False
        self.t0 = 0.0
        self.loader_results: list[dict] = []
        self.operator: dict[str, str] = {}

    # -- processes -------------------------------------------------------------------------------

    async def start_atom(self, role: str, wait_for: str = "serving:") -> Atom:
        proc = subprocess.Popen([sys.executable, "-m", "atom_actors", "serve", "--role", role],
                                env=self.env, cwd=str(self.tmp), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        atom = Atom(role, proc)
        self.atoms.append(atom)
        threading.Thread(target=_read, args=(proc.stderr, atom.lines), daemon=True).start()
        with trio.fail_after(60):
            while not (atom.said(wait_for) and atom.said("serving:")):
                if proc.poll() is not None:
                    raise RuntimeError(f"{role} ended:\n" + "\n".join(atom.lines))
                await trio.sleep(0.05)
        line = next(line for line in atom.lines if "serving:" in line)
        found = {k: v for k, v in re.findall(r"\b(api|ws) ((?:http|ws)://[^\s,]+)", line)}
        atom.api_url, atom.ws_url = found.get("api", ""), found.get("ws", "")
        return atom

    def leader(self) -> Atom | None:
        """The live engine process whose last word was that it leads."""
        for atom in self.atoms:
            if atom.role == "engine" and atom.proc.poll() is None:
                said = [line for line in atom.lines if "engine leading" in line
                        or "engine standing by" in line]
                if said and "engine leading" in said[-1]:
                    return atom
        return None

    def start_loaders(self, ws_urls: list[str], token: str) -> None:
        if self.args.subscribers <= 0:
            return
        loadclient.prepare()
        share = self.args.subscribers // len(ws_urls)
        ramp_ms = self.ramp_ms(len(ws_urls))
        for i, url in enumerate(ws_urls):
            clients = share + (i < self.args.subscribers % len(ws_urls))
            proc = subprocess.Popen(
                loadclient.command(f"{url}?encoding=delta&session={token}", clients,
                                   self.schedule.duration_s, ramp_ms=ramp_ms, warmup_ms=500),
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            self.loaders.append(proc)

    def ramp_ms(self, ws_processes: int) -> int:
        """How long the load clients take to open their subscribers (RAMP_PER_S a process)."""
        per_process = -(-self.args.subscribers // ws_processes)
        return max(500, round(1000 * per_process / RAMP_PER_S))

    def stop_everything(self) -> None:
        """Every process this run started, by PID: SIGTERM, then SIGKILL after 10 s. The load
        clients end their window by themselves first (bounded), so that they report."""
        deadline = time.monotonic() + 15
        for loader in self.loaders:
            while loader.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
        procs = [a.proc for a in self.atoms] + self.loaders
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in procs:
            while proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            if proc.poll() is None:
                proc.kill()
        for loader in self.loaders:
            out, _ = loader.communicate()
            self.loader_results += [json.loads(line) for line in out.splitlines()
                                    if line.startswith("{")]
        if self.redis is not None:
            self.redis.kill()
            shutil.rmtree(self.redis.dir, ignore_errors=True)   # its append-only file
        if self.cluster is not None:
            self.cluster.close()
        if self.pg is not None:
            self.pg.destroy()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- the run ---------------------------------------------------------------------------------

    async def run(self) -> dict:
        if self.args.redis == "sentinel":
            # A primary, two replicas, three sentinels (down-after 1000 ms), each append-only.
            self.cluster = await trio.to_thread.run_sync(
                lambda: SentinelCluster(appendonly=True).start())
            redis_url = self.cluster.url
        else:
            self.redis = await trio.to_thread.run_sync(lambda: RedisServer(appendonly=True).start())
            redis_url = self.redis.url
        self.pg = await trio.to_thread.run_sync(lambda: PostgresServer().start())
        self.env = {k: v for k, v in os.environ.items()
                    if not k.isupper() or k in ("PATH", "HOME", "LANG")}
        self.env.update(REDIS_URL=redis_url, DATABASE_URL=self.pg.url, API_PORT="0",
                        WS_PORT="0", PYTHONUNBUFFERED="1", SECRET_KEY="chaos-" + "k" * 40,
                        WS_MAX_CONNECTIONS=str(self.args.subscribers + 50),
                        # one load client, one address (often one session): no fair shares
                        # here (issue 24)
                        WS_MAX_PER_SESSION=str(self.args.subscribers + 50),
                        WS_MAX_PER_ADDRESS=str(self.args.subscribers + 50),
                        SAFEGUARD_MAX_COMMANDS="100000", SAFEGUARD_MAX_TOTAL="100000",
                        DISPERSAL_DWELL_S="3", PYTHONPATH=str(ROOT), **operator_env())
        async with trio.open_nursery() as nursery:
            await self.start_atom("engine", "engine leading")
            await self.start_atom("engine", "engine standing by")
            ws = [await self.start_atom("ws") for _ in range(2)]
            api = await self.start_atom("api")
            async with httpx.AsyncClient(base_url=api.api_url, timeout=10) as http:
                with trio.fail_after(30):
                    while (await http.get("/api/v1/health/ready")).status_code != 200:
                        await trio.sleep(0.1)
                token = (await http.post("/api/v1/sceau/activate",
                                         json={"duration_ms": 2000})).json()["session"]
                await trio.to_thread.run_sync(self.start_loaders, [w.ws_url for w in ws], token)
                for w in ws:
                    nursery.start_soon(self.probe, w.ws_url, token)
                # The load connects (its ramp, then a margin); the probes see frames.
                await trio.sleep(max(3.0, self.ramp_ms(len(ws)) / 1000 + 2))
                self.t0 = trio.current_time()
                async with trio.open_nursery() as run:
                    run.start_soon(self.drive, http)
                    await self.faults_on_schedule(nursery, http, ws)
                    run.cancel_scope.cancel()
                figures = await self.account()
            nursery.cancel_scope.cancel()
        return figures

    async def faults_on_schedule(self, nursery: trio.Nursery, http: httpx.AsyncClient,
                                 ws: list[Atom]) -> None:
        s = self.schedule
        redis_faults = [(t, "primary", None) for t in s.primary_kills] if self.cluster \
            else [(s.redis_restart, "redis", None)]
        plan = [(t, "kill", None) for t in s.leader_kills] + redis_faults + [
            (s.pg_stop, "pg", None), (s.revocation, "revoke", None), (s.ws_kill, "ws", None)]
        for at, kind, _ in sorted(plan):
            await trio.sleep_until(self.t0 + at)
            if kind == "kill":
                await self.kill_leader(nursery)
            elif kind == "redis":
                begun = trio.current_time()
                await trio.to_thread.run_sync(self.redis.stop)
                await trio.sleep(s.redis_down_s)
                await trio.to_thread.run_sync(self.redis.start)
                self.faults.append(Fault(f"Redis restarted ({s.redis_down_s:g} s down)", begun,
                                         trio.current_time()))
            elif kind == "primary":
                nursery.start_soon(self.kill_primary)
            elif kind == "pg":
                begun = trio.current_time()
                await trio.to_thread.run_sync(self.pg.stop)
                self.pg_down = True
                await trio.sleep(s.pg_down_s)
                await trio.to_thread.run_sync(self.pg.start)
                self.pg_down = False
                self.faults.append(Fault(f"PostgreSQL stopped {s.pg_down_s:g} s", begun, begun))
            elif kind == "revoke":
                await self.revoke(http, ws)
            elif kind == "ws":
                victim = ws[-1]
                begun = trio.current_time()
                victim.proc.kill()
                self.faults.append(Fault("a ws process killed (-9)", begun, begun,
                                         note="its subscribers are gone; the other's stream on"))
        await trio.sleep_until(self.t0 + s.duration_s)

    async def kill_leader(self, nursery: trio.Nursery) -> None:
        leader = self.leader()
        if leader is None:
            return
        standby = next(a for a in self.atoms if a.role == "engine" and a is not leader
                       and a.proc.poll() is None)
        mark = len(standby.lines)
        begun = trio.current_time()
        leader.proc.kill()
        fault = Fault(f"engine leader kill -9 #{sum('kill' in f.name for f in self.faults) + 1}",
                      begun, begun)
        self.faults.append(fault)
        with trio.move_on_after(10):
            while not standby.said("engine leading", mark):
                await trio.sleep(0.02)
        fault.note = f"new leader said so after {trio.current_time() - begun:.2f} s"
        # A new standby, started beside the schedule (it takes seconds on a busy machine).
        nursery.start_soon(self.restart_engine)

    async def kill_primary(self) -> None:
        """kill -9 of the Redis primary; once the sentinels promote a replica, the killed one
        is started again on its own append-only file, so it rejoins with its data (a replica of
        the new primary), never empty."""
        assert self.cluster is not None
        old = self.cluster.primary
        begun = trio.current_time()
        fault = Fault(f"Redis primary kill -9 #{sum('primary' in f.name for f in self.faults) + 1}",
                      begun, begun)
        self.faults.append(fault)
        await self.cluster.akill(old)
        try:
            await self.cluster.afailover(old)
            fault.note = f"promoted after {trio.current_time() - begun:.2f} s"
        except Exception as exc:  # noqa: BLE001 - a failover that never came is a figure too
            fault.note = f"no failover: {exc}"[:120]
        await trio.sleep(PRIMARY_BACK_S)
        await trio.to_thread.run_sync(old.start)
        try:
            await self.cluster.await_demoted(old)
            fault.note += "; the killed one rejoined as a replica"
        except Exception as exc:  # noqa: BLE001
            fault.note += f"; the killed one did not rejoin: {exc}"[:120]

    def redis_url_now(self) -> str:
        """Where the command log is read at the end: the (current) primary."""
        if self.cluster is not None:
            return f"redis://127.0.0.1:{self.cluster.primary_port()}/0"
        assert self.redis is not None
        return self.redis.url

    async def restart_engine(self) -> None:
        """Start an engine process again, as a deployment's supervisor would (``restart:
        unless-stopped``): a start that fails (PostgreSQL down at that moment: a process
        refuses to start without its database) is retried a second later."""
        for _ in range(30):
            try:
                await self.start_atom("engine", "engine standing by")
                return
            except RuntimeError:
                await trio.sleep(1.0)

    async def revoke(self, http: httpx.AsyncClient, ws: list[Atom]) -> None:
        """A session streaming on both ws processes is revoked: each must close with 4401."""
        token = (await http.post("/api/v1/sceau/activate",
                                 json={"duration_ms": 2000})).json()["session"]
        closed: dict[str, float] = {}
        async with trio.open_nursery() as nursery:
            async def watch(url: str, task_status=trio.TASK_STATUS_IGNORED) -> None:
                async with trio_websocket.open_websocket_url(f"{url}?session={token}&fps=6") as conn:
                    await conn.get_message()
                    task_status.started()
                    try:
                        while True:
                            await conn.get_message()
                    except trio_websocket.ConnectionClosed as gone:
                        if gone.reason.code == 4401:
                            closed[url] = trio.current_time()

            for w in ws:
                await nursery.start(watch, w.ws_url)
            begun = trio.current_time()
            await http.delete("/api/v1/sceau/session", headers={"X-Sceau-Session": token})
            with trio.move_on_after(5):
                while len(closed) < len(ws):
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
        slowest = max((t - begun for t in closed.values()), default=None)
        self.faults.append(Fault("a session revoked (4401 on both ws)", begun, begun,
                                 back_s=slowest, note=f"{len(closed)}/{len(ws)} closed 4401"))

    # -- the load's measuring parts --------------------------------------------------------------

    async def probe(self, url: str, token: str) -> None:
        """A subscriber that timestamps every frame, reconnecting after a failure."""
        arrivals = self.frames.setdefault(url, [])
        while True:
            try:
                async with trio_websocket.open_websocket_url(
                        f"{url}?session={token}&encoding=q16") as conn:
                    while True:
                        if isinstance(await conn.get_message(), bytes):
                            arrivals.append(trio.current_time())
            except (OSError, trio_websocket.HandshakeError, trio_websocket.ConnectionClosed):
                await trio.sleep(0.2)

    async def drive(self, http: httpx.AsyncClient) -> None:
        """About ``--rate`` commands a second (Poisson arrivals), each sent without waiting for
        the ones before it (at most MAX_IN_FLIGHT at once), as one operator."""
        rng = random.Random(7)
        self.operator = operator_headers(self.env, subject="chaos-operator")
        in_flight = trio.Semaphore(MAX_IN_FLIGHT)
        async with trio.open_nursery() as nursery:
            while True:
                if rng.random() < 0.7:
                    body = {"level": rng.choice(("partial", "sectoral"))}
                    if rng.random() < 0.5:
                        body["sphere"] = rng.choice(SPHERES)
                    request = ("/api/v1/swarm/disperse", body)
                else:
                    request = ("/api/v1/swarm/regroup", None)
                await in_flight.acquire()
                nursery.start_soon(self.send, http, request, in_flight)
                await trio.sleep(rng.expovariate(self.args.rate))

    async def send(self, http: httpx.AsyncClient, request: tuple[str, dict | None],
                   in_flight: trio.Semaphore) -> None:
        try:
            self.tally.sent += 1
            pg_down = self.pg_down and not self.redis_down()
            # Its key: a 503 (outcome unknown) is retried with it, and applied at most once.
            headers = {**self.operator, "Idempotency-Key": f"chaos-{uuid.uuid4().hex}"}
            for attempt in range(1 + RETRIES_503):
                sent_at = trio.current_time()
                try:
                    r = await http.post(request[0], json=request[1], headers=headers)
                    status: int | str = r.status_code
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                self.tally.answered_over_1s += trio.current_time() - sent_at > 1.0
                if status != 503 or attempt == RETRIES_503:
                    break
                self.tally.retried_503 += 1
                await trio.sleep(RETRY_503_S)
            if status == 202:
                self.tally.accepted.append(r.json()["command_id"])
                self.tally.accepted_on_retry += attempt > 0
                return
            self.tally.refused[status] += 1
            self.tally.refused_while_pg_down += pg_down
        finally:
            in_flight.release()

    def redis_down(self) -> bool:
        return self.redis is not None and self.redis.proc is None

    # -- the figures -----------------------------------------------------------------------------

    def measure_faults(self) -> None:
        for fault in self.faults:
            times = sorted(t for arrivals in self._surviving_probes(fault) for t in arrivals
                           if fault.at - 1 <= t <= fault.at + 15)
            gaps = [(b - a, b) for a, b in zip(times, times[1:])]
            if gaps:
                fault.gap_s = max(g for g, _ in gaps)
            after = [t for t in times if t > fault.back_from]
            if fault.back_s is None and gaps and "Redis primary" in fault.name:
                # The stream stops a moment after the kill (frames in flight): back when the
                # longest gap of the window ends.
                fault.back_s = max(gaps)[1] - fault.back_from
            if fault.back_s is None and after and "PostgreSQL" not in fault.name:
                # Back: the end of the longest gap that spans the fault's moment, or the first
                # frame after it.
                spanning = [end for g, end in gaps if end - g <= fault.back_from < end]
                fault.back_s = (spanning[0] if spanning else after[0]) - fault.back_from

    def _surviving_probes(self, fault: Fault) -> list[list[float]]:
        probes = list(self.frames.values())
        return probes[:1] if "ws process" in fault.name else probes

    async def account(self) -> dict:
        """Wait until the engine has applied what was accepted (or 30 s), then count."""
        import redis.asyncio as aredis   # the test venv's client, for this check only

        from atom_actors.aio import open_bridge

        async def applied_log() -> list[str]:
            client = aredis.Redis.from_url(self.redis_url_now())
            try:
                return [v.decode() for v in await client.lrange("atom:engine:log", 0, -1)]
            finally:
                await client.aclose()

        accepted = set(self.tally.accepted)
        async with open_bridge() as bridge:
            with trio.move_on_after(30):
                while not accepted <= set(log := await bridge.call(applied_log)):
                    await trio.sleep(0.5)
        counts = Counter(log)
        with trio.move_on_after(30):
            while True:
                rows = await sql(self.pg.url, "SELECT payload->>'command_id' AS id FROM events "
                                              "WHERE kind IN ('dispersal', 'regroup', 'retune')")
                recorded = {r["id"] for r in rows}
                if accepted <= recorded:
                    break
                await trio.sleep(0.5)
        self.measure_faults()
        event_lag = await self.event_lag()
        loaders = self.loader_results
        tracebacks = [f"{atom.role}: {line}" for atom in self.atoms for line in atom.lines
                      if "Traceback" in line or '"level": "error"' in line]
        return {
            "mode": self.args.mode, "subscribers": self.args.subscribers,
            "sent": self.tally.sent, "accepted": len(accepted),
            "refused": {str(k): v for k, v in self.tally.refused.items()},
            "refused_while_only_postgresql_down": self.tally.refused_while_pg_down,
            "retried_503": self.tally.retried_503,
            "accepted_on_retry": self.tally.accepted_on_retry,
            "answered_over_1s": self.tally.answered_over_1s,
            "applied_once": sum(1 for c in accepted if counts[c] == 1),
            "lost": sum(1 for c in accepted if counts[c] == 0),
            "duplicated": sum(1 for c in accepted if counts[c] > 1),
            "in_events_table": len(accepted & recorded),
            "faults": [{"fault": f.name, "at_s": round(f.at - self.t0, 1),
                        "longest_gap_s": _r(f.gap_s), "back_after_s": _r(f.back_s),
                        "note": f.note} for f in self.faults],
            "load": loaders,
            "errors_logged": tracebacks,
            "event_lag": event_lag,
        }

    async def event_lag(self) -> dict:
        """Engine → ws process lag of the event batches, from every live ws process's
        atom_event_lag_seconds (the whole run, faults included): p50 and p99 interpolated in
        the histogram's buckets, and the largest."""
        counts: dict[float, float] = {}
        largest = 0.0
        async with httpx.AsyncClient(timeout=5) as http:
            for atom in self.atoms:
                if atom.role != "ws" or atom.proc.poll() is not None or not atom.api_url:
                    continue
                try:
                    text = (await http.get(f"{atom.api_url}/metrics")).text
                except httpx.HTTPError:
                    continue
                for le, n in re.findall(r'^atom_event_lag_seconds_bucket\{le="([^"]+)"\} (\S+)$',
                                        text, re.M):
                    counts[float(le)] = counts.get(float(le), 0.0) + float(n)
                found = re.search(r"^atom_event_lag_max_seconds (\S+)$", text, re.M)
                largest = max(largest, float(found.group(1))) if found else largest
        bounds = sorted(counts)
        total = counts[bounds[-1]] if bounds else 0.0

        def quantile(q: float) -> float | None:
            if not total:
                return None
            below, low = 0.0, 0.0
            for bound in bounds:
                if counts[bound] >= q * total:
                    high = bound if bound != float("inf") else largest
                    share = (q * total - below) / max(counts[bound] - below, 1e-9)
                    return min(low + (high - low) * share, largest)
                below, low = counts[bound], bound
            return largest

        return {"batches": int(total), "p50_s": _r3(quantile(0.5)), "p99_s": _r3(quantile(0.99)),
                "max_s": _r3(largest if total else None)}


def _read(stream, lines: list[str]) -> None:
    """Keep a process's stderr lines (a thread: the pipe is drained for the process's life)."""
    for line in iter(stream.readline, ""):
        lines.append(line.rstrip("\n"))


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


def _r3(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def print_table(figures: dict, load: str) -> None:
    print(f"\nchaos ({figures['mode']}): 2 engines, 2 ws, 1 api; {figures['subscribers']} "
          f"subscribers; load average at start {load}")
    print(f"{'fault':<40} {'at s':>6} {'longest gap s':>14} {'back after s':>13}  note")
    for f in figures["faults"]:
        gap = "-" if f["longest_gap_s"] is None else f"{f['longest_gap_s']:.2f}"
        back = "-" if f["back_after_s"] is None else f"{f['back_after_s']:.2f}"
        print(f"{f['fault']:<40} {f['at_s']:>6.1f} {gap:>14} {back:>13}  {f['note']}")
    refused = ", ".join(f"{k}: {v}" for k, v in sorted(figures["refused"].items())) or "none"
    print(f"\ncommands: sent {figures['sent']}, accepted {figures['accepted']}, refused "
          f"{sum(figures['refused'].values())} ({refused}; while only PostgreSQL was down: "
          f"{figures['refused_while_only_postgresql_down']}), applied exactly once "
          f"{figures['applied_once']}, lost {figures['lost']}, duplicated "
          f"{figures['duplicated']}, in the events table {figures['in_events_table']}; "
          f"503 retried with their Idempotency-Key {figures['retried_503']} times, accepted "
          f"on a retry {figures['accepted_on_retry']}; answered in over a second "
          f"{figures['answered_over_1s']}")
    lag = figures["event_lag"]
    print(f"event lag, engine → ws process ({lag['batches']} batches, the whole run): p50 "
          f"{lag['p50_s']} s, p99 {lag['p99_s']} s, max {lag['max_s']} s")
    print(f"errors and tracebacks in the processes' logs: {len(figures['errors_logged'])}")
    for line in figures["errors_logged"][:10]:
        print(f"  {line[:300]}")
    for result in figures["load"]:
        print(f"load client: {result.get('connected')}/{result.get('clients')} connected, fps "
              f"mean {result.get('fps_mean')}, gap max {result.get('gap_max_ms')} ms, closes "
              f"{result.get('closes')}, errors {result.get('errors')}")
    for line in figures.get("ws_stats", []):
        print(f"ws process on stop: {line}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=SCHEDULES, default="full")
    parser.add_argument("--redis", choices=("single", "sentinel"), default="single",
                        help="one Redis restarted, or a Sentinel deployment whose primary is "
                             "killed (-9) twice")
    parser.add_argument("--subscribers", type=int, default=None,
                        help="Node load-client subscribers (full 200, short 20; 0: none)")
    parser.add_argument("--rate", type=float, default=2.0, help="commands a second (2)")
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = parser.parse_args()
    if args.subscribers is None:
        args.subscribers = 200 if args.mode == "full" else 20
    if args.subscribers:
        loadclient.prepare()   # exits saying what is missing (or use --subscribers 0)
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    from atom_actors.aio import configure
    configure()   # trio-asyncio, for the check of Redis's applied log and of PostgreSQL
    chaos = Chaos(args)
    try:
        figures = trio.run(chaos.run)
    finally:
        chaos.stop_everything()
    figures["load"] = chaos.loader_results
    # Each ws process's own count on stop (refused handshakes by status, closes by cause): why a
    # load client's subscriber is missing. The killed one says nothing.
    figures["ws_stats"] = [line.split("broadcaster: ", 1)[1] for atom in chaos.atoms
                           if atom.role == "ws" for line in atom.lines if "broadcaster: " in line]
    print_table(figures, load)
    if args.json:
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
