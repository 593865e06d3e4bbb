#!/usr/bin/env python3
"""Load benchmark of L'Essaim's broadcaster: N subscribers, from separate load processes.

Starts ``atom serve`` (or targets ``--url``), opens N subscribers with the project's Node load
client (``clients/js/tools/loadclient.js``: SDK clients, as a frontend subscribes; spread over
``--procs`` processes so the load side is not the bottleneck), runs S seconds per encoding of ``--encoding`` (a comma-separated list, one after
the other on the same server) and prints one table: clients, delivered fps per client (mean,
min), frame gap p99, end-to-end latency p50/p99 (frame header time to receipt), bytes a frame and
a subscriber-second (frame payloads; ``wire`` adds the WebSocket framing), server CPU in cores,
server RSS at start and end, frames dropped. ``--peer`` runs the Python ``websockets`` peer
(``--peer node``: the Node ``ws`` one) under the same load in the same run, on f32, for the ratio
(absolute figures drift between runs); the peers are not part of the project: they are looked
for in ``--peers`` (copied there from ../shared/peers when that exists), and a run without them
says so and prints our rows only. ``--disperse-at S`` orders a total dispersal S seconds
into each window (agents fly out, dwell DISPERSAL_DWELL_S, come home: the delta stream's worst).

    python3 -m venv /tmp/peervenv && /tmp/peervenv/bin/pip install websockets numpy   # for --peer
    .venv/bin/python scripts/bench_ws.py --clients 500 --seconds 12 --peer
    .venv/bin/python scripts/bench_ws.py --clients 500 --seconds 12 --encoding f32,q16,delta --peer node
    .venv/bin/python scripts/bench_ws.py --clients 10 --seconds 60 --encoding delta --fps 20 --disperse-at 10
    .venv/bin/python scripts/bench_ws.py --soak 300            # RSS sampled every 10 s

Sessions: with WS_REQUIRE_SESSION on, pass ``--session TOKEN``, or ``--session-url URL`` to POST
``{"duration_ms": ...}`` there (``/api/v1/sceau/activate``) and use the token it returns;
``--session-url api`` asks the started server's own API. Without either, the started server runs
with WS_REQUIRE_SESSION=false.

Targets (issue 3; 2-core machine, 500 clients, 60 fps, f32): fps mean >= 59.5, worst >= 58,
gap p99 <= 25 ms, latency p99 <= 10 ms, server CPU <= 0.2 core, RSS flat within 5 % over a
5-minute soak. Issue 11 (delta): mean <= 450 B a frame at 60 fps and <= 650 B at 20 fps over 60 s
with a total dispersal; at 500 subscribers fps mean >= 59.5, worst >= 58; server CPU no more
than on f32 in the same run and within 5 % of the Node ``ws`` peer on f32.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import loadclient  # scripts/loadclient.py, beside this file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from atom_operator import operator_env, operator_headers  # noqa: E402
# Optional: the peer servers for --peer (never the load client: that is the project's own).
PEERS_SOURCE = next((p for p in (ROOT.parent / "shared" / "peers", ROOT.parent.parent / "shared" / "peers")
                     if p.is_dir()), ROOT.parent / "shared" / "peers")
CLK_TCK = os.sysconf("SC_CLK_TCK")
TARGETS = {"fps_mean": 59.5, "fps_min": 58.0, "gap_p99_ms": 25.0, "lat_p99_ms": 10.0,
           "cpu_cores": 0.2}
DELTA_BYTES_TARGET = {60: 450, 20: 650}   # mean bytes a delta frame, over 60 s with a dispersal
ENCODINGS = ("f32", "q16", "json", "delta")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A server process we started (or only watch, with ``proc=None``)."""

    name: str
    pid: int
    url: str
    proc: subprocess.Popen | None = None
    stderr: list[str] = field(default_factory=list)

    def cpu_s(self) -> tuple[float, float]:
        """(user, system) CPU seconds of the server so far."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> str:
        if self.proc is None:
            return ""
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        time.sleep(0.2)
        return "".join(self.stderr)


def _pump(stream, sink: list[str], on_line=None) -> None:
    for line in iter(stream.readline, ""):
        sink.append(line)
        if on_line:
            on_line(line)


def start_atom(args: argparse.Namespace) -> tuple[Server, str | None]:
    """``atom serve`` on a free WS port; returns the server and its API URL if it has one."""
    env = dict(os.environ, WS_PORT=str(free_port()), API_PORT="0", PYTHONUNBUFFERED="1",
               WS_MAX_CONNECTIONS=str(max(500, args.clients + 10)),
               # one load client, one address (often one session): no fair share here (issue 24)
               WS_MAX_PER_SESSION=str(max(500, args.clients + 10)),
               WS_MAX_PER_ADDRESS=str(max(500, args.clients + 10)), TICK_HZ=str(args.tick_hz))
    if not (args.session or args.session_url):
        env["WS_REQUIRE_SESSION"] = "false"
    if args.disperse_at:   # one total dispersal a window: the Brise-Circuit must let them pass
        env.update(SAFEGUARD_MAX_TOTAL="1000", SAFEGUARD_MAX_COMMANDS="1000", **operator_env())
    proc = subprocess.Popen([sys.executable, "-m", "atom_actors", "serve"], cwd=ROOT, env=env,
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    server = Server("atom_actors", proc.pid, "", proc)
    serving = threading.Event()
    threading.Thread(target=_pump, args=(proc.stderr, server.stderr,
                                         lambda line: "serving:" in line and serving.set()),
                     daemon=True).start()
    if not serving.wait(30):
        server.stop()
        sys.exit(f"bench: atom serve did not start:\n{''.join(server.stderr)}")
    line = next(line for line in server.stderr if "serving:" in line)
    server.url = re.search(r"ws (ws://\S+?)(,|$|\s)", line).group(1)
    api = re.search(r"api (http://\S+?)(,|$|\s)", line)
    return server, api.group(1) if api else None


def start_peer(args: argparse.Namespace, peers: Path) -> Server:
    port = free_port()
    if args.peer == "node":
        command = ["node", str(peers / "peer_node_ws.js"), "--port", str(port)]
    else:
        command = [args.peer_python, str(peers / "peer_websockets.py"), "--port", str(port)]
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    server = Server(f"{args.peer} peer f32", proc.pid, f"ws://127.0.0.1:{port}/ws/swarm", proc)
    threading.Thread(target=_pump, args=(proc.stderr, server.stderr), daemon=True).start()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server
        except OSError:
            time.sleep(0.1)
    server.stop()
    sys.exit(f"bench: the websockets peer did not start:\n{''.join(server.stderr)}")


def open_session(session_url: str, duration_ms: int) -> str:
    request = urllib.request.Request(session_url, method="POST",
                                     data=json.dumps({"duration_ms": duration_ms}).encode(),
                                     headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())["session"]


def prepare_peers(peers: Path) -> Path | None:
    """The optional peer servers (``--peer``), with ``ws`` installed beside them; None, said on
    stdout, when they are not there."""
    if (peers / "node_modules" / "ws").is_dir():
        return peers
    if not peers.exists():
        if not PEERS_SOURCE.is_dir():
            print(f"# peer: no peer servers in {peers} nor {PEERS_SOURCE}: no comparison row")
            return None
        shutil.copytree(PEERS_SOURCE, peers)
    subprocess.run(["npm", "install", "--silent"], cwd=peers, check=True)
    return peers


def run_load(server: Server, url: str, args: argparse.Namespace,
             during: Callable[[], None] | None = None) -> dict:
    """Run the load processes against ``url``; measure the server over their common window.
    ``during`` is called (in a thread) ``--disperse-at`` seconds into the window."""
    shares = [args.clients // args.procs + (i < args.clients % args.procs) for i in range(args.procs)]
    procs, outputs = [], []
    started, ended = threading.Semaphore(0), threading.Event()
    for share in shares:
        proc = subprocess.Popen(
            loadclient.command(url, share, args.seconds, ramp_ms=args.ramp_ms,
                               deflate=args.deflate),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines: list[str] = []

        def on_line(line: str) -> None:
            if line.startswith("# window start"):
                started.release()
            elif line.startswith("# window end"):
                ended.set()

        threading.Thread(target=_pump, args=(proc.stdout, lines, on_line), daemon=True).start()
        procs.append(proc)
        outputs.append(lines)
    for _ in shares:
        started.acquire(timeout=120)
    t0, cpu0, rss0 = time.monotonic(), server.cpu_s(), server.rss_mb()
    rss_samples = [rss0]
    if during is not None:
        timer = threading.Timer(args.disperse_at, during)
        timer.daemon = True
        timer.start()
    while not ended.wait(timeout=min(10.0, args.seconds)):
        rss_samples.append(server.rss_mb())
    t1, cpu1, rss1 = time.monotonic(), server.cpu_s(), server.rss_mb()
    rss_samples.append(rss1)
    for proc in procs:
        proc.wait(timeout=60)
    results = []
    for lines in outputs:
        found = [json.loads(line) for line in lines if line.startswith("{")]
        if not found:
            sys.exit("bench: a load process gave no result:\n" + "".join(lines))
        results.append(found[-1])
    connected = sum(r["connected"] for r in results)
    frames = sum(r["fps_mean"] * r["connected"] * r["seconds"] for r in results)
    payload = sum((r["bytes_per_frame"] or 0) * r["fps_mean"] * r["connected"] * r["seconds"]
                  for r in results)
    wire = sum((r["wire_bytes_per_frame"] or 0) * r["fps_mean"] * r["connected"] * r["seconds"]
               for r in results)
    return {
        "clients": connected,
        "fps_mean": sum(r["fps_mean"] * r["connected"] for r in results) / max(connected, 1),
        "fps_min": min(r["fps_min"] for r in results),
        # Percentiles of separate processes cannot be merged: the worst process's is shown.
        "gap_p99_ms": max(r["gap_p99_ms"] or 0 for r in results),
        "lat_p50_ms": max(r["lat_p50_ms"] or 0 for r in results),
        "lat_p99_ms": max(r["lat_p99_ms"] or 0 for r in results),
        "cpu_cores": (sum(cpu1) - sum(cpu0)) / (t1 - t0),
        "cpu_sys_cores": (cpu1[1] - cpu0[1]) / (t1 - t0),
        "rss_start_mb": rss0, "rss_end_mb": rss1,
        "rss_min_mb": min(rss_samples), "rss_max_mb": max(rss_samples),
        "skipped_frac": max(r["skipped_frac"] or 0 for r in results),
        "errors": sum(r["errors"] + r["closes"] + r["bad_frames"] for r in results),
        "extensions": results[0]["extensions"],
        "load_cpu_cores": sum(r["client_cpu_cores"] for r in results),
        "window_s": t1 - t0,
        # Mean bytes of a frame's payload (and on the wire, with the WebSocket framing), and what
        # one subscriber receives per second.
        "bytes_per_frame": payload / max(frames, 1),
        "wire_bytes_per_frame": wire / max(frames, 1),
        "kbytes_per_sub_s": payload / max(frames, 1)
        * sum(r["fps_mean"] * r["connected"] for r in results) / max(connected, 1) / 1000,
    }


def frames_dropped(api: str | None) -> float | None:
    """atom_frames_dropped_total from the started server's /metrics (None without an API)."""
    if api is None:
        return None
    try:
        with urllib.request.urlopen(f"{api}/metrics", timeout=5) as response:
            found = re.search(rb"^atom_frames_dropped_total (\S+)$", response.read(), re.M)
    except OSError:
        return None
    return float(found.group(1)) if found else None


