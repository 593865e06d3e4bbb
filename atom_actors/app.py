"""The tree of the program, in one place.

:func:`serve` starts, each through ``stack.start`` so that the next one begins only when the
previous one is ready, and in this order (the ``rest_for_one`` order: a part depends on the ones
above it); stopping goes the other way, one part at a time (:mod:`atom_actors.stack`)::

    store        in memory, or PostgreSQL (DATABASE_URL): durable sessions, events (the audit's
                 keyed hash chain; with Redis its newest link kept there too), agents snapshot
    bus          in-process, or Redis (REDIS_URL): frames and events
    coordinator  in memory, or Redis (REDIS_URL): the lease, commands, checkpoints, sessions,
                 the Brise-Circuit's state, presence
    sessions     the Sceau sessions (live ones in the coordinator; written behind to the store)
    operators    (role all or api) who verifies operators' tokens: the issuer's keys, fetched
                 and kept fresh, or the shared secret; none configured: a view-only API
    engine       single process: the engine itself (restored from the store) with its event log
                 and snapshots; with Redis (role all or engine): an EngineRole, the leader or a hot
                 standby among the engine processes
    swarm        with Redis (role all, api or ws): a RemoteSwarm mirroring the engine
    safeguard    the Brise-Circuit's task (regroups on a trip, records every change); with Redis,
                 its state shared by every API process through the coordinator
    broadcaster  the WebSocket server of L'Essaim (WS_PORT, /ws/swarm)
    api          the REST API (Hypercorn, Trio worker); the engine and ws roles serve only
                 /metrics and health on API_PORT (``api/probes.py``)
    stats        once a second, the compositor's and broadcaster's figures in the trace log
                 (only when INFO is logged: ZERO_LOG=false)

Every process has one :class:`~atom_actors.metrics.Metrics` (its own Prometheus registry, served
on ``/metrics``); the supervisor's reports go to the trace log, the metrics and the Brise-Circuit.

Each part is handed the handles it uses, named, here and nowhere else: the API an
:class:`~atom_actors.api.ApiInput`, the stats task and the metrics the figures they read. The
:class:`Services` that :func:`serve` passes to ``task_status.started`` is for its caller (the CLI,
tests) to look at the running parts; no part reads it.

Roles (``atom serve --role``): ``all`` (default) runs everything in one process; ``engine``,
``api`` and ``ws`` run their part only, and meet on Redis. Both backends are asyncio libraries:
when either is configured, one trio-asyncio loop is opened here, at the root, for both.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import trio

from . import logs
from .aio import open_bridge
from .api import ApiInput, serve_api
from .api.health import OK, fresh, ping
from .api.probes import ProbesApp, serve_probes
from .audit import CHAIN_PURPOSE, derive_key
from .broadcaster import Broadcaster
from .bus import Bus, MemoryBus
from .bus.redis import RedisBus
from .cluster import EngineRole, engine_alarms
from .compositor import TickStats
from .config import Settings
from .coordinator import Coordinator, MemoryCoordinator
from .coordinator.redis import RedisCoordinator
from .engine import Engine
from .errors import ConfigError
from .metrics import Metrics, supervision_reporter
from .operators import Operators
from .persistence import EventLog, restore_from_store, snapshot_agents
from .remote import RemoteSwarm, SubscriberTotal, follow_engine_alarms, report_subscribers
from .safeguard import BriseCircuit
from .sessions import SessionService
from .stack import open_service_stack
from .store import MemoryStore, Store
from .store.postgres import ChainHead, PostgresStore
from .supervisor import Report
from .swarm_view import SwarmControl

ROLES = ("all", "engine", "api", "ws")


@dataclass
class Services:
    """Handles on the running parts, for :func:`serve`'s caller to look at (the CLI's start and
    stop lines, tests). Never handed to a part: each part is given what it uses."""

    settings: Settings
    bus: Bus
    role: str = "all"
    coordinator: Coordinator | None = None
    engine: Engine | None = None           # the in-process engine (role all without Redis)
    engine_role: EngineRole | None = None  # with Redis: this process's engine seat
    swarm: SwarmControl | None = None      # what the API and the broadcaster use
    store: Store | None = None
    sessions: SessionService | None = None
    broadcaster: Broadcaster | None = None
    api_url: str | None = None   # http://host:port, the port actually bound (API_PORT=0 picks one)
    ws_url: str | None = None    # ws://host:port/ws/swarm
    safeguard: BriseCircuit | None = None
    subscribers: Callable[[], int] | None = None   # WebSocket subscribers now (the broadcaster's)
    operators: Operators | None = None
    metrics: Metrics | None = None
    api_input: ApiInput | None = None   # what the API was given
    extras: dict[str, object] = field(default_factory=dict)

    def running_engine(self) -> Engine | None:
        """The engine running in this process now, if any (with Redis, only while it leads)."""
        if self.engine is not None:
            return self.engine
        return self.engine_role.engine if self.engine_role is not None else None

    def tick_stats(self) -> TickStats | None:
        engine = self.running_engine()
        return engine.stats if engine is not None else None

    def describe(self) -> str:
        engine = None
        if self.engine:
            engine = f"engine {self.settings.tick_hz} fps"
        elif self.engine_role:
            engine = f"engine {self.settings.tick_hz} fps (leader or hot standby)"
        parts = [f"role {self.role}" if self.role != "all" else None, engine,
                 f"api {self.api_url}" if self.api_url else None,
                 f"ws {self.ws_url}" if self.ws_url else None,
                 f"store {self.store.name}" if self.store and self.store.name != "memory" else None,
                 f"bus {self.bus.name}" if self.bus.name != "memory" else None]
        return ", ".join(p for p in parts if p)


def check_role(settings: Settings, role: str) -> None:
    """Raise ConfigError when ``role`` cannot run with these settings (one line at start)."""
    if role not in ROLES:
        raise ConfigError("--role", f"{role!r} is not one of {', '.join(ROLES)}")
    if role != "all" and not settings.redis_url:
        raise ConfigError("REDIS_URL", f"--role {role} needs Redis: the processes meet there")


def make_store(settings: Settings, coordinator: Coordinator | None = None) -> Store:
    """The store, its audit chain keyed by SECRET_KEY; with Redis (``coordinator``), the chain's
    newest link also kept there, through the coordinator's two calls."""
    chain_key = derive_key(settings.secret_key, CHAIN_PURPOSE)
    if not settings.database_url:
        return MemoryStore(chain_key)
    head = None
    if settings.redis_url and coordinator is not None:
        head = ChainHead(coordinator.advance_audit_head, coordinator.audit_head)
    return PostgresStore(settings.database_url, chain_key=chain_key, head=head)


