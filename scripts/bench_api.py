#!/usr/bin/env python3
"""REST under load while the swarm streams (issue 4's benchmark), and what operators' tokens
cost (issue 19's).

Starts ``atom serve`` (API_PORT=0, WS_PORT=0) whose operators' keys are ES256 keys served by the
bench itself (a JWKS on loopback, OPERATOR_ISSUER/OPERATOR_JWKS_URL as for Supabase Auth), opens
a Sceau session, connects N WebSocket subscribers when the process serves L'Essaim
(the project's Node load client), then drives, one after the other, with ``wrk`` (Debian
package; a Lua pacer gives each request the next slot of a 1/rate schedule; ``--rate 0``: as fast
as ``--connections`` allow):

    GET  /api/v1/swarm/agents                           (the viewer's session)
    POST /api/v1/swarm/disperse  {"level": "partial"}   (an operator's ES256 bearer token)

and prints each run's rate, latency p50/p99/max, non-2xx answers and the server's CPU, then the
subscribers' fps over the whole window. Targets: REST p99 <= 50 ms at 200 requests/s, subscribers
>= 59 fps.

``--baseline REV`` runs the same bench, in the same run, on the tree of git revision REV (a
worktree; by default the last commit before operators' tokens, whose commands took a Sceau
session and verified nothing), alternating ``--runs`` times, so that the token's cost is read off
one machine in one state: issue 19's target is at most 10 % fewer commands per second. The
verification's own cost (µs per token, in this process) is printed first.

The Brise-Circuit would trip on a disperse flood (that is its job): the bench raises
SAFEGUARD_MAX_COMMANDS and SAFEGUARD_MAX_TOTAL for its own server, and says so.

    python3 scripts/bench_api.py [--seconds 10] [--rate 200] [--clients 500] [--connections 10]

Needs ``wrk`` (apt-get install wrk); the subscribers need ``node`` (clients/js/tools/loadclient.js,
its ``ws`` installed from clients/js's lock file when missing).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import loadclient  # scripts/loadclient.py, beside this file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.operators import AUDIENCE, Jwks, claims, new_key, serve_jwks  # noqa: E402

BASELINE_REV = "047ccf2"      # main before operators' tokens: commands took a Sceau session
ISSUER = "https://bench.supabase.co/auth/v1"
TARGET_P99_MS = 50.0
TARGET_FPS = 59.0

WRK_SCRIPT = """
-- A fixed arrival rate: each request takes the next free slot of a 1/rate schedule (LuaJIT's FFI
-- reads the monotonic clock); the connections only bound how many may be in flight at once.
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } atom_timespec;
int clock_gettime(int clk_id, atom_timespec *tp);
]]
local ts = ffi.new("atom_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts)
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end
wrk.method = "%(method)s"
wrk.body = %(body)s
wrk.headers["Content-Type"] = "application/json"
%(headers)s
local interval_ms = %(interval_ms)f
local next_slot = nil
function delay()
  if interval_ms <= 0 then return 0 end
  local now = now_ms()
  local slot = math.max(next_slot or now, now)
  next_slot = slot + interval_ms
  return slot - now
end
function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %%d, "duration_s": %%f, "non_2xx": %%d, "socket_errors": %%d, ' ..
    '"p50_ms": %%f, "p90_ms": %%f, "p99_ms": %%f, "max_ms": %%f}\\n',
    summary.requests, summary.duration / 1e6, errors.status,
    errors.connect + errors.read + errors.write + errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000))