def dropped_between(api: str | None, before: float | None) -> str:
    after = frames_dropped(api)
    return "?" if before is None or after is None else f"{after - before:.0f}"


def dropped_by_server(stderr: str) -> str:
    match = re.search(r"frames sent (\d+), frames dropped (\d+)", stderr)
    if not match:
        return "?"
    sent, dropped = int(match.group(1)), int(match.group(2))
    return f"{dropped} ({100 * dropped / max(sent + dropped, 1):.2f} %)"


def print_table(rows: list[tuple[str, dict, str]], args: argparse.Namespace, load: str) -> None:
    fps = args.fps or args.tick_hz
    print(f"\nL'Essaim broadcaster, {args.clients} subscribers over {args.procs} load processes, "
          f"{args.seconds} s window per row, at {fps} fps, permessage-deflate "
          f"{'offered' if args.deflate else 'not offered'}"
          + (f", a total dispersal {args.disperse_at:g} s into each window" if args.disperse_at
             else ""))
    print(f"machine: {os.cpu_count()} cores, shared with other work (load average at start {load});"
          " figures are indicative, ratios hold better")
    header = (f"{'server':<22}{'clients':>8}{'fps mean':>9}{'fps min':>8}{'gap p99':>8}"
              f"{'lat p50':>8}{'lat p99':>8}{'B/frame':>9}{'wire B':>8}{'kB/s/sub':>9}{'cpu':>7}"
              f"{'cpu/frame':>10}"
              f"{'rss start':>10}{'rss end':>8}{'dropped (server)':>18}{'skipped':>9}")
    print(header)
    print(f"{'':<22}{'':>8}{'':>9}{'':>8}{'ms':>8}{'ms':>8}{'ms':>8}{'':>9}{'':>8}{'':>9}"
          f"{'cores':>7}{'µs':>10}{'MB':>10}{'MB':>8}")
    for name, r, dropped in rows:
        print(f"{name:<22}{r['clients']:>8}{r['fps_mean']:>9.2f}{r['fps_min']:>8.2f}"
              f"{r['gap_p99_ms']:>8.1f}{r['lat_p50_ms']:>8.1f}{r['lat_p99_ms']:>8.1f}"
              f"{r['bytes_per_frame']:>9.0f}{r['wire_bytes_per_frame']:>8.0f}"
              f"{r['kbytes_per_sub_s']:>9.1f}{r['cpu_cores']:>7.3f}{cpu_per_frame_us(r):>10.2f}"
              f"{r['rss_start_mb']:>10.1f}"
              f"{r['rss_end_mb']:>8.1f}{dropped:>18}{100 * r['skipped_frac']:>8.2f}%")
    peer = next((r for name, r, _ in rows if "peer" in name), None)
    if peer is not None:
        for name, r, _ in rows:
            if "peer" not in name:
                print(f"  ratio {name} / peer: CPU {r['cpu_cores'] / max(peer['cpu_cores'], 1e-9):.2f}, "
                      f"latency p50 {r['lat_p50_ms'] / max(peer['lat_p50_ms'], 1e-9):.2f}, "
                      f"p99 {r['lat_p99_ms'] / max(peer['lat_p99_ms'], 1e-9):.2f}")
    t = TARGETS
    print(f"targets (500, 60 fps): fps mean >= {t['fps_mean']}, worst >= {t['fps_min']}, gap p99 <= "
          f"{t['gap_p99_ms']} ms, latency p99 <= {t['lat_p99_ms']} ms, CPU (f32) <= {t['cpu_cores']}; "
          f"delta: <= {DELTA_BYTES_TARGET[60]} B/frame at 60 fps, <= {DELTA_BYTES_TARGET[20]} at 20 "
          "(60 s with a total dispersal), CPU <= f32's and within 5 % of the Node ws peer's")
    for name, r, _ in rows:
        notes = [f"server CPU in the kernel {r['cpu_sys_cores']:.3f} cores",
                 f"load side used {r['load_cpu_cores']:.2f} cores",
                 f"extensions {r['extensions']}", f"client errors/closes {r['errors']}"]
        if args.soak:
            drift = 100 * (r["rss_max_mb"] - r["rss_min_mb"]) / max(r["rss_min_mb"], 1e-9)
            notes.append(f"RSS over the soak {r['rss_min_mb']:.1f}..{r['rss_max_mb']:.1f} MB "
                         f"({drift:.1f} %)")
        print(f"  {name}: " + "; ".join(notes))
    print("  cpu/frame: server CPU per frame delivered to one subscriber (CPU / (fps mean x "
          "clients)): comparable across rows when a busy machine delivers fewer frames to some")
    if args.fps and args.fps < args.tick_hz:
        print(f"  skipped: seq gaps seen by the clients; at {args.fps} of {args.tick_hz} fps, "
              f"{100 * (1 - args.fps / args.tick_hz):.2f} % are the decimation itself")
    for line in checks(rows, args):
        print(f"  check: {line}")
    print("  result: " + "  ".join(
        f"{name}={r['bytes_per_frame']:.0f}B/frame,{r['fps_mean']:.2f}fps,{r['cpu_cores']:.3f}cores"
        for name, r, _ in rows))


