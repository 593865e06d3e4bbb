#!/usr/bin/env python3
"""Scale-out benchmark: subscribers over two ``ws`` processes fed through Redis, the engine in a
third process, against the same subscribers per broadcaster on ``atom serve --role all``.

    .venv/bin/python scripts/bench_scaleout.py --clients 1000 --seconds 12

Starts a throwaway ``redis-server`` on a free port, ``atom serve --role engine``, two
``atom serve --role ws`` (WS_REQUIRE_SESSION=false: a session is checked once per handshake, never
per frame), then opens ``--clients`` subscribers split evenly over the two with the project's Node load
client (clients/js/tools/loadclient.js) (``--procs`` load processes per broadcaster), for ``--seconds``. Then the baseline: one
``atom serve`` (in-process bus) with the same subscribers (``--baseline-clients`` to change it),
so that the difference in latency is what the Redis hop and the extra processes cost.

Prints per run: clients, delivered fps (mean, worst client), frame gap p99, end-to-end latency
p50/p99 (frame header time, set by the engine when it composes, to receipt by the client), CPU of
every server process; and the added latency of the Redis hop (p50 and p99, split minus all).

Targets (issue 5; 2-core machine, 1,000 subscribers over two ws processes): fps mean >= 58,
latency p99 <= 15 ms. The machine is shared: keep runs short; figures are indicative.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ws import Server, _pump, free_port, run_load  # noqa: E402
import loadclient  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {"fps_mean": 58.0, "lat_p99_ms": 15.0}


def start_redis() -> Server:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("bench: redis-server is not installed")
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    server = Server("redis-server", proc.pid, f"redis://127.0.0.1:{port}/0", proc)
    ready = threading.Event()
    threading.Thread(target=_pump, args=(proc.stdout, server.stderr,
                                         lambda line: "Ready to accept" in line and ready.set()),
                     daemon=True).start()
    if not ready.wait(15):
        sys.exit("bench: redis-server did not start:\n" + "".join(server.stderr))
    return server


def start_atom(name: str, role: str, env: dict[str, str], wait_for: str) -> Server:
    proc = subprocess.Popen([sys.executable, "-m", "atom_actors", "serve", "--role", role],
                            cwd=ROOT, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            text=True)
    server = Server(name, proc.pid, "", proc)
    ready = threading.Event()
    threading.Thread(target=_pump, args=(proc.stderr, server.stderr,
                                         lambda line: wait_for in line and ready.set()),
                     daemon=True).start()
    if not ready.wait(30):
        server.stop()
        sys.exit(f"bench: {name} did not start:\n{''.join(server.stderr)}")
    line = next((line for line in server.stderr if "serving:" in line), "")
    found = re.search(r"ws (ws://\S+?)(,|$|\s)", line)
    server.url = found.group(1) if found else ""
    return server


def atom_env(args: argparse.Namespace, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.isupper() or k in ("PATH", "HOME", "LANG")}
    env.update(API_PORT="0", WS_PORT="0", PYTHONUNBUFFERED="1", WS_REQUIRE_SESSION="false",
               TICK_HZ=str(args.tick_hz), SECRET_KEY="bench-" + "k" * 40,
               WS_MAX_CONNECTIONS=str(max(args.clients, args.baseline_clients) + 10),
               # one load client, one address (often one session): no fair share here (issue 24)
               WS_MAX_PER_SESSION=str(max(args.clients, args.baseline_clients) + 10),
               WS_MAX_PER_ADDRESS=str(max(args.clients, args.baseline_clients) + 10))
    env.update(extra)
    return env


class Group:
    """Several servers measured as one (the split run's CPU is the sum of its processes')."""

    def __init__(self, servers: list[Server]) -> None:
        self.servers = servers

    def cpu_s(self) -> tuple[float, float]:
        parts = [s.cpu_s() for s in self.servers]
        return sum(p[0] for p in parts), sum(p[1] for p in parts)

    def rss_mb(self) -> float:
        return sum(s.rss_mb() for s in self.servers)


def measure(targets: list[tuple[str, int]], watched: list[Server],
            args: argparse.Namespace) -> tuple[dict, dict[str, float]]:
    """Load every (url, clients) target at once; return the merged result and CPU per process."""
    results: list[dict] = []
    cpu0 = {s.name: sum(s.cpu_s()) for s in watched}
    t0 = time.monotonic()

    def one(url: str, clients: int) -> None:
        sub = argparse.Namespace(**{**vars(args), "clients": clients})
        results.append(run_load(Group(watched), f"{url}?encoding=f32", sub))

    threads = [threading.Thread(target=one, args=t) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - t0
    # run_load's own CPU figure covers its measuring window; per process we take the whole run.
    cpu = {s.name: (sum(s.cpu_s()) - cpu0[s.name]) / elapsed for s in watched}
    connected = sum(r["clients"] for r in results)
    merged = {
        "clients": connected,
        "fps_mean": sum(r["fps_mean"] * r["clients"] for r in results) / max(connected, 1),
        "fps_min": min(r["fps_min"] for r in results),
        "gap_p99_ms": max(r["gap_p99_ms"] for r in results),
        "lat_p50_ms": max(r["lat_p50_ms"] for r in results),
        "lat_p99_ms": max(r["lat_p99_ms"] for r in results),
        "errors": sum(r["errors"] for r in results),
        "load_cpu_cores": sum(r["load_cpu_cores"] for r in results),
    }
    return merged, cpu


def run_split(args: argparse.Namespace) -> tuple[dict, dict[str, float]]:
    redis = start_redis()
    servers = [redis]
    try:
        env = atom_env(args, REDIS_URL=redis.url)
        servers.append(start_atom("engine", "engine", env, "engine leading"))
        ws = [start_atom(f"ws-{i + 1}", "ws", env, "serving:") for i in range(2)]
        servers += ws
        time.sleep(1.0)   # let the engine and the subscriptions settle
        half = args.clients // 2
        return measure([(ws[0].url, half), (ws[1].url, args.clients - half)], servers, args)
    finally:
        for server in reversed(servers):
            server.stop()


def run_all(args: argparse.Namespace, clients: int) -> tuple[dict, dict[str, float]]:
    server = start_atom("atom (all)", "all", atom_env(args), "serving:")
    try:
        time.sleep(1.0)
        return measure([(server.url, clients)], [server], args)
    finally:
        server.stop()


def print_rows(rows: list[tuple[str, dict, dict[str, float]]], args: argparse.Namespace, load: str) -> None:
    print(f"\nScale-out: {args.seconds} s windows, f32 at {args.tick_hz} fps, "
          f"{args.procs} load process(es) per broadcaster")
    print(f"machine: {os.cpu_count()} cores shared with other work (load average at start {load}); "
          "figures are indicative")
    print(f"{'run':<34}{'clients':>8}{'fps mean':>10}{'fps min':>9}{'gap p99':>9}{'lat p50':>9}"
          f"{'lat p99':>9}  cpu cores per process")
    for name, r, cpu in rows:
        per = ", ".join(f"{k} {v:.2f}" for k, v in cpu.items())
        print(f"{name:<34}{r['clients']:>8}{r['fps_mean']:>10.2f}{r['fps_min']:>9.2f}"
              f"{r['gap_p99_ms']:>9.1f}{r['lat_p50_ms']:>9.1f}{r['lat_p99_ms']:>9.1f}  {per}")
    print(f"{'targets (split)':<34}{'1000':>8}{'>=' + str(TARGETS['fps_mean']):>10}{'':>9}{'':>9}{'':>9}"
          f"{'<=' + str(TARGETS['lat_p99_ms']):>9}")
    if len(rows) == 2:
        split, base = rows[0][1], rows[1][1]
        print(f"added latency of the Redis hop (split minus all): "
              f"p50 {split['lat_p50_ms'] - base['lat_p50_ms']:+.1f} ms, "
              f"p99 {split['lat_p99_ms'] - base['lat_p99_ms']:+.1f} ms")
    for name, r, _ in rows:
        print(f"  {name}: load side used {r['load_cpu_cores']:.2f} cores; client errors/closes {r['errors']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--seconds", type=int, default=12)
    parser.add_argument("--procs", type=int, default=1, help="load processes per broadcaster")
    parser.add_argument("--ramp-ms", type=int, default=3000)
    parser.add_argument("--tick-hz", type=int, default=60)
    parser.add_argument("--no-baseline", action="store_true", help="skip the --role all run")
    parser.add_argument("--baseline-clients", type=int, default=0,
                        help="subscribers of the --role all run (default: the same as the split "
                             "run's; clients / 2 compares one broadcaster's load)")
    args = parser.parse_args()
    args.deflate = False
    loadclient.prepare()
    load = f"{os.getloadavg()[0]:.1f}"
    rows = []
    result, cpu = run_split(args)
    rows.append(("split: engine + 2 ws over Redis", result, cpu))
    if not args.no_baseline:
        result, cpu = run_all(args, args.baseline_clients or args.clients)
        rows.append(("role all, in-process bus", result, cpu))
    print_rows(rows, args, load)


if __name__ == "__main__":
    main()