def make_bus(settings: Settings, parts: set[str]) -> Bus:
    if not settings.redis_url:
        return MemoryBus()
    readers = bool(parts & {"api", "ws"})
    return RedisBus(settings.redis_url, frames=readers, events=readers)


def make_coordinator(settings: Settings, parts: set[str]) -> Coordinator:
    if not settings.redis_url:
        return MemoryCoordinator()
    return RedisCoordinator(settings.redis_url, summaries=bool(parts & {"api", "ws"}),
                            revocations="ws" in parts, min_acks=settings.min_acks)


async def serve(settings: Settings, *, role: str = "all",
                task_status: trio.TaskStatus[Services] = trio.TASK_STATUS_IGNORED) -> None:
    """Run the parts of ``role`` until cancelled, then stop them in reverse order.

    Errors: a role the settings cannot run raises ConfigError before anything starts; a
    database unreachable at start raises BackendUnavailable; an engine crash loop raises
    SupervisorEscalation once everything has stopped.
    """
    check_role(settings, role)
    settings, _ = settings.with_ephemeral_key()   # `atom serve` has said so already if it made one
    parts = {"engine", "api", "ws"} if role == "all" else {role}
    clustered = bool(settings.redis_url)   # the engine is a leader or standby among processes
    backends = open_bridge() if settings.database_url or settings.redis_url else nullcontext()
    async with backends, open_service_stack() as stack:
        # Made before the store (started after it): the store is handed its audit head's calls.
        coordinator = make_coordinator(settings, parts)
        store = await stack.start(make_store(settings, coordinator).run, name="store")
        bus = await stack.start(make_bus(settings, parts).run, name="bus")
        await stack.start(coordinator.run, name="coordinator")
        metrics = Metrics()
        metrics.read_backends(store, bus, coordinator)
        services = Services(settings, bus, role=role, coordinator=coordinator, store=store,
                            metrics=metrics)
        services.sessions = await stack.start(SessionService(
            coordinator, settings.secret_key, store=store, sceau_duration_ms=settings.sceau_duration,
            ttl_s=settings.session_ttl_s, frequency=settings.frequency).run, name="sessions")
        if "api" in parts:
            services.operators = await stack.start(Operators(settings).run, name="operators")
            services.safeguard = BriseCircuit(settings, bus, store, coordinator=coordinator)
            metrics.read_safeguard(services.safeguard.status)
        if clustered:
            await _start_cluster_parts(stack, services, parts)
        else:
            await _start_engine(stack, services)
        if services.engine is not None or services.engine_role is not None:
            actors = (services.engine.actor_ids if services.engine is not None
                      else [f"sphere/{sphere.name}" for sphere in settings.catalog.spheres])
            metrics.read_engine(services.running_engine, actors, tick_s=1.0 / settings.tick_hz)
        if services.safeguard is not None:
            await stack.start(services.safeguard.run, services.swarm, name="safeguard")
            if clustered:
                await stack.start(follow_engine_alarms, services.safeguard, bus,
                                  name="engine-alarms")
        if "ws" in parts:
            broadcaster = services.broadcaster = await stack.start(
                logs.traced, "broadcaster",
                Broadcaster(settings, bus, services.swarm, services.sessions).run,
                name="broadcaster")
            services.ws_url = broadcaster.url
            metrics.read_broadcaster(broadcaster.stats, settings.ws_max_connections)
            services.subscribers = lambda: broadcaster.stats.clients
            if clustered:
                await stack.start(report_subscribers, coordinator, uuid.uuid4().hex[:12],
                                  services.subscribers, name="subscribers-out")
        if "api" in parts and clustered:
            # Subscribers are counted over every ws process, this one's included.
            services.subscribers = await stack.start(SubscriberTotal(coordinator).run,
                                                     name="subscribers-in")
        if "api" in parts:
            assert services.swarm is not None and services.safeguard is not None
            services.api_input = ApiInput(
                settings, services.swarm, services.sessions, services.safeguard, store, bus,
                coordinator=coordinator, metrics=metrics, subscribers=services.subscribers,
                ws_url=services.ws_url, operators=services.operators)
            services.api_url = await stack.start(logs.traced, "api",
                                                 partial(serve_api, services.api_input), name="api")
            if services.broadcaster is not None:
                # The API's own origin may always open the stream; with API_PORT=0 it is known only now.
                services.broadcaster.allow_origin(services.api_url)
        else:
            services.api_url = await stack.start(
                serve_probes, role_probes(services), settings.api_host, settings.api_port,
                name="probes")
        sends = services.broadcaster.stats if services.broadcaster is not None else None
        await stack.start(logs.report_stats, services.tick_stats, sends, name="stats")
        task_status.started(services)
        await trio.sleep_forever()