def checks(rows: list[tuple[str, dict, str]], args: argparse.Namespace) -> list[str]:
    """Issue 11's targets against this run, each said met or not (and when the run is too short
    or too small for one to apply)."""
    fps = args.fps or args.tick_hz
    verdict = {True: "met", False: "NOT MET"}
    found = {name.rsplit(" ", 1)[-1] if "peer" not in name else name: r for name, r, _ in rows}
    out = []
    delta = found.get("delta")
    if delta is not None and fps in DELTA_BYTES_TARGET:
        full = args.seconds >= 60 and args.disperse_at
        out.append(f"delta {delta['bytes_per_frame']:.0f} B/frame <= {DELTA_BYTES_TARGET[fps]} at "
                   f"{fps} fps: {verdict[delta['bytes_per_frame'] <= DELTA_BYTES_TARGET[fps]]}"
                   + ("" if full else " (indicative: the target is over --seconds 60 with "
                                      "--disperse-at)"))
    if delta is not None and args.clients >= 500 and fps == 60:
        ok = delta["fps_mean"] >= TARGETS["fps_mean"] and delta["fps_min"] >= TARGETS["fps_min"]
        out.append(f"delta fps {delta['fps_mean']:.2f} / worst {delta['fps_min']:.2f} >= "
                   f"{TARGETS['fps_mean']} / {TARGETS['fps_min']}: {verdict[ok]}")
    if delta is not None and "f32" in found:
        out.append(f"delta CPU {delta['cpu_cores']:.3f} <= f32's {found['f32']['cpu_cores']:.3f}: "
                   f"{verdict[delta['cpu_cores'] <= found['f32']['cpu_cores']]} (per frame sent "
                   f"{cpu_per_frame_us(delta):.1f} vs {cpu_per_frame_us(found['f32']):.1f} µs)")
    node = found.get("node peer f32")
    if delta is not None and node is not None:
        ratio = delta["cpu_cores"] / max(node["cpu_cores"], 1e-9)
        out.append(f"delta CPU within 5 % of the Node ws peer on f32: x{ratio:.2f}: "
                   f"{verdict[ratio <= 1.05]} (per frame sent {cpu_per_frame_us(delta):.1f} vs "
                   f"{cpu_per_frame_us(node):.1f} µs)")
    return out


