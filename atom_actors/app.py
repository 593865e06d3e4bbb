"""The tree of the program, in one place.

:func:`serve` starts, each through ``nursery.start`` so that the next one begins only when the
previous one is ready, and in this order (the ``rest_for_one`` order: a part depends on the ones
above it)::

    store        in memory, or PostgreSQL (sessions, events)
    bus          in-process, or Redis
    engine       supervisor of the 15 sphere actors, then the compositor
    safeguard    the Brise-Circuit's task (regroups on a trip, records every change)
    broadcaster  the WebSocket server of L'Essaim (WS_PORT, /ws/swarm)
    api          the REST API (Hypercorn, Trio worker)

Stopping cancels the tree; each part's docstring says what it does on cancellation.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from .api import serve_api
from .broadcaster import Broadcaster
from .bus import Bus, MemoryBus
from .config import Settings
from .engine import Engine
from .safeguard import BriseCircuit
from .sessions import SessionService
from .store import MemoryStore, Store
from .supervisor import Report

log = logging.getLogger("atom_actors")


@dataclass
class Services:
    """Handles on the running parts, for tests and for the parts that need each other."""

    settings: Settings
    bus: Bus
    engine: Engine | None = None
    store: Store | None = None
    sessions: SessionService | None = None
    broadcaster: Broadcaster | None = None
    api_url: str | None = None   # http://host:port, the port actually bound (API_PORT=0 picks one)
    ws_url: str | None = None    # ws://host:port/ws/swarm
    safeguard: BriseCircuit | None = None
    subscribers: Callable[[], int] | None = None   # WebSocket subscribers now (the broadcaster's)
    extras: dict[str, object] = field(default_factory=dict)

    def describe(self) -> str:
        parts = [f"engine {self.settings.tick_hz} fps" if self.engine else None,
                 f"api {self.api_url}" if self.api_url else None,
                 f"ws {self.ws_url}" if self.ws_url else None]
        return ", ".join(p for p in parts if p)


def report_supervision(report: Report) -> None:
    """Every supervision report goes to the log; crashes and escalations loudly."""
    if report.kind in ("crashed", "escalated"):
        log.error("supervisor %s: child %s %s (restarts %d): %r", report.supervisor, report.child,
                  report.kind, report.restarts, report.reason)
    elif report.kind == "restarted":
        log.warning("supervisor %s: child %s restarted (restart %d)", report.supervisor,
                    report.child, report.restarts)


async def serve(settings: Settings, *,
                task_status: trio.TaskStatus[Services] = trio.TASK_STATUS_IGNORED) -> None:
    """Run every part of a single-process AT·OM until cancelled."""
    settings, _ = settings.with_ephemeral_key()   # `atom serve` has said so already if it made one
    bus = MemoryBus()
    store = MemoryStore()
    services = Services(settings, bus, store=store)
    services.sessions = SessionService(store, settings.secret_key,
                                       sceau_duration_ms=settings.sceau_duration,
                                       ttl_s=settings.session_ttl_s, frequency=settings.frequency)
    safeguard = services.safeguard = BriseCircuit(settings, bus, store)

    def on_report(report: Report) -> None:
        report_supervision(report)
        safeguard.on_report(report)

    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        await nursery.start(bus.run)
        services.engine = await nursery.start(
            Engine(settings, bus, on_report=on_report, on_overload=safeguard.on_overload).run)
        await nursery.start(safeguard.run, services.engine)
        broadcaster = services.broadcaster = await nursery.start(
            Broadcaster(settings, bus, services.engine, services.sessions).run)
        services.ws_url = broadcaster.url
        services.subscribers = lambda: broadcaster.stats.clients
        services.api_url = await nursery.start(serve_api, services)
        # The API's own origin may always open the stream; with API_PORT=0 it is known only now.
        broadcaster.allow_origin(services.api_url)
        task_status.started(services)


def announce(message: str) -> None:
    print(f"atom: {message}", file=sys.stderr, flush=True)