def role_probes(services: Services) -> ProbesApp:
    """What an engine or ws process answers on API_PORT: metrics, liveness, readiness.

    Ready: an engine that leads, ticks and whose checkpoints Redis acknowledged within
    WRITES_FRESH_S, or that stands by with the coordinator answering; a ws process to which
    frames *arrive* (the newest within FRAMES_FRESH_S, by this process's clock: a subscription
    that hangs silently, or a host's clock off, cannot pass for live) and whose coordinator
    answers (it checks the sessions there)."""
    engine_role, bus, coordinator = services.engine_role, services.bus, services.coordinator

    def health() -> dict[str, Any]:
        if engine_role is not None:
            return {"engine": "leading" if engine_role.engine is not None else "standing by"}
        return {}

    async def checks() -> dict[str, str]:
        found = {"coordinator": await ping(coordinator)}
        if engine_role is not None:
            engine = engine_role.engine
            if engine is not None:
                found["engine"] = OK if engine.ticking else "leading, not ticking"
                found["writes"] = fresh(engine_role.write_age(), WRITES_FRESH_S,
                                        "acknowledged checkpoint")
        else:
            found["frames"] = fresh(trio.current_time() - bus.frame_arrived_at, FRAMES_FRESH_S,
                                    "frame")
        return found

    assert services.metrics is not None
    return ProbesApp(services.role, services.metrics.render, checks, health)


FRAMES_FRESH_S = 2.0
WRITES_FRESH_S = 2.0      # checkpoints go every 0.5 s: four missed


async def _start_engine(stack: Any, services: Services) -> None:
    """The single-process engine: restored from the store, snapshotted to it once a second, its
    commands recorded in the store."""
    store, safeguard = services.store, services.safeguard
    trace_and_count = supervision_reporter(services.metrics)

    def on_report(report: Report) -> None:
        trace_and_count(report)
        if safeguard is not None:
            safeguard.on_report(report)

    event_log = await stack.start(EventLog(store).run, name="event-log")
    engine = Engine(services.settings, services.bus, on_event=event_log.offer, on_report=on_report,
                    on_overload=safeguard.on_overload if safeguard is not None else None)
    if await restore_from_store(engine, store):
        logs.logger("engine").warning("engine.restored", store=store.name)
    services.engine = services.swarm = await stack.start(engine.run, name="engine")
    await stack.start(snapshot_agents, engine, store, name="snapshots")


async def _start_cluster_parts(stack: Any, services: Services, parts: set[str]) -> None:
    assert services.coordinator is not None and services.store is not None
    if "engine" in parts:
        trace_and_count = supervision_reporter(services.metrics)
        on_report, on_overload = engine_alarms(services.bus, trace_and_count)
        services.engine_role = await stack.start(
            EngineRole(services.settings, services.bus, services.coordinator, services.store,
                       on_report=on_report, on_overload=on_overload, announce=announce).run,
            name="engine-role")
    if parts & {"api", "ws"}:
        services.swarm = await stack.start(
            RemoteSwarm(services.settings, services.bus, services.coordinator).run, name="swarm")


def announce(message: str) -> None:
    print(f"atom: {message}", file=sys.stderr, flush=True)
