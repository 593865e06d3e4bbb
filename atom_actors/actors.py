"""Sphere actors and their agent tasks.

A sphere actor owns a contiguous slice of agents. It runs, in its own nursery:

* one lightweight task per agent, which waits on the agent's mailbox and reacts to ``Disperse``,
  ``Regroup`` and ``Retune`` by changing its agent's row of :class:`~atom_actors.swarm.SwarmState`,
  and which also makes the agent's timed transitions (dwell over → regrouping → active);
* an integrator, woken by the compositor once per tick, that computes the whole slice's positions
  with numpy and so reports them to the compositor;
* a router (the actor's own body) that reads the sphere's mailbox and forwards to agents.

What outlives a crash is in :class:`SphereSlot` (mailboxes, the tick hand-off) and in the
SwarmState rows; a restarted actor rebuilds its tasks from them and resumes every timer.

Cancellation: all of the actor's tasks stop; nothing is written. Errors: an exception in any of
its tasks ends the actor (and its tasks) and reaches the supervisor, which restarts it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from . import logs
from .catalog import Sphere
from .clock import WallClock
from .swarm import ACTIVE, DISPERSED, REGROUPING, STATUS_NAMES, FLY_S, SwarmState

SPHERE_MAILBOX = 256
AGENT_MAILBOX = 16


@dataclass(frozen=True, slots=True)
class Disperse:
    agents: tuple[int, ...]
    command_id: str


@dataclass(frozen=True, slots=True)
class Regroup:
    command_id: str


@dataclass(frozen=True, slots=True)
class Retune:
    agent: int
    hz: float
    command_id: str
    applied: trio.Event = field(default_factory=trio.Event)


class InjectedCrash(Exception):
    """Raised inside a sphere actor on purpose (``Engine.inject_crash``), to exercise supervision."""


@dataclass(frozen=True, slots=True)
class Crash:
    reason: str


@dataclass(frozen=True, slots=True)
class SphereContext:
    """What the sphere actors and their agents use of the engine, and nothing more.

    ``state``: the agents' rows (each agent task writes its own row); ``clock``: engine time;
    ``dwell_s``: how long a dispersed agent stays out; ``emit``: publishes an event (never
    blocks); ``log``: the trace logger that agents' lines go through.
    """

    state: SwarmState
    clock: WallClock
    dwell_s: float
    emit: Callable[[dict], None]
    log: Any


class SphereSlot:
    """A sphere's mailboxes and tick hand-off: everything its successive incarnations share."""

    def __init__(self, sphere: Sphere) -> None:
        self.sphere = sphere
        self.rows = slice(sphere.first, sphere.first + sphere.count)
        self.mailbox, self._inbox = trio.open_memory_channel[Any](SPHERE_MAILBOX)
        self._agents = [trio.open_memory_channel[Any](AGENT_MAILBOX) for _ in range(sphere.count)]
        self.wake = trio.Event()
        self.tick = 0           # tick the compositor asked for
        self.tick_t = 0.0       # engine time of that tick
        self.reported = 0       # last tick whose slice was written
        self.incarnation = 0

    def request_tick(self, tick: int, t: float) -> None:
        self.tick, self.tick_t = tick, t
        self.wake.set()

    def agent_mailbox(self, agent: int) -> trio.MemorySendChannel[Any]:
        return self._agents[agent - self.sphere.first][0]


async def sphere_actor(ctx: SphereContext, slot: SphereSlot, *,
                       task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Run one incarnation of the sphere actor of ``slot`` until cancelled or crashed."""
    slot.incarnation += 1
    log = logs.logger(f"sphere/{slot.sphere.name}")
    async with trio.open_nursery() as nursery:
        for agent, (_, inbox) in zip(slot.sphere.agent_ids, slot._agents):
            nursery.start_soon(agent_task, ctx, agent, inbox, name=f"agent/{agent}")
        nursery.start_soon(_integrate, ctx, slot, name=f"sphere/{slot.sphere.name}/integrate")
        task_status.started()
        while True:
            message = await slot._inbox.receive()
            if isinstance(message, Crash):
                raise InjectedCrash(message.reason)
            if isinstance(message, Disperse):
                targets = message.agents
            else:  # Regroup goes to every agent of the sphere; Retune to its one agent
                targets = slot.sphere.agent_ids if isinstance(message, Regroup) else (message.agent,)
            for agent in targets:
                await slot.agent_mailbox(agent).send(message)
            log.info("command.applied", command=type(message).__name__.lower(),
                     command_id=message.command_id, size=len(targets))


async def _integrate(ctx: SphereContext, slot: SphereSlot) -> None:
    rows = ctx.state.view(slot.rows)
    while True:
        await slot.wake.wait()
        slot.wake = trio.Event()
        rows.integrate(slot.tick_t)
        slot.reported = slot.tick


async def agent_task(ctx: SphereContext, agent: int, inbox: trio.MemoryReceiveChannel[Any]) -> None:
    """One agent: waits for messages until its next timed transition is due, then makes it."""
    if not logs.tracing(logging.DEBUG):
        return await _agent_loop(ctx, agent, inbox)
    log = logs.logger(f"agent/{agent}")
    log.debug("actor.start")
    try:
        await _agent_loop(ctx, agent, inbox)
    finally:
        log.debug("actor.stop")


async def _agent_loop(ctx: SphereContext, agent: int, inbox: trio.MemoryReceiveChannel[Any]) -> None:
    state = ctx.state
    while True:
        with trio.move_on_at(ctx.clock.to_trio(state.status_until[agent])):
            message = await inbox.receive()
            now = ctx.clock.now()
            if isinstance(message, Disperse):
                state.move(agent, now, 1.0)
                state.status_until[agent] = now + FLY_S + ctx.dwell_s
                _set_status(ctx, agent, DISPERSED, message.command_id)
            elif isinstance(message, Regroup):
                if state.status[agent] == DISPERSED:
                    _start_regroup(ctx, agent, now, message.command_id)
            elif isinstance(message, Retune):
                state.set_frequency(agent, message.hz, now)
                message.applied.set()
                ctx.log.info("agent.frequency", actor=f"agent/{agent}", frequency=message.hz,
                                command_id=message.command_id)
                ctx.emit({"type": "event", "event": "agent.frequency", "agent": agent,
                             "frequency": round(message.hz, 3), "command_id": message.command_id})
            continue
        # The timer ran out: the dwell is over, or the agent is home.
        now = ctx.clock.now()
        if state.status[agent] == DISPERSED:
            _start_regroup(ctx, agent, now, None)
        else:
            state.status_until[agent] = math.inf
            _set_status(ctx, agent, ACTIVE, None)


def _start_regroup(ctx: SphereContext, agent: int, now: float, command_id: str | None) -> None:
    ctx.state.move(agent, now, 0.0)
    ctx.state.status_until[agent] = now + FLY_S
    _set_status(ctx, agent, REGROUPING, command_id)


def _set_status(ctx: SphereContext, agent: int, status: int, command_id: str | None) -> None:
    was = ctx.state.status[agent]
    if was == status:
        return
    ctx.state.status[agent] = status
    ctx.log.info("agent.status", actor=f"agent/{agent}", status=STATUS_NAMES[status],
                    was=STATUS_NAMES[was], command_id=command_id)
    event = {"type": "event", "event": "agent.status", "agent": agent, "status": STATUS_NAMES[status]}
    if command_id:
        event["command_id"] = command_id
    ctx.emit(event)