end
"""


def start_server(clients: int, jwks_url: str, tree: Path = ROOT
                 ) -> tuple[subprocess.Popen, str, str | None]:
    """``atom serve`` of ``tree`` (its package first on the path: the baseline's worktree)."""
    env = {k: v for k, v in os.environ.items() if not k.isupper() or k in ("PATH", "HOME", "LANG")}
    env.update(API_PORT="0", WS_PORT="0", PYTHONUNBUFFERED="1", PYTHONPATH=str(tree),
               SAFEGUARD_MAX_COMMANDS="1000000", SAFEGUARD_MAX_TOTAL="1000000",
               WS_MAX_CONNECTIONS=str(max(clients + 10, 500)),
               # one load client, one address (often one session): no fair share here (issue 24)
               WS_MAX_PER_SESSION=str(max(clients + 10, 500)),
               WS_MAX_PER_ADDRESS=str(max(clients + 10, 500)),
               OPERATOR_ISSUER=ISSUER, OPERATOR_JWKS_URL=jwks_url)
    python = ROOT / ".venv" / "bin" / "python"
    proc = subprocess.Popen([str(python if python.exists() else sys.executable), "-m",
                             "atom_actors", "serve"], cwd=tempfile.mkdtemp(), env=env,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    for line in proc.stderr:
        if "serving:" in line:
            api = re.search(r"api (http://[^,\s]+)", line)
            ws = re.search(r"ws (ws://[^,\s]+)", line)
            if api is None:
                proc.terminate()
                raise SystemExit(f"no API in: {line.strip()}")
            # Keep draining stderr so the server never blocks on a full pipe.
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            return proc, api.group(1), ws.group(1) if ws else None
        if time.monotonic() > deadline:
            break
    proc.terminate()
    raise SystemExit("atom serve did not start")


def session(api: str) -> str:
    request = urllib.request.Request(f"{api}/api/v1/sceau/activate", method="POST",
                                     data=b'{"duration_ms": 2000}',
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)["session"]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_wrk(url: str, method: str, body: str | None, headers: dict[str, str], seconds: int,
            rate: int, connections: int, server_pid: int) -> dict:
    lines = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())
    script = WRK_SCRIPT % {"method": method, "body": json.dumps(body) if body else "nil",
                           "headers": lines, "interval_ms": 1000.0 / rate if rate else 0.0}
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
    cpu0, t0 = cpu_seconds(server_pid), time.monotonic()
    done = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s",
                           "-s", f.name, url], capture_output=True, text=True, check=True)
    cpu = (cpu_seconds(server_pid) - cpu0) / (time.monotonic() - t0)
    os.unlink(f.name)
    line = next(l for l in done.stdout.splitlines() if l.startswith("WRKJSON "))
    result = json.loads(line.removeprefix("WRKJSON "))
    result["rate"] = round(result["requests"] / result["duration_s"], 1)
    result["server_cpu_cores"] = round(cpu, 2)
    return result


def verification_cost_us(rounds: int = 2000) -> dict[str, float]:
    """What :func:`atom_actors.operators.tokens.verify` costs per token, by algorithm, here."""
    from atom_actors.audit import derive_key
    from atom_actors.operators.tokens import Keys, Policy, parse_jwks, verify
    policy = Policy(ISSUER, AUDIENCE, ("user_role",), derive_key("k" * 40, "audit-pseudonym"))
    now = time.time()
    found = {}
    for alg in ("ES256", "RS256", "EdDSA", "HS256"):
        if alg == "HS256":
            import jwt
            secret = "s" * 40
            token = jwt.encode({**claims(now=now), "iss": ISSUER}, secret, algorithm="HS256")
            keys = Keys(secret=secret.encode())
        else:
            key = new_key(alg)
            token = key.sign({**claims(now=now), "iss": ISSUER})
            keys = Keys(parse_jwks(json.dumps({"keys": [key.jwk]}).encode()))
        verify(token, keys, now, policy)
        started = time.perf_counter()
        for _ in range(rounds):
            verify(token, keys, now, policy)
        found[alg] = round((time.perf_counter() - started) / rounds * 1e6, 1)
    return found


def bench_tree(name: str, tree: Path, args: argparse.Namespace, jwks: Jwks, operator: dict,
               viewer_auth: bool) -> dict:
    """One server of ``tree``: subscribers, the agent list, then the commands; its figures."""
    proc, api, ws = start_server(args.clients, jwks.url, tree)
    print(f"# {name}: server {api} ws {ws or '(none on this build)'}; Brise-Circuit thresholds "
          f"raised to 1,000,000 for the bench", flush=True)
    subscribers = None
    try:
        token = session(api)
        viewer = {"X-Sceau-Session": token}
        # The baseline's commands took a session; ours take the operator's token.
        commander = operator if viewer_auth else viewer
        if ws and args.clients:
            loadclient.prepare()
            window = 2 * args.seconds + 3
            subscribers = subprocess.Popen(
                loadclient.command(f"{ws}?encoding=f32&session={token}", args.clients, window,
                                   ramp_ms=3000), stdout=subprocess.PIPE, text=True)
            for line in subscribers.stdout:
                if line.startswith("# window start"):
                    break
        else:
            why = ("none asked (--clients 0)" if not args.clients else
                   "this build serves no WebSocket")
            print(f"# no subscribers: {why}", flush=True)
        runs = {
            "GET /api/v1/swarm/agents": run_wrk(f"{api}/api/v1/swarm/agents", "GET", None, viewer,
                                                args.seconds, args.rate, args.connections, proc.pid),
            "POST /api/v1/swarm/disperse": run_wrk(f"{api}/api/v1/swarm/disperse", "POST",
                                                   args.disperse, commander, args.seconds,
                                                   args.command_rate, args.connections, proc.pid),
        }
        fps = None
        if subscribers is not None:
            for line in subscribers.stdout:
                if line.startswith("{"):
                    fps = json.loads(line)
            subscribers.wait(timeout=30)
    finally:
        if subscribers is not None and subscribers.poll() is None:
            subscribers.kill()
        proc.terminate()
        proc.wait(timeout=10)
    return {"runs": runs, "subscribers": fps}


