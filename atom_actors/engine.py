"""The swarm engine: the sphere supervisor, the compositor, and the command API the REST layer calls.

Tree::

    Engine.run
    ├── Supervisor "spheres" (one_for_one, intensity 5 / 10 s)
    │   ├── sphere/personal   → 28 agent tasks + integrator
    │   ├── ...
    │   └── sphere/dashboard  → 6 agent tasks + integrator
    └── Compositor            → one frame per tick on the bus

Cancellation: everything stops, spheres right to left. Errors: a sphere that crashes is restarted
by the supervisor; a crash loop beyond the intensity makes :meth:`Engine.run` raise
:class:`~atom_actors.errors.SupervisorEscalation` after every actor has stopped.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import trio

from . import logs
from .actors import Crash, Disperse, Regroup, Retune, SphereContext, SphereSlot, sphere_actor
from .audit import By
from .bus import Bus
from .clock import WallClock
from .compositor import Compositor, TickStats
from .config import MIN_HZ, Settings
from .errors import SupervisorEscalation, find
from .supervisor import ChildSpec, Report, Supervisor
from .swarm import ACTIVE, DISPERSED, Checkpoint, SwarmState
# LEVELS and SwarmControl: for importers that knew them here.
from .swarm_view import LEVELS, SwarmControl, SwarmView, dispersal_size  # noqa: F401

SPHERE_INTENSITY = 5      # restarts ...
SPHERE_PERIOD_S = 10.0    # ... within this many seconds before the engine gives up
SPHERE_SHUTDOWN_S = 1.0
RETUNE_TIMEOUT_S = 2.0
# Who asked for the commands whose events have not come yet (for the event log's records).
ATTRIBUTIONS_KEPT = 1024


def new_command_id() -> str:
    return uuid.uuid4().hex


class Engine(SwarmView):
    """The running swarm. Create it inside ``trio.run`` (its clock reads Trio's) and ``run`` it.

    It publishes frames and events on ``bus``, but for the events ``hold`` takes (returning
    True: a leader's outbox keeps its commands' events for the checkpoint that announces them);
    ``on_event`` (the event log's ``offer``) sees every event it emits; ``on_report`` hears of its sphere supervisor's reports and
    ``on_overload`` of a compositor that overran its tick budget. What others read of it:
    the :class:`SwarmControl` queries and commands, :attr:`stats`, :attr:`ticking`,
    :meth:`checkpoint` and (before it runs) :meth:`restore`.
    """

    def __init__(self, settings: Settings, bus: Bus, *,
                 on_event: Callable[[dict], None] | None = None,
                 on_report: Callable[[Report], None] | None = None,
                 on_overload: Callable[[float], None] | None = None,
                 hold: Callable[[dict], bool] | None = None) -> None:
        self.settings = settings
        self.bus = bus
        self.catalog = catalog = settings.catalog
        self.clock = WallClock()
        self.log = logs.logger("engine")
        self.state = SwarmState.create(catalog, MIN_HZ, settings.frequency, settings.swarm_seed)
        self._on_event = on_event
        self._hold = hold
        self._by: dict[str, By] = {}
        self._rng = np.random.default_rng(settings.swarm_seed)
        self.slots = [SphereSlot(s) for s in catalog.spheres]
        self.sphere = SphereContext(self.state, self.clock, settings.dispersal_dwell_s, self.emit,
                                    self.log)
        self.supervisor = Supervisor(
            "spheres",
            [ChildSpec(f"sphere/{slot.sphere.name}", partial(sphere_actor, self.sphere, slot),
                       shutdown=SPHERE_SHUTDOWN_S) for slot in self.slots],
            intensity=SPHERE_INTENSITY, period=SPHERE_PERIOD_S, on_report=on_report,
        )
        self.compositor = Compositor(self.slots, self.state, self.clock, 1.0 / settings.tick_hz,
                                     bus.publish_frame, on_overload)

    # -- running ----------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[Engine] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the sphere actors, then the compositor; run until cancelled or escalation."""
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.supervisor.run)
                await nursery.start(logs.traced, "compositor", self.compositor.run)
                task_status.started(self)
        except BaseExceptionGroup as group:
            escalation = find(group, SupervisorEscalation)
            if escalation is None:
                raise
            raise escalation from None

    @property
    def ticking(self) -> bool:
        return self.compositor.ticking

    @property
    def stats(self) -> TickStats:
        """What the compositor measured (frames, lateness, late spheres): read, never written."""
        return self.compositor.stats

    @property
    def dwell_s(self) -> float:
        """How long a dispersed agent stays out, seconds."""
        return self.sphere.dwell_s

    @property
    def actor_ids(self) -> list[str]:
        """The ids of the sphere actors, as their supervisor reports them."""
        return [spec.id for spec in self.supervisor.children]

    def emit(self, event: dict) -> None:
        """Publish ``event`` (unless ``hold`` takes it, for the checkpoint that announces it);
        the event log hears it too, with who asked for its command (``by``, for the audit: never
        on the bus)."""
        if self._hold is None or not self._hold(event):
            self.bus.publish_event(event)
        if self._on_event is not None:
            # Looked up, not taken: a command's agents may emit (agent.status, with its id)
            # before the event its record is made of (the sphere actors run as soon as the
            # command is in their mailbox), and every one of them is the same command's. The
            # attributions are bounded by ATTRIBUTIONS_KEPT, oldest forgotten first.
            by = self._by.get(event.get("command_id")) if event.get("command_id") else None
            self._on_event(event if by is None else {**event, "by": by})

    def _attribute(self, command_id: str, by: By | None) -> None:
        if by is None:
            return
        self._by[command_id] = by
        while len(self._by) > ATTRIBUTIONS_KEPT:   # the oldest command is long done
            self._by.pop(next(iter(self._by)))

    # -- checkpoints -------------------------------------------------------------------------------

    def checkpoint(self) -> Checkpoint:
        """The swarm as of now: a detached copy of its state, the last frame's number, the time."""
        return Checkpoint(self.compositor.seq - 1, self.clock.now(), self.state.copy())

    def restore(self, checkpoint: Checkpoint) -> bool:
        """Continue from ``checkpoint`` (call before :meth:`run`): the swarm's state becomes its
        state, and frame numbers go on from its frame as if no tick had been missed since.
        False, and nothing changed, when it is a swarm of another shape."""
        if not self.state.load(checkpoint.state.arrays()):
            return False
        elapsed = max(0.0, self.clock.now() - checkpoint.t)
        self.compositor.continue_after(checkpoint.seq + round(elapsed * self.settings.tick_hz))
        return True

    # -- commands ----------------------------------------------------------------------------------

    async def disperse(self, level: str, sphere: str | None = None,
                       command_id: str | None = None, *, by: By | None = None) -> dict[str, Any]:
        """Disperse int(count × fraction) agents of the swarm, or of one sphere, chosen at random
        among the active ones first. Returns ``{"level", "sphere", "dispersed", "command_id"}``."""
        level = self._check_level(level)
        rows = self._rows(sphere)
        count = dispersal_size(level, len(rows))
        ids = np.asarray(rows)
        active = ids[self.state.status[ids] == ACTIVE]
        others = ids[self.state.status[ids] != ACTIVE]
        chosen = np.concatenate([self._rng.permutation(active), self._rng.permutation(others)])[:count]
        command_id = command_id or new_command_id()
        self._attribute(command_id, by)
        self.log.info("command.received", command="disperse", level=level, sphere=sphere,
                      command_id=command_id, size=count)
        by_sphere: dict[int, list[int]] = {}
        for agent in sorted(int(a) for a in chosen):
            by_sphere.setdefault(int(self.state.sphere_index[agent]), []).append(agent)
        for index, agents in by_sphere.items():
            await self.slots[index].mailbox.send(Disperse(tuple(agents), command_id))
        self.emit({"type": "event", "event": "swarm.dispersal", "level": level, "sphere": sphere,
                   "count": count, "command_id": command_id})
        return {"level": level, "sphere": sphere, "dispersed": count, "command_id": command_id}

    async def regroup(self, command_id: str | None = None, *,
                      by: By | None = None) -> dict[str, Any]:
        """Call every dispersed agent home. Returns ``{"regrouped", "command_id"}``."""
        command_id = command_id or new_command_id()
        self._attribute(command_id, by)
        out = self.state.status == DISPERSED
        count = int(out.sum())
        self.log.info("command.received", command="regroup", command_id=command_id, size=count)
        for index in np.unique(self.state.sphere_index[out]):
            await self.slots[int(index)].mailbox.send(Regroup(command_id))
        self.emit({"type": "event", "event": "swarm.regroup", "count": count,
                   "command_id": command_id})
        return {"regrouped": count, "command_id": command_id}

    async def retune(self, agent_id: int, hz: float, command_id: str | None = None, *,
                     by: By | None = None) -> dict[str, Any]:
        """Set one agent's frequency (in [432, FREQUENCY]); returns the agent once applied."""
        agent = self._agent_id(agent_id)
        message = Retune(agent, self._check_hz(hz), command_id or new_command_id())
        self._attribute(message.command_id, by)
        self.log.info("command.received", command="retune", agent=agent, frequency=message.hz,
                      command_id=message.command_id, size=1)
        await self.slots[int(self.state.sphere_index[agent])].mailbox.send(message)
        with trio.move_on_after(RETUNE_TIMEOUT_S):
            await message.applied.wait()
        return self.state.agent(agent)

    def inject_crash(self, sphere: str, reason: str = "injected crash") -> None:
        """Make a sphere actor raise, as a real bug would: for tests and drills."""
        self.slots[self._sphere(sphere).index].mailbox.send_nowait(Crash(reason))
