#!/usr/bin/env python3
"""What WAIT (REDIS_MIN_ACKS) costs a command (issue 20): p50/p99 with REDIS_MIN_ACKS 0 and 1,
same deployment, same moment.

Starts a Sentinel deployment on loopback (``tests/sentinel.py``: a primary, two replicas, three
sentinels), one ``atom serve --role engine`` and two ``--role api`` processes on it, one with
REDIS_MIN_ACKS=0 and one with 1, then sends the same command (PUT .../frequency, the one the API
answers once the engine applied it) to each in turn, one at a time, ``--count`` each. It prints:

* ``api``: the command's whole latency as the client sees it (Brise-Circuit, Idempotency-Key
  record, XADD [+ WAIT], the engine's answering event);
* ``add_command``: the coordinator's call alone (XADD vs XADD + WAIT on one connection), from a
  client in this process, so the difference is WAIT's own;

and the load average around the run (``os.getloadavg``). Everything started is stopped.

    python3 scripts/bench_wait.py [--count 300]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.operators import bearer  # noqa: E402
from tests.sentinel import SentinelCluster  # noqa: E402
from tests.servers import atom_env  # noqa: E402


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"p50 {statistics.median(ordered) * 1000:6.2f} ms  p99 {p99 * 1000:6.2f} ms  (n={len(ordered)})"


class Role:
    """``atom serve --role <role>``; ``url`` once it serves."""

    def __init__(self, role: str, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "atom_actors", "serve", "--role", role],
                                     env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     text=True, cwd=ROOT)
        self.url = ""
        self._serving = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        if not self._serving.wait(60):
            self.stop()
            raise RuntimeError(f"atom serve --role {role} did not start")

    def _read(self) -> None:
        for line in self.proc.stderr:
            if "serving:" in line:
                self.url = next(w for w in line.split() if w.startswith("http")).rstrip(",")
                self._serving.set()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def through_the_api(urls: dict[int, str], count: int) -> dict[int, list[float]]:
    clients = {acks: httpx.Client(base_url=url, timeout=10) for acks, url in urls.items()}
    try:
        for client in clients.values():
            while client.get("/api/v1/health/ready").status_code != 200:
                time.sleep(0.1)
        headers = bearer(("operator",))   # an operator's token, signed with the tests' secret
        took: dict[int, list[float]] = {acks: [] for acks in clients}
        for i in range(count + 20):
            for acks, client in clients.items():
                started = time.perf_counter()
                r = client.put(f"/api/v1/swarm/agents/{i % 350}/frequency", headers=headers,
                               json={"frequency": 500 + i % 400})
                if r.status_code != 200:
                    raise RuntimeError(f"MIN_ACKS {acks}: {r.status_code} {r.text}")
                if i >= 20:                       # the first ones warm connections up
                    took[acks].append(time.perf_counter() - started)
                time.sleep(0.01)
        return took
    finally:
        for client in clients.values():
            client.close()


async def add_command_alone(url: str, count: int) -> dict[int, list[float]]:
    from atom_actors.coordinator.redis import RedisCoordinator

    took: dict[int, list[float]] = {0: [], 1: []}
    async with trio.open_nursery() as nursery:
        coordinators = {acks: await nursery.start(RedisCoordinator(
            url, namespace="benchwait", summaries=False, revocations=False, min_acks=acks).run)
            for acks in took}
        for i in range(count + 20):
            for acks, coordinator in coordinators.items():
                started = time.perf_counter()
                await coordinator.add_command({"kind": "none", "command_id": f"b{acks}-{i}"})
                if i >= 20:
                    took[acks].append(time.perf_counter() - started)
        nursery.cancel_scope.cancel()
    return took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=300, help="commands per REDIS_MIN_ACKS value")
    args = parser.parse_args()
    from atom_actors import aio
    aio.configure()
    load_before = os.getloadavg()
    cluster = SentinelCluster().start()
    roles: list[Role] = []
    try:
        base = dict(REDIS_URL=cluster.url, SAFEGUARD_MAX_COMMANDS="1000000", DISPERSAL_DWELL_S="600")
        roles.append(Role("engine", atom_env(**base)))
        apis = {acks: Role("api", atom_env(**base, REDIS_MIN_ACKS=str(acks))) for acks in (0, 1)}
        roles += apis.values()
        api = through_the_api({acks: role.url for acks, role in apis.items()}, args.count)
        alone = trio.run(add_command_alone, cluster.url, args.count)
    finally:
        for role in reversed(roles):
            role.stop()
        cluster.close()
    load_after = os.getloadavg()
    print(f"load average (1, 5, 15 min) before {load_before[0]:.2f} {load_before[1]:.2f} "
          f"{load_before[2]:.2f}, after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    for acks in (0, 1):
        print(f"REDIS_MIN_ACKS={acks}  api          {percentiles(api[acks])}")
    for acks in (0, 1):
        print(f"REDIS_MIN_ACKS={acks}  add_command  {percentiles(alone[acks])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