def cpu_per_frame_us(r: dict) -> float:
    return r["cpu_cores"] * 1e6 / max(r["fps_mean"] * r["clients"], 1e-9)


def disperse(api: str | None) -> Callable[[], None]:
    """A total dispersal through the started server's API, as the scripts' operator."""
    operator = operator_headers(os.environ)

    def order() -> None:
        if api is None:
            print("bench: --disperse-at needs the started server's API", file=sys.stderr)
            return
        request = urllib.request.Request(
            f"{api}/api/v1/swarm/disperse", method="POST", data=b'{"level": "total"}',
            headers={"content-type": "application/json", **operator})
        with urllib.request.urlopen(request, timeout=10) as response:
            print(f"# total dispersal ordered: {json.loads(response.read())['dispersed']} agents",
                  file=sys.stderr)
    return order


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--seconds", type=int, default=12)
    parser.add_argument("--soak", type=int, default=0, metavar="S",
                        help="soak for S seconds (e.g. 300): RSS is sampled every 10 s")
    parser.add_argument("--procs", type=int, default=2, help="load processes")
    parser.add_argument("--ramp-ms", type=int, default=3000)
    parser.add_argument("--encoding", default="f32",
                        help=f"comma-separated, one window each: {','.join(ENCODINGS)}")
    parser.add_argument("--fps", type=int, default=0, help="0: TICK_HZ")
    parser.add_argument("--tick-hz", type=int, default=60)
    parser.add_argument("--deflate", action="store_true",
                        help="offer permessage-deflate, as browsers do (ours declines it)")
    parser.add_argument("--url", help="target a running server instead of starting atom serve")
    parser.add_argument("--server-pid", type=int, help="with --url: the server to measure")
    parser.add_argument("--session", help="a Sceau session token to present")
    parser.add_argument("--session-url", help="POST here to open a session ('api': ours)")
    parser.add_argument("--session-ms", type=int, default=2000)
    parser.add_argument("--peer", nargs="?", const="websockets", choices=("websockets", "node"),
                        help="also run a peer on f32: Python websockets (default) or Node ws")
    parser.add_argument("--disperse-at", type=float, default=0, metavar="S",
                        help="order a total dispersal S seconds into each window")
    parser.add_argument("--peer-python", default="/tmp/peervenv/bin/python")
    parser.add_argument("--peers", type=Path, default=Path("/tmp/peers"),
                        help="where the optional peer servers are (or are copied to)")
    parser.add_argument("--dwell-s", type=float, default=8.0,
                        help="with --disperse-at: pause between windows while agents come home")
    args = parser.parse_args()
    encodings = [e.strip() for e in args.encoding.split(",") if e.strip()]
    if not encodings or set(encodings) - set(ENCODINGS):
        parser.error(f"--encoding: a comma-separated list of {', '.join(ENCODINGS)}")
    if args.soak:
        args.seconds = args.soak
    loadclient.prepare()
    load = f"{os.getloadavg()[0]:.1f}"

    if args.url:
        if not args.server_pid:
            sys.exit("bench: --url needs --server-pid to measure the server's CPU and RSS")
        server, api = Server("target", args.server_pid, args.url), None
    else:
        server, api = start_atom(args)
    rows = []
    try:
        session = args.session
        if args.session_url:
            target = f"{api}/api/v1/sceau/activate" if args.session_url == "api" else args.session_url
            if target.startswith("None"):
                sys.exit("bench: the started server has no API to open a session with")
            session = open_session(target, args.session_ms)
        time.sleep(1.0)   # let the engine settle
        during = disperse(api) if args.disperse_at else None
        for encoding in encodings:
            query = [f"encoding={encoding}"] + ([f"fps={args.fps}"] if args.fps else []) \
                + ([f"session={session}"] if session else [])
            dropped0 = frames_dropped(api)
            ours = run_load(server, f"{server.url}?{'&'.join(query)}", args, during)
            rows.append((f"{server.name} {encoding}", ours, dropped_between(api, dropped0)))
            if during is not None and encoding != encodings[-1]:
                time.sleep(args.dwell_s)   # the agents come home before the next window
    finally:
        stderr = server.stop()
    if len(encodings) == 1 and rows:   # the one window: the server's own count on stop
        rows[0] = (rows[0][0], rows[0][1], dropped_by_server(stderr))
    peers = prepare_peers(args.peers) if args.peer else None
    if peers is not None:
        peer = start_peer(args, peers)
        try:
            time.sleep(1.0)
            theirs = run_load(peer, f"{peer.url}?encoding=f32", args)
        finally:
            peer.stop()
        rows.append((peer.name, theirs, "n/a"))
    print_table(rows, args, load)


if __name__ == "__main__":
    main()
