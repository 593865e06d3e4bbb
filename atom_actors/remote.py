"""The swarm as seen from a process without the engine (``--role api`` or ``ws`` over Redis).

:class:`RemoteSwarm` is a :class:`~atom_actors.engine.SwarmControl`: the API and the broadcaster
use it exactly as they use an in-process :class:`~atom_actors.engine.Engine`.

* Queries read a mirror: statuses and frequencies from the engine's summaries (twice a second)
  corrected by its ``agent.status`` / ``agent.frequency`` events in between; positions from the
  latest frame on the bus. Names, functions and spheres come from the catalog, as in the engine.
* Commands are checked here (so a bad one is refused at once with the engine's own errors), then
  appended to the coordinator's command stream. Once appended, a command will be applied exactly once, by
  whichever engine leads. The answer waits on that append's own acknowledgement only, never on
  hearing the engine's event (which comes with the engine's next checkpoint, and not at all
  while no engine leads): its figures (the regroup count, the retuned agent) are predicted from
  the mirror. Redis down: :class:`~atom_actors.errors.BackendUnavailable` (503) at once.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import trio

from .audit import By
from .bus import Bus
from .config import MIN_HZ, Settings
from .coordinator import Coordinator
from .engine import new_command_id
from .errors import BackendUnavailable
from .persistence import decode_summary
from .safeguard import OPEN, BriseCircuit, is_engine_alarm, seen_at
from .swarm import DISPERSED, STATUS_CODES, SwarmState
from .swarm_view import SwarmView, dispersal_size

log = logging.getLogger("atom_actors.remote")

SUMMARY_STALE_S = 1.5     # three missed summaries: the engine is not ticking (or not there)


class RemoteSwarm(SwarmView):
    """A :class:`~atom_actors.engine.SwarmControl` over the bus (frames, events) and the
    coordinator (summaries, commands); ``run`` it."""

    def __init__(self, settings: Settings, bus: Bus, coordinator: Coordinator, *,
                 timeout_s: float = 1.0) -> None:
        self.settings = settings
        self.bus = bus
        self.coordinator = coordinator
        self.timeout_s = timeout_s
        self.catalog = catalog = settings.catalog
        self.state = SwarmState.create(catalog, MIN_HZ, settings.frequency, settings.swarm_seed)
        self.summaries = 0
        self._summary_t = -math.inf       # engine time of the newest summary applied
        self._summary_seen = -math.inf    # trio time it arrived
        self._positions_seq: int | None = None

    async def run(self, *, task_status: trio.TaskStatus[RemoteSwarm] = trio.TASK_STATUS_IGNORED) -> None:
        """Mirror the engine until cancelled: the last stored summary first (bounded: Redis may
        be down), then every summary and event. Errors: none expected; malformed summaries are
        skipped."""
        self.coordinator.summary_listeners.append(self._on_summary)
        try:
            with trio.move_on_after(self.timeout_s):
                try:
                    data = await self.coordinator.load_summary()
                except BackendUnavailable:
                    data = None
                if data is not None:
                    self._on_summary(data, fresh=False)
            with self.bus.subscribe_events() as events:
                task_status.started(self)
                async for event in events:
                    self._on_event(event)
        finally:
            self.coordinator.summary_listeners.remove(self._on_summary)

    def _on_summary(self, data: bytes, fresh: bool = True) -> None:
        try:
            summary = decode_summary(data)
        except ValueError:
            return
        if len(summary.status) != self.state.size or summary.t < self._summary_t:
            return
        self._summary_t = summary.t
        if fresh:
            self._summary_seen = trio.current_time()
        self.state.status[:] = summary.status
        self.state.frequency[:] = summary.frequency
        self.summaries += 1

    def _on_event(self, event: dict) -> None:
        name = event.get("event")
        agent = event.get("agent")
        if name == "agent.status" and isinstance(agent, int) and 0 <= agent < self.state.size:
            self.state.status[agent] = STATUS_CODES.get(event.get("status"), self.state.status[agent])
        elif name == "agent.frequency" and isinstance(agent, int) and 0 <= agent < self.state.size:
            if isinstance(event.get("frequency"), int | float):
                self.state.frequency[agent] = event["frequency"]

    # -- SwarmControl: state (queries come from SwarmView) -------------------------------------

    @property
    def ticking(self) -> bool:
        return trio.current_time() - self._summary_seen < SUMMARY_STALE_S

    def _refresh(self) -> None:
        frame = self.bus.latest_frame
        if frame is not None and frame.seq != self._positions_seq and frame.agent_count == self.state.size:
            self.state.positions[:] = frame.positions
            self._positions_seq = frame.seq

    # -- SwarmControl: commands ---------------------------------------------------------------------

    async def disperse(self, level: str, sphere: str | None = None,
                       command_id: str | None = None, *, by: By | None = None) -> dict[str, Any]:
        level = self._check_level(level)
        rows = self._rows(sphere)
        command_id = command_id or new_command_id()
        await self._send({"kind": "disperse", "level": level, "sphere": sphere,
                          "command_id": command_id, "by": by})
        return {"level": level, "sphere": sphere, "dispersed": dispersal_size(level, len(rows)),
                "command_id": command_id}

    async def regroup(self, command_id: str | None = None, *,
                      by: By | None = None) -> dict[str, Any]:
        command_id = command_id or new_command_id()
        predicted = int((self.state.status == DISPERSED).sum())
        await self._send({"kind": "regroup", "command_id": command_id, "by": by})
        return {"regrouped": predicted, "command_id": command_id}

    async def retune(self, agent_id: int, hz: float, command_id: str | None = None, *,
                     by: By | None = None) -> dict[str, Any]:
        agent = self._agent_id(agent_id)
        hz = self._check_hz(hz)
        command_id = command_id or new_command_id()
        await self._send({"kind": "retune", "agent": agent, "frequency": hz,
                          "command_id": command_id, "by": by})
        self.state.frequency[agent] = hz   # predicted; the engine's event and summary confirm it
        return self.agent(agent)

    async def _send(self, command: dict) -> None:
        """Append ``command``: once its write is acknowledged, it will be applied."""
        await self.coordinator.add_command(command)


async def follow_engine_alarms(circuit: BriseCircuit, bus: Bus, *,
                               task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Open the deployment's Brise-Circuit when an engine process raises the alarm, until
    cancelled.

    The circuit's state is shared through the coordinator, so the API processes need not follow
    each other's ``safeguard`` events; but an engine process has no circuit of its own: when its
    engine escalates or overloads it publishes a ``safeguard`` opening event whose reason says so
    (``safeguard.is_engine_alarm``). Every API process hears it and asks the shared circuit to
    open; the first one's swap opens it and carries out the effects, the others find it open
    already. The event's ``at`` (when the alarm was raised) goes with it: an alarm heard after an
    operator reset the circuit, but raised before, does not reopen it. Errors: the coordinator
    unreachable → this alarm is logged and dropped (the engine's next one comes again).
    """
    with bus.subscribe_events() as events:
        task_status.started()
        async for event in events:
            reason = event.get("reason")
            if event.get("event") != "safeguard" or event.get("state") != OPEN \
                    or not is_engine_alarm(reason) or circuit.state == OPEN:
                continue
            try:
                await circuit.trip_shared("alarm", reason, seen_at=seen_at(event))
            except BackendUnavailable as exc:
                log.warning("an engine's alarm could not open the Brise-Circuit: %s", exc.detail)


SUBSCRIBERS_EVERY_S = 1.0


async def report_subscribers(coordinator: Coordinator, process: str, count: Callable[[], int], *,
                             task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """A ws process says, every second, how many subscribers it has (forgotten 3 s after it
    stops saying so: a dead process does not count). Errors: an outage skips a beat."""
    task_status.started()
    while True:
        try:
            await coordinator.set_subscribers(process, count(), 3 * SUBSCRIBERS_EVERY_S)
        except BackendUnavailable:
            pass
        await trio.sleep(SUBSCRIBERS_EVERY_S)


class SubscriberTotal:
    """The subscribers of every ws process, refreshed every second; call it for the number."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator
        self.total = 0

    def __call__(self) -> int:
        return self.total

    async def run(self, *, task_status: trio.TaskStatus[SubscriberTotal] = trio.TASK_STATUS_IGNORED) -> None:
        """Refresh until cancelled; an outage keeps the last total."""
        task_status.started(self)
        while True:
            try:
                self.total = await self.coordinator.total_subscribers()
            except BackendUnavailable:
                pass
            await trio.sleep(SUBSCRIBERS_EVERY_S)
