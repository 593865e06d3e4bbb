"""The tree of the program, in one place.

:func:`serve` starts, each through ``nursery.start`` so that the next one begins only when the
previous one is ready, and in this order (the ``rest_for_one`` order: a part depends on the ones
above it)::

    bus          in-process, or Redis
    engine       supervisor of the 15 sphere actors, then the compositor
    stats        once a second, the compositor's and broadcaster's figures in the trace log
                 (only when INFO is logged: ZERO_LOG=false)

Every process has one :class:`~atom_actors.metrics.Metrics` (its own Prometheus registry), and the
supervisor's reports go to the trace log and to the metrics.

Stopping cancels the tree; each part's docstring says what it does on cancellation.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import trio

from . import logs
from .bus import Bus, MemoryBus
from .config import Settings
from .engine import Engine
from .metrics import Metrics, supervision_reporter


@dataclass
class Services:
    """Handles on the running parts, for tests and for the parts that need each other."""

    settings: Settings
    bus: Bus
    engine: Engine | None = None
    api_url: str | None = None   # http://host:port, the port actually bound (API_PORT=0 picks one)
    ws_url: str | None = None    # ws://host:port/ws/swarm
    metrics: Metrics | None = None
    extras: dict[str, object] = field(default_factory=dict)

    def describe(self) -> str:
        parts = [f"engine {self.settings.tick_hz} fps" if self.engine else None,
                 f"api {self.api_url}" if self.api_url else None,
                 f"ws {self.ws_url}" if self.ws_url else None]
        return ", ".join(p for p in parts if p)


async def serve(settings: Settings, *,
                task_status: trio.TaskStatus[Services] = trio.TASK_STATUS_IGNORED) -> None:
    """Run every part of a single-process AT·OM until cancelled."""
    bus = MemoryBus()
    metrics = Metrics()
    services = Services(settings, bus, metrics=metrics)
    async with trio.open_nursery() as nursery:
        await nursery.start(bus.run)
        services.engine = await nursery.start(
            Engine(settings, bus, on_report=supervision_reporter(metrics)).run)
        metrics.attach(engine=services.engine)
        await nursery.start(logs.report_stats, services)
        task_status.started(services)


def announce(message: str) -> None:
    print(f"atom: {message}", file=sys.stderr, flush=True)
