"""What of the engine outlives its process: restore at start, snapshots, the event log.

Plain Trio over the :class:`~atom_actors.store.base.Store` interface, whichever store it is:

* :func:`restore_rows` puts a stored ``agents`` snapshot back into a fresh engine: statuses and
  frequencies as they were, and each agent back where the snapshot saw it (its orbit phase is
  fitted to the stored position; a dispersed agent is out and dwells again, a regrouping one flies
  home);
* :func:`snapshot_agents` writes all agents in one batch at most once a second (never per tick),
  and once more when it stops; an unavailable store is retried on the next beat;
* :class:`EventLog` records the engine's command events (dispersals, regroups, retunes) in the
  store, in order, retrying through an outage, from a bounded buffer that drops (and counts) when
  an outage lasts too long;
* :func:`encode_checkpoint` / :func:`decode_checkpoint` carry the whole swarm state between engine
  processes (the Redis failover); :func:`encode_summary` / :func:`decode_summary` carry statuses
  and frequencies to processes without the engine. Pure functions over numpy arrays.
"""

from __future__ import annotations

import io
import logging
import math
import struct
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import trio

from .audit import checked_by
from .clock import WallClock
from .errors import BackendUnavailable
from .store import AgentRow, EventRecord, Store
from .swarm import (ACTIVE, DISPERSED, FLY_S, REGROUPING, STATE_ARRAYS, STATUS_CODES, STATUS_NAMES,
                    Checkpoint, SwarmState, orbit_speed)

log = logging.getLogger("atom_actors.persistence")

SNAPSHOT_INTERVAL_S = 1.0
FINAL_SNAPSHOT_S = 1.0     # bound on the last snapshot written while stopping
EVENT_LOG_BUFFER = 1024
EVENT_RETRY_S = 1.0


class Checkpointed(Protocol):
    """What persistence needs of an engine: its :meth:`~atom_actors.engine.Engine.checkpoint`."""

    def checkpoint(self) -> Checkpoint: ...


class Restorable(Checkpointed, Protocol):
    """An engine not yet running, that a saved state can be put back into."""

    @property
    def dwell_s(self) -> float: ...

    def restore(self, checkpoint: Checkpoint) -> bool: ...


# -- the agents table ----------------------------------------------------------------------------

def agent_rows(state: SwarmState) -> list[AgentRow]:
    spheres = state.catalog.spheres
    pos = state.positions.tolist()
    freq = state.frequency.tolist()
    return [AgentRow(i, spheres[state.sphere_index[i]].name, state.names[i], state.functions[i],
                     freq[i], STATUS_NAMES[state.status[i]], *pos[i]) for i in range(state.size)]


def restore_rows(state: SwarmState, rows: list[AgentRow], now: float, dwell_s: float) -> bool:
    """Put a stored snapshot into ``state`` at engine time ``now``; False (and ``state``
    untouched) when the rows do not describe this catalog's agents."""
    spheres = state.catalog.spheres
    by_id = {r.id: r for r in rows}
    if sorted(by_id) != list(range(state.size)) or any(
            by_id[i].sphere != spheres[state.sphere_index[i]].name for i in range(state.size)):
        return False
    ordered = [by_id[i] for i in range(state.size)]
    freq = np.clip([r.frequency for r in ordered], state.low_hz, state.canon_hz).astype(float)
    status = np.array([STATUS_CODES.get(r.status, ACTIVE) for r in ordered], np.int8)
    pos = np.array([(r.pos_x, r.pos_y, r.pos_z) for r in ordered], float)
    out, back = status == DISPERSED, status == REGROUPING
    state.frequency[:] = freq
    state.omega[:] = orbit_speed(freq, state.low_hz, state.canon_hz)
    state.status[:] = status
    state.exc_from[:] = np.where(out | back, 1.0, 0.0)
    state.exc_to[:] = np.where(out, 1.0, 0.0)
    state.exc_start[:] = np.where(back, now, now - FLY_S)
    state.status_until[:] = np.where(out, now + dwell_s, np.where(back, now + FLY_S, math.inf))
    # The orbit angle that puts each agent where the snapshot saw it (exact when the geometry is
    # the same, i.e. the same SWARM_SEED; the nearest point of the new orbit otherwise).
    rel = pos - state.centre - state.exc_from[:, None] * state.direction
    angle = np.arctan2((rel * state.axis_v).sum(axis=1), (rel * state.axis_u).sum(axis=1))
    state.phase[:] = angle - state.omega * now
    state.integrate(slice(0, state.size), now)
    return True


async def restore_from_store(engine: Restorable, store: Store) -> bool:
    """Restore ``engine`` (not yet running) from the store's last snapshot, if there is one.

    Raises BackendUnavailable when the store does not answer: starting from scratch over a
    database that holds a newer state would silently lose it.
    """
    rows = await store.load_agents()
    if not rows:
        return False
    # The engine's state as of now, the snapshot put into it, handed back: nothing awaits in
    # between, so "now" is the same moment for both.
    checkpoint = engine.checkpoint()
    if not restore_rows(checkpoint.state, rows, checkpoint.t, engine.dwell_s) \
            or not engine.restore(checkpoint):
        log.warning("stored agents do not match the catalog: starting from a fresh swarm")
        return False
    return True