def baseline_tree(rev: str) -> Path | None:
    """A worktree of ``rev`` (made once, under the temporary folder), or None if git cannot."""
    where = Path(tempfile.gettempdir()) / f"atom-bench-baseline-{rev}"
    if (where / "atom_actors").is_dir():
        return where
    done = subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(where), rev],
                          capture_output=True, text=True)
    if done.returncode != 0:
        print(f"# no baseline: git worktree of {rev} failed: {done.stderr.strip()}", flush=True)
        return None
    return where


def report(name: str, result: dict, clients: int) -> bool:
    ok = True
    for endpoint, r in result["runs"].items():
        meets = r["p99_ms"] <= TARGET_P99_MS and r["non_2xx"] == 0 and r["socket_errors"] == 0
        ok &= meets
        print(f"{name:9s} {endpoint:28s} {r['rate']:7.1f} req/s  p50 {r['p50_ms']:6.2f} ms  p99 "
              f"{r['p99_ms']:6.2f} ms  max {r['max_ms']:7.2f} ms  non-2xx {r['non_2xx']}  "
              f"server {r['server_cpu_cores']:.2f} cores  {'OK' if meets else 'MISSED'}")
    fps = result["subscribers"]
    if fps is not None:
        meets = fps["fps_min"] >= TARGET_FPS and fps["connected"] == clients
        ok &= meets
        print(f"{name:9s} {'subscribers':28s} {fps['connected']}/{clients} connected  fps mean "
              f"{fps['fps_mean']}  min {fps['fps_min']}  latency p99 {fps['lat_p99_ms']} ms  "
              f"{'OK' if meets else 'MISSED'}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10, help="per endpoint")
    parser.add_argument("--rate", type=int, default=200, help="agent-list requests per second")
    parser.add_argument("--command-rate", type=int, default=0,
                        help="commands per second (0, the default: as fast as they are answered)")
    parser.add_argument("--clients", type=int, default=500, help="WebSocket subscribers")
    parser.add_argument("--disperse", default='{"level": "partial"}',
                        help="the dispersal's body (partial: 70 agents each)")
    parser.add_argument("--connections", type=int, default=20,
                        help="wrk connections: the most requests in flight at once")
    parser.add_argument("--baseline", default=BASELINE_REV,
                        help=f"git revision to compare with in the same run ({BASELINE_REV}: main "
                             "before operators' tokens); 'none' to skip")
    parser.add_argument("--runs", type=int, default=2, help="alternated runs of each tree")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: apt-get install wrk")
    print(f"# load average {os.getloadavg()[0]:.2f} at start", flush=True)
    cost = verification_cost_us()
    print("# token verification, µs per token: " + ", ".join(f"{k} {v}" for k, v in cost.items()),
          flush=True)
    baseline = None if args.baseline == "none" else baseline_tree(args.baseline)
    key = new_key("ES256")
    operator = {"Authorization": "Bearer " + key.sign({**claims(("operator",), ttl_s=3600),
                                                      "iss": ISSUER})}
    results: dict[str, list[dict]] = {"ours": [], "baseline": []}
    ok = True
    with serve_jwks(Jwks([key])) as jwks:
        for _ in range(args.runs):
            result = bench_tree("ours", ROOT, args, jwks, operator, viewer_auth=True)
            ok &= report("ours", result, args.clients)
            results["ours"].append(result)
            if baseline is not None:
                result = bench_tree("baseline", baseline, args, jwks, operator, viewer_auth=False)
                report("baseline", result, args.clients)
                results["baseline"].append(result)
    summary = {}
    for name, found in results.items():
        if found:
            commands = [r["runs"]["POST /api/v1/swarm/disperse"] for r in found]
            summary[name] = {"commands_per_s": round(statistics.median(c["rate"] for c in commands), 1),
                             "p50_ms": round(statistics.median(c["p50_ms"] for c in commands), 2),
                             "p99_ms": round(statistics.median(c["p99_ms"] for c in commands), 2)}
    if "baseline" in summary:
        ratio = summary["ours"]["commands_per_s"] / max(summary["baseline"]["commands_per_s"], 1e-9)
        summary["ours_over_baseline"] = round(ratio, 3)
        meets = ratio >= 0.9
        print(f"# commands/s (median of {args.runs}): ours {summary['ours']['commands_per_s']}, "
              f"baseline {summary['baseline']['commands_per_s']} → ×{ratio:.3f} "
              f"(target ≥ 0.90: {'OK' if meets else 'MISSED'})")
    print(f"# load average {os.getloadavg()[0]:.2f} at the end", flush=True)
    print(json.dumps({"verification_us": cost, "summary": summary, "results": results,
                      "target_p99_ms": TARGET_P99_MS, "target_fps": TARGET_FPS, "met": ok}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
