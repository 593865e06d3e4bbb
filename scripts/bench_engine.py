#!/usr/bin/env python3
"""Engine alone, no subscribers, for S real seconds (default 60).

Prints, each second, the process CPU used in that second; then tick lateness p50/p99/max and the
frames produced against the frames expected.

    .venv/bin/python scripts/bench_engine.py [--seconds 60] [--tick-hz 60]

Targets (issue 2, this 2-core machine): CPU <= 5 % of one core, lateness p99 <= 2 ms, no missed frame.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import trio

from atom_actors.bus import MemoryBus
from atom_actors.config import load_settings
from atom_actors.engine import Engine


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def bench(seconds: float, tick_hz: int) -> None:
    settings = load_settings({"TICK_HZ": str(tick_hz), "SWARM_SEED": "1"}, env_file=None)
    engine = Engine(settings, MemoryBus())
    lateness: list[float] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        stats = engine.stats
        await trio.sleep(1.0)  # warm-up
        frames0, missed0 = stats.frames, stats.missed
        stats.lateness.clear()
        start_wall, start_cpu = time.perf_counter(), cpu_seconds()
        per_second = []
        for _ in range(int(seconds)):
            c0 = cpu_seconds()
            await trio.sleep(1.0)
            per_second.append(cpu_seconds() - c0)
            lateness.extend(stats.lateness)
            stats.lateness.clear()
        wall = time.perf_counter() - start_wall
        cpu = cpu_seconds() - start_cpu
        frames, missed = stats.frames - frames0, stats.missed - missed0
        late_spheres = stats.late_spheres
        nursery.cancel_scope.cancel()
    lat_ms = np.array(lateness) * 1000
    print("second  cpu%")
    for i, c in enumerate(per_second, 1):
        print(f"{i:6d}  {100 * c:5.2f}")
    print()
    print(f"duration            {wall:8.2f} s")
    print(f"cpu                 {100 * cpu / wall:8.2f} % of one core (mean)"
          f", max second {100 * max(per_second):.2f} %")
    print(f"tick lateness       p50 {np.percentile(lat_ms, 50):.3f} ms  p99 {np.percentile(lat_ms, 99):.3f} ms"
          f"  max {lat_ms.max():.3f} ms")
    print(f"frames              {frames} produced, {round(wall * tick_hz)} expected, {missed} missed,"
          f" {late_spheres} late sphere slices")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--tick-hz", type=int, default=60)
    args = parser.parse_args()
    trio.run(bench, args.seconds, args.tick_hz)


if __name__ == "__main__":
    main()