async def snapshot_agents(engine: Checkpointed, store: Store, *,
                          interval_s: float = SNAPSHOT_INTERVAL_S,
                          task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Write all agents in one batch every ``interval_s``, until cancelled.

    Errors: an unavailable store is logged once per outage and retried on the next beat; the
    engine goes on regardless. Cancellation: one last snapshot, bounded by FINAL_SNAPSHOT_S.
    """
    failing = False
    task_status.started()
    try:
        while True:
            await trio.sleep(interval_s)
            try:
                await store.save_agents(agent_rows(engine.checkpoint().state))
            except BackendUnavailable as exc:
                if not failing:
                    log.warning("agent snapshot failed, retrying every %g s: %s", interval_s, exc)
                failing = True
            else:
                if failing:
                    log.warning("agent snapshots written again")
                failing = False
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(FINAL_SNAPSHOT_S):
            try:
                await store.save_agents(agent_rows(engine.checkpoint().state))
            except BackendUnavailable:
                pass


class EventLog:
    """Records the engine's command events in the store, in order, off the engine's path.

    :meth:`offer` never blocks (the engine calls it as it emits); :meth:`run` writes.
    """

    def __init__(self, store: Store, clock: WallClock | None = None) -> None:
        self.store = store
        self.clock = clock or WallClock()
        self.dropped = 0
        self._send, self._receive = trio.open_memory_channel[EventRecord](EVENT_LOG_BUFFER)

    def offer(self, event: dict) -> None:
        record = _command_record(event)
        if record is None:
            return
        kind, payload = record
        by = checked_by(event.get("by")) or {}
        try:
            self._send.send_nowait(EventRecord(self.clock.now(), kind, payload, **by))
        except trio.WouldBlock:
            self.dropped += 1

    async def run(self, *, task_status: trio.TaskStatus[EventLog] = trio.TASK_STATUS_IGNORED) -> None:
        """Write offered events until cancelled; an outage holds the queue and retries the same
        event every EVENT_RETRY_S. Cancellation drops what was not written yet."""
        task_status.started(self)
        async for record in self._receive:
            failing = False
            while True:
                try:
                    await self.store.record_event(record)
                    break
                except BackendUnavailable as exc:
                    if not failing:
                        log.warning("event log paused: %s", exc)
                    failing = True
                    await trio.sleep(EVENT_RETRY_S)


# What a command leaves in the store's ``events``: one (kind, payload) per command id, built here
# only, whether the API records it (it answered the command) or the engine's event log does.

def dispersal_record(command_id: str, level: Any, sphere: Any, dispersed: Any) -> tuple[str, dict]:
    return "dispersal", {"command_id": command_id, "level": level, "sphere": sphere,
                         "dispersed": dispersed}


def regroup_record(command_id: str, regrouped: Any) -> tuple[str, dict]:
    return "regroup", {"command_id": command_id, "regrouped": regrouped}


def retune_record(command_id: str, agent: Any, frequency: Any) -> tuple[str, dict]:
    return "retune", {"command_id": command_id, "agent": agent, "frequency": frequency}


def _command_record(event: dict) -> tuple[str, dict] | None:
    """The ``events`` row of an engine event that answers a command, else None."""
    name, command_id = event.get("event"), event.get("command_id")
    if command_id is None:
        return None
    if name == "swarm.dispersal":
        return dispersal_record(command_id, event.get("level"), event.get("sphere"),
                                event.get("count"))
    if name == "swarm.regroup":
        return regroup_record(command_id, event.get("count"))
    if name == "agent.frequency":
        return retune_record(command_id, event.get("agent"), event.get("frequency"))
    return None


# -- between engine processes ----------------------------------------------------------------------

@dataclass(frozen=True)
class SavedCheckpoint:
    """A checkpoint read back from its bytes: the arrays of a :class:`SwarmState`, not yet one."""

    seq: int        # the last frame's sequence number
    t: float        # Unix seconds when it was taken
    arrays: dict[str, np.ndarray]


def encode_checkpoint(state: SwarmState, seq: int, t: float) -> bytes:
    """Everything that moves or may differ between processes (geometry from an unseeded start
    included), so that a standby engine continues the swarm exactly where the leader left it."""
    buffer = io.BytesIO()
    np.savez(buffer, meta=np.array([seq, t], float), **state.arrays())
    return buffer.getvalue()


def decode_checkpoint(data: bytes) -> SavedCheckpoint:
    """Raises ValueError on bytes that are not a checkpoint."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in STATE_ARRAYS}
            seq, t = npz["meta"].tolist()
    except (OSError, KeyError, EOFError) as exc:
        raise ValueError(f"not a checkpoint: {exc}") from None
    return SavedCheckpoint(int(seq), float(t), arrays)


def apply_checkpoint(state: SwarmState, checkpoint: SavedCheckpoint) -> bool:
    """Load a checkpoint into ``state``; False (and ``state`` untouched) if its shapes differ."""
    return state.load(checkpoint.arrays)


SUMMARY_HEADER = struct.Struct("<BHId")   # version, agents, seq, t


@dataclass(frozen=True)
class Summary:
    seq: int
    t: float
    status: np.ndarray      # (N,) int8
    frequency: np.ndarray   # (N,) float64


def encode_summary(state: SwarmState, seq: int, t: float) -> bytes:
    """Statuses and frequencies of every agent: what a process without the engine mirrors."""
    n = state.size
    return (SUMMARY_HEADER.pack(1, n, seq % 2**32, t) + state.status.astype("<i1").tobytes()
            + state.frequency.astype("<f8").tobytes())


def decode_summary(data: bytes) -> Summary:
    """Raises ValueError on bytes that are not a summary."""
    if len(data) < SUMMARY_HEADER.size:
        raise ValueError("summary too short")
    version, n, seq, t = SUMMARY_HEADER.unpack_from(data)
    if version != 1 or len(data) != SUMMARY_HEADER.size + n * 9:
        raise ValueError("not a version-1 summary")
    status = np.frombuffer(data, "<i1", n, SUMMARY_HEADER.size).astype(np.int8)
    frequency = np.frombuffer(data, "<f8", n, SUMMARY_HEADER.size + n).astype(float)
    return Summary(seq, t, status, frequency)
