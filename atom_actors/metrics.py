"""Prometheus metrics, served as text on ``GET /metrics`` of the API port.

One :class:`Metrics` per running :func:`~atom_actors.app.serve`, with its own
``CollectorRegistry`` (never prometheus-client's global one: tests run many servers in one
process). Most values are read at scrape time from counters the parts keep anyway — the
compositor's :class:`~atom_actors.compositor.TickStats`, the broadcaster's client and drop counts,
the Brise-Circuit's state — so the 60 fps loop does no metrics work beyond one bisect per tick
for the lateness histogram. What no part keeps (restarts per actor, commands by result, backend
errors) is counted here, on events that are rare by nature.

Labels carry actor ids, command names, levels, results, states and backend names: never anything
about a client.

    atom_frames_composed_total              frames the compositor made
    atom_ticks_missed_total                 ticks skipped after falling too far behind
    atom_late_sphere_ticks_total            sphere-ticks that reused a previous slice
    atom_tick_lateness_seconds              histogram: how late each tick's frame went out
    atom_engine_ticking                     1 while the compositor runs
    atom_agents{status}                     agents by status
    atom_subscribers                        WebSocket clients connected
    atom_frames_dropped_total               frames a slow client never received (newest won)
    atom_actor_restarts_total{actor}        supervisor restarts of each actor
    atom_actor_crashes_total{actor}         crashes of each actor
    atom_supervisor_escalations_total{supervisor}
    atom_commands_total{command,level,result}   result: accepted, invalid, blocked, unavailable, error
    atom_safeguard_state{state}             1 for the Brise-Circuit's current state, 0 for the others
    atom_safeguard_trips_total              times the Brise-Circuit opened
    atom_backend_errors_total{backend}      Redis / PostgreSQL failures seen
    process_*                               CPU, memory, file descriptors of this process
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, ProcessCollector, generate_latest
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily,
                                    Metric)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from . import logs
from .compositor import LATENESS_BUCKETS_S
from .engine import LEVELS, new_command_id
from .errors import BackendUnavailable, CommandError, SafeguardOpen
from .supervisor import Report

if TYPE_CHECKING:
    from .engine import Engine

SAFEGUARD_STATES = ("closed", "open", "half_open")
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """The metrics of one running process. ``attach`` the parts as they start."""

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
        self.backend_errors = Counter("atom_backend_errors", "Failures of a configured backend",
                                      ["backend"], registry=self.registry)
        self.engine: Engine | None = None
        self.broadcaster: Any = None
        self.safeguard: Any = None
        self.registry.register(_PartsCollector(self))
        ProcessCollector(registry=self.registry)

    # -- wiring --------------------------------------------------------------------------------------

    def attach(self, *, engine: Engine | None = None, broadcaster: Any = None,
               safeguard: Any = None) -> None:
        """Read these parts at scrape time from now on (each may be attached later, or never)."""
        if engine is not None:
            self.engine = engine
            for spec in engine.supervisor.children:  # every actor shows, at 0, from the start
                self.restarts.labels(actor=spec.id)
                self.crashes.labels(actor=spec.id)
        if broadcaster is not None:
            self.broadcaster = broadcaster
        if safeguard is not None:
            self.safeguard = safeguard

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

    def backend_error(self, backend: str) -> None:
        self.backend_errors.labels(backend=backend).inc()

    # -- exposition ----------------------------------------------------------------------------------

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


class CountedControl:
    """A :class:`~atom_actors.engine.SwarmControl` that counts and traces the commands it passes
    on (``atom_commands_total``, ``api`` lines ``command.done``); queries go straight through.

    The API wraps whatever control it has (the engine, or a remote one) in it, outside the
    Brise-Circuit, so that refused and blocked commands are counted too.
    """

    def __init__(self, control: Any, metrics: Metrics, actor: str = "api") -> None:
        self._control = control
        self._metrics = metrics
        self._log = logs.logger(actor)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._control, name)

    async def disperse(self, level: str, sphere: str | None = None,
                       command_id: str | None = None) -> dict[str, Any]:
        return await self._counted("disperse", level, command_id, self._control.disperse,
                                   level, sphere)

    async def regroup(self, command_id: str | None = None) -> dict[str, Any]:
        return await self._counted("regroup", "", command_id, self._control.regroup)

    async def retune(self, agent_id: int, hz: float,
                     command_id: str | None = None) -> dict[str, Any]:
        return await self._counted("retune", "", command_id, self._control.retune, agent_id, hz)

    async def _counted(self, command: str, level: Any, command_id: str | None, call: Any,
                       *args: Any) -> dict[str, Any]:
        # A level outside the known ones is counted as "other": label values stay a closed set.
        level = level if level == "" or (isinstance(level, str) and level in LEVELS) else "other"
        command_id = command_id or new_command_id()
        started = time.perf_counter()
        try:
            result = await call(*args, command_id=command_id)
        except BaseException as exc:
            if isinstance(exc, Exception):  # a cancellation is no result
                outcome = command_result(exc)
                self._metrics.command(command, level, outcome)
                if isinstance(exc, BackendUnavailable):
                    self._metrics.backend_error(exc.backend)
                self._log.info("command.done", command=command, level=level or None,
                               command_id=command_id, result=outcome,
                               error=getattr(exc, "code", type(exc).__name__))
            raise
        self._metrics.command(command, level, "accepted")
        size = result.get("dispersed", result.get("regrouped", 1)) if isinstance(result, dict) else 1
        self._log.info("command.done", command=command, level=level or None, command_id=command_id,
                       result="accepted", size=size,
                       ms=round((time.perf_counter() - started) * 1000, 3))
        return result


class _PartsCollector:
    """Reads the parts' own counters at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self) -> list[Metric]:
        # No up-front description: the families depend on which parts are attached.
        return []

    def collect(self) -> Iterator[Metric]:
        engine = self.metrics.engine
        if engine is not None:
            yield from _engine_metrics(engine)
        broadcaster = self.metrics.broadcaster
        if broadcaster is not None:
            yield GaugeMetricFamily("atom_subscribers", "WebSocket clients connected",
                                    value=_number(broadcaster, "clients"))
            yield CounterMetricFamily("atom_frames_dropped",
                                      "Frames a slow client never received (the newest won)",
                                      value=_number(broadcaster, "frames_dropped"))
        safeguard = self.metrics.safeguard
        if safeguard is not None:
            state = str(getattr(safeguard, "state", "closed"))
            state = getattr(state, "value", state)
            family = GaugeMetricFamily("atom_safeguard_state",
                                       "The Brise-Circuit's state: 1 for the current one",
                                       labels=["state"])
            for name in SAFEGUARD_STATES:
                family.add_metric([name], 1.0 if name == state else 0.0)
            yield family
            yield CounterMetricFamily("atom_safeguard_trips", "Times the Brise-Circuit opened",
                                      value=_number(safeguard, "trips"))


def _engine_metrics(engine: Engine) -> Iterator[Metric]:
    stats = engine.compositor.stats
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


def _number(part: Any, name: str) -> float:
    value = getattr(part, name, 0)
    value = value() if callable(value) else value
    return float(value or 0)
