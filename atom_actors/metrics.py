"""Prometheus metrics, served as text on ``GET /metrics`` of the API port.

One :class:`Metrics` per running :func:`~atom_actors.app.serve`, with its own
``CollectorRegistry`` (never prometheus-client's global one: tests run many servers in one
process). Most values are read at scrape time from counters the parts keep anyway — the
compositor's :class:`~atom_actors.compositor.TickStats`, the broadcaster's client and drop counts,
the Brise-Circuit's state — so the 60 fps loop does no metrics work beyond one bisect per tick
for the lateness histogram; the store and the bus count their own failures. What no part keeps
(restarts per actor, commands by result) is counted here, on events that are rare by nature:
:meth:`Metrics.on_report` is the supervisor's, :meth:`Metrics.counted` wraps each API command.

Labels carry actor ids, command names, levels, results, states and backend names: never anything
about a client.

    atom_frames_composed_total              frames the compositor made
    atom_ticks_missed_total                 ticks skipped after falling too far behind
    atom_late_sphere_ticks_total            sphere-ticks that reused a previous slice
    atom_tick_lateness_seconds              histogram: how late each tick's frame went out
    atom_engine_ticking                     1 while the compositor runs
    atom_engine_leading                     1 while this process runs the engine (the leader, or
                                            the one engine of a single process); 0 on a standby
    atom_tick_interval_seconds              one tick (1 / TICK_HZ): the lateness alert's bound
    atom_agents{status}                     agents by status
    atom_subscribers                        WebSocket clients connected
    atom_ws_max_connections                 WS_MAX_CONNECTIONS: the most atom_subscribers can be
    atom_frames_sent_total                  frame messages written to subscribers
    atom_frames_dropped_total               frames a slow client never received (newest won)
    atom_ws_handshakes_refused_total{status}    handshakes refused (400, 401, 403, 404, 503)
    atom_ws_closed_total{cause}             subscribers closed: stall, oversize, lagging, session
    atom_actor_restarts_total{actor}        supervisor restarts of each actor
    atom_actor_crashes_total{actor}         crashes of each actor
    atom_supervisor_escalations_total{supervisor}
    atom_commands_total{command,level,result}   result: accepted, invalid, blocked, unavailable,
                                            error
    atom_safeguard_state{state}             1 for the Brise-Circuit's current state, else 0
    atom_safeguard_trips_total              times the Brise-Circuit opened
    atom_backend_errors_total{backend}      calls to Redis / PostgreSQL that found it unavailable
                                            (the store's and the bus's own ``failures`` counts)
    atom_redis_primary{part,address}        1 for the Redis primary (host:port) each part (bus,
                                            coordinator) is connected to, as asked each second
    atom_redis_primary_changes_total{part}  times a part found its primary was another server
                                            (a failover): the RedisFailover alert's input
    atom_event_lag_seconds                  histogram: how late event batches reached this process
                                            from the engine (the engine's clock against this
                                            one's; processes that read the Redis bus)
    atom_event_lag_max_seconds              the latest batch so far
    process_*                               CPU, memory, file descriptors of this process
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, ProcessCollector, generate_latest
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily,
                                    Metric)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from . import logs
from .bus.base import EVENT_LAG_BUCKETS_S
from .compositor import LATENESS_BUCKETS_S, TickStats
from .errors import BackendUnavailable, CommandError, SafeguardOpen
from .supervisor import Report
from .swarm_view import LEVELS

SAFEGUARD_STATES = ("closed", "open", "half_open")
CONTENT_TYPE = CONTENT_TYPE_LATEST


class EngineFigures(Protocol):
    """What the metrics read of a running engine (an :class:`~atom_actors.engine.Engine`)."""

    @property
    def stats(self) -> TickStats: ...

    @property
    def ticking(self) -> bool: ...

    def counts(self) -> dict[str, Any]: ...


class BroadcastFigures(Protocol):
    """What the metrics read of a broadcaster (its :class:`~atom_actors.broadcaster.BroadcastStats`)."""

    clients: int
    frames_sent: int
    frames_dropped: int
    closed_stall: int
    closed_oversize: int
    closed_lagging: int
    closed_session: int
    refused: dict[int, int]


class Backend(Protocol):
    """A store, a bus or a coordinator: its name and the calls that found it unavailable."""

    name: str
    failures: int


class Metrics:
    """The metrics of one running process. Each ``read_*`` registers a part's figures, read at
    scrape time from then on (each may be registered later, or never)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.restarts = Counter("atom_actor_restarts", "Supervisor restarts of each actor",
                                ["actor"], registry=self.registry)
        self.crashes = Counter("atom_actor_crashes", "Crashes of each actor", ["actor"],
                               registry=self.registry)
        self.escalations = Counter("atom_supervisor_escalations",
                                   "Supervisors that gave up (restarts beyond their intensity)",
                                   ["supervisor"], registry=self.registry)
        self.commands = Counter("atom_commands", "Swarm commands by command, level and result",
                                ["command", "level", "result"], registry=self.registry)
        ProcessCollector(registry=self.registry)

    # -- wiring -----------------------------------------------------------------------------------

    def _collect(self, families: Callable[[], Iterable[Metric]]) -> None:
        self.registry.register(_Collector(families))

    def read_engine(self, engine: Callable[[], EngineFigures | None], actors: Iterable[str], *,
                    tick_s: float) -> None:
        """The engine's figures: ``engine()`` is the running engine, or None while there is none
        here (a standby engine process). ``actors``: the sphere actors, shown at 0 from the start.
        ``tick_s``: one tick (1 / TICK_HZ), what the lateness alert compares with."""
        for actor in actors:
            self.restarts.labels(actor=actor)
            self.crashes.labels(actor=actor)

        def families() -> Iterator[Metric]:
            current = engine()
            yield GaugeMetricFamily("atom_engine_leading",
                                    "1 while this process runs the engine, 0 while it stands by",
                                    value=0.0 if current is None else 1.0)
            yield GaugeMetricFamily("atom_tick_interval_seconds", "One tick: 1 / TICK_HZ",
                                    value=tick_s)
            if current is not None:
                yield from _engine_metrics(current)

        self._collect(families)

    def read_broadcaster(self, stats: BroadcastFigures, max_connections: int) -> None:
        """The broadcaster's figures; ``max_connections``: WS_MAX_CONNECTIONS."""
        self._collect(lambda: _broadcaster_metrics(stats, max_connections))

    def read_safeguard(self, status: Callable[[], Mapping[str, Any]]) -> None:
        """The Brise-Circuit's state and trips, from its ``status()``."""
        self._collect(lambda: _safeguard_metrics(status()))

    def read_backends(self, *parts: Backend) -> None:
        """The failures the store, the bus and the coordinator counted (the in-process ones are
        all "memory", the Redis ones both "redis")."""
        self._collect(lambda: _backend_metrics(parts))

    def on_report(self, report: Report) -> None:
        """A supervisor's ``on_report``: counts restarts, crashes and escalations."""
        if report.kind == "restarted":
            self.restarts.labels(actor=report.child).inc()
        elif report.kind == "crashed":
            self.crashes.labels(actor=report.child).inc()
        elif report.kind == "escalated":
            self.escalations.labels(supervisor=report.supervisor).inc()

    def command(self, command: str, level: str | None, result: str) -> None:
        self.commands.labels(command=command, level=level or "", result=result).inc()

    @contextmanager
    def counted(self, command: str, level: Any = "", command_id: str | None = None,
                actor: str = "api", *, role: str | None = None,
                operator: str | None = None) -> Iterator[Counted]:
        """Count (``atom_commands_total``) and trace (``command.done``) the block's command.

        The trace names who asked by ``role`` and ``operator`` (the audit's pseudonym), never
        otherwise; the metric has neither (a label per person would be a record of people).

        Put it outside the Brise-Circuit, so that blocked commands count too. The result is the
        block's outcome: it returns → accepted; it raises a CommandError → invalid, SafeguardOpen
        → blocked, BackendUnavailable → unavailable (the backend counted it already), anything
        else → error. A cancelled block counts nothing. The exception goes on unchanged.
        """
        # A level outside the known ones is counted as "other": label values stay a closed set.
        level = level if level in ("", None) or (isinstance(level, str) and level in LEVELS) \
            else "other"
        log = logs.logger(actor)
        counted = Counted()
        started = time.perf_counter()
        try:
            yield counted
        except Exception as exc:
            result = command_result(exc)
            self.command(command, level, result)
            log.info("command.done", command=command, level=level or None, command_id=command_id,
                     result=result, error=getattr(exc, "code", type(exc).__name__), role=role,
                     operator=operator)
            raise
        self.command(command, level, "accepted")
        log.info("command.done", command=command, level=level or None, command_id=command_id,
                 role=role, operator=operator, result="accepted", size=counted.size,
                 ms=round((time.perf_counter() - started) * 1000, 3))

    # -- exposition -------------------------------------------------------------------------------

    def render(self) -> bytes:
        """The Prometheus text exposition of everything, as of now."""
        return generate_latest(self.registry)


def supervision_reporter(metrics: Metrics | None):
    """One ``on_report`` for the engine: the trace log, and the metrics when there are some."""
    if metrics is None:
        return logs.report_supervision

    def on_report(report: Report) -> None:
        logs.report_supervision(report)
        metrics.on_report(report)

    return on_report


def command_result(exc: BaseException | None) -> str:
    """The ``result`` label of a command that ended with ``exc`` (None: it was accepted)."""
    if exc is None:
        return "accepted"
    if isinstance(exc, CommandError):
        return "invalid"
    if isinstance(exc, SafeguardOpen):
        return "blocked"
    if isinstance(exc, BackendUnavailable):
        return "unavailable"
    return "error"


class Counted:
    """What :meth:`Metrics.counted` gives the block: set ``size`` once the command is done."""

    __slots__ = ("size",)

    def __init__(self) -> None:
        self.size: int | None = None


class _Collector:
    """One part's families, made at scrape time."""

    def __init__(self, families: Callable[[], Iterable[Metric]]) -> None:
        self.collect = families

    def describe(self) -> list[Metric]:
        # No up-front description: the families are read from the part when scraped.
        return []


def _safeguard_metrics(status: Mapping[str, Any]) -> Iterator[Metric]:
    state = str(status.get("state", "closed"))
    family = GaugeMetricFamily("atom_safeguard_state",
                               "The Brise-Circuit's state: 1 for the current one", labels=["state"])
    for name in SAFEGUARD_STATES:
        family.add_metric([name], 1.0 if name == state else 0.0)
    yield family
    yield CounterMetricFamily("atom_safeguard_trips", "Times the Brise-Circuit opened",
                              value=float(status.get("trips", 0) or 0))


def _backend_metrics(parts: Iterable[Backend]) -> Iterator[Metric]:
    backend_errors = CounterMetricFamily("atom_backend_errors",
                                         "Calls to a backend that found it unavailable",
                                         labels=["backend"])
    failures: dict[str, float] = {}
    for part in parts:
        failures[part.name] = failures.get(part.name, 0.0) + float(part.failures or 0)
    for name, count in failures.items():
        backend_errors.add_metric([name], count)
    yield backend_errors
    # The Redis parts (``redislink.OnRedis``): which primary their link last found.
    linked = [p for p in parts if hasattr(p, "primary_changes")]
    if linked:
        primary = GaugeMetricFamily("atom_redis_primary",
                                    "1 for the Redis primary each part is connected to",
                                    labels=["part", "address"])
        changes = CounterMetricFamily("atom_redis_primary_changes",
                                      "Times a part found its Redis primary was another server",
                                      labels=["part"])
        for part in linked:
            label = part.link.name
            if part.primary is not None:
                primary.add_metric([label, part.primary], 1.0)
            changes.add_metric([label], float(part.primary_changes))
        yield primary
        yield changes
    for part in parts:
        lag = getattr(part, "event_lag", None)
        if lag is None:
            continue
        buckets, total = [], 0
        for bound, count in zip(EVENT_LAG_BUCKETS_S, lag.counts):
            total += count
            buckets.append(("+Inf" if bound == math.inf else repr(bound), total))
        yield HistogramMetricFamily("atom_event_lag_seconds",
                                    "How late event batches reached this process from the engine",
                                    buckets=buckets, sum_value=lag.sum)
        yield GaugeMetricFamily("atom_event_lag_max_seconds",
                                "The latest event batch that reached this process",
                                value=lag.max)


def _broadcaster_metrics(stats: BroadcastFigures, max_connections: int) -> Iterator[Metric]:
    yield GaugeMetricFamily("atom_subscribers", "WebSocket clients connected",
                            value=float(stats.clients))
    yield GaugeMetricFamily("atom_ws_max_connections",
                            "WS_MAX_CONNECTIONS: subscribers this process admits at most",
                            value=float(max_connections))
    yield CounterMetricFamily("atom_frames_dropped",
                              "Frames a slow client never received (the newest won)",
                              value=float(stats.frames_dropped))
    yield CounterMetricFamily("atom_frames_sent", "Frame messages written to subscribers",
                              value=float(stats.frames_sent))
    refused = CounterMetricFamily("atom_ws_handshakes_refused",
                                  "WebSocket handshakes refused, by HTTP status", labels=["status"])
    for status, count in sorted(dict(stats.refused).items()):
        refused.add_metric([str(status)], count)
    yield refused
    closed = CounterMetricFamily("atom_ws_closed", "Subscribers the server closed, by cause",
                                 labels=["cause"])
    for cause, count in (("stall", stats.closed_stall), ("oversize", stats.closed_oversize),
                         ("lagging", stats.closed_lagging), ("session", stats.closed_session)):
        closed.add_metric([cause], float(count))
    yield closed


def _engine_metrics(engine: EngineFigures) -> Iterator[Metric]:
    stats = engine.stats
    yield CounterMetricFamily("atom_frames_composed", "Frames composed by the compositor",
                              value=stats.frames)
    yield CounterMetricFamily("atom_ticks_missed", "Ticks skipped after falling too far behind",
                              value=stats.missed)
    yield CounterMetricFamily("atom_late_sphere_ticks",
                              "Sphere-ticks whose slice was late (the previous one was used)",
                              value=stats.late_spheres)
    cumulative, buckets = 0, []
    for bound, count in zip(LATENESS_BUCKETS_S, list(stats.lateness_counts)):
        cumulative += count
        buckets.append(("+Inf" if math.isinf(bound) else repr(bound), cumulative))
    yield HistogramMetricFamily("atom_tick_lateness_seconds",
                                "How late each tick's frame went out past its deadline",
                                buckets=buckets, sum_value=stats.lateness_sum)
    yield GaugeMetricFamily("atom_engine_ticking", "1 while the compositor runs",
                            value=1.0 if engine.ticking else 0.0)
    agents = GaugeMetricFamily("atom_agents", "Agents by status", labels=["status"])
    for status, count in engine.counts()["by_status"].items():
        agents.add_metric([status], count)
    yield agents
