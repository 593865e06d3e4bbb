"""The swarm's state and motion, as numpy arrays and pure functions (no Trio, no I/O).

:class:`SwarmState` owns one row per agent. It lives outside the actor tasks on purpose: a sphere
actor that crashes loses its tasks, never its agents' status, frequency or trajectory, so its
restart picks up exactly where the crash left off.

Motion (all in world units, time in seconds of the engine clock):

* every sphere has a centre on a Fibonacci shell of radius ``SHELL_RADIUS``;
* an agent orbits its centre on its own tilted circle, with an angular speed that grows with its
  frequency (``orbit_speed``); a retune keeps the phase continuous, so nothing jumps;
* a dispersal moves an agent out along its radial direction: its *excursion* goes from where it is
  to 1 in ``FLY_S`` seconds, dwells, then back to 0 when it regroups.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import numpy as np

from .catalog import Catalog

ACTIVE: Final = 0
DISPERSED: Final = 1
REGROUPING: Final = 2
STATUS_NAMES: Final = ("active", "dispersed", "regrouping")
STATUS_CODES: Final = {name: code for code, name in enumerate(STATUS_NAMES)}

SHELL_RADIUS: Final = 18.0
FLY_S: Final = 1.2          # time to fly out to full excursion, or back home
DISPERSAL_DISTANCE: Final = (12.0, 20.0)  # how far out a dispersed agent goes
MIN_SPEED: Final = 0.15     # rad/s at 432 Hz
MAX_SPEED: Final = 1.0      # rad/s at the canon

# Everything that moves or may differ between two engines (geometry from an unseeded start
# included): what a checkpoint carries so that another engine continues the swarm exactly.
STATE_ARRAYS: Final = ("frequency", "omega", "phase", "radius", "centre", "axis_u", "axis_v",
                       "direction", "status", "status_until", "exc_from", "exc_to", "exc_start",
                       "positions")


def orbit_speed(hz: np.ndarray | float, low: float, canon: float) -> np.ndarray | float:
    """Angular speed in rad/s for a frequency: MIN_SPEED at ``low`` up to MAX_SPEED at ``canon``."""
    return MIN_SPEED + (MAX_SPEED - MIN_SPEED) * (np.asarray(hz) - low) / (canon - low)


def sphere_centres(n: int) -> np.ndarray:
    """``n`` points spread evenly on a shell (golden-angle spiral)."""
    k = np.arange(n) + 0.5
    y = 1.0 - 2.0 * k / n
    r = np.sqrt(1.0 - y * y)
    theta = math.pi * (3.0 - math.sqrt(5.0)) * k
    return SHELL_RADIUS * np.stack([r * np.cos(theta), y, r * np.sin(theta)], axis=1)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


@dataclass(eq=False)
class SwarmState:
    """One row per agent; slices of these arrays are what a sphere actor integrates each tick."""

    catalog: Catalog
    low_hz: float
    canon_hz: float
    names: list[str]
    functions: list[str]
    sphere_index: np.ndarray    # (N,) int
    frequency: np.ndarray       # (N,) float64, Hz
    omega: np.ndarray           # (N,) rad/s, from frequency
    phase: np.ndarray           # (N,) rad; angle = phase + omega * t
    radius: np.ndarray          # (N,) orbit radius
    centre: np.ndarray          # (N, 3) its sphere's centre
    axis_u: np.ndarray          # (N, 3) orbit plane basis
    axis_v: np.ndarray          # (N, 3)
    direction: np.ndarray       # (N, 3) outward unit vector × dispersal distance
    status: np.ndarray          # (N,) int8: ACTIVE, DISPERSED, REGROUPING
    status_until: np.ndarray    # (N,) float64: engine time of the next automatic transition
    exc_from: np.ndarray        # (N,) excursion at t_start
    exc_to: np.ndarray          # (N,) excursion it is heading to
    exc_start: np.ndarray       # (N,) engine time the current excursion move began
    positions: np.ndarray       # (N, 3) float32: the last slices the sphere actors reported

    def __post_init__(self) -> None:
        # The orbit basis scaled by the radius: two fewer numpy calls per slice per tick.
        self.orbit_u = self.axis_u * self.radius[:, None]
        self.orbit_v = self.axis_v * self.radius[:, None]

    @classmethod
    def create(cls, catalog: Catalog, low_hz: float, canon_hz: float,
               seed: int | None = None) -> SwarmState:
        rng = np.random.default_rng(seed)
        n = catalog.size
        counts = [s.count for s in catalog.spheres]
        sphere_index = np.repeat(np.arange(len(counts)), counts)
        centres = sphere_centres(len(counts))
        names, functions = [], []
        for s in catalog.spheres:
            for k in range(s.count):
                names.append(f"{s.name}-{k + 1:02d}")
                functions.append(s.functions[k % len(s.functions)])
        frequency = rng.uniform(low_hz, canon_hz, n)
        normal = _unit(rng.normal(size=(n, 3)))
        helper = np.where(np.abs(normal[:, :1]) < 0.9, [[1.0, 0, 0]], [[0, 1.0, 0]])
        axis_u = _unit(np.cross(normal, helper))
        axis_v = np.cross(normal, axis_u)
        size_scale = np.sqrt(np.asarray(counts, dtype=float) / max(counts))[sphere_index]
        radius = (1.5 + 3.5 * size_scale) * rng.uniform(0.6, 1.0, n)
        outward = _unit(centres[sphere_index] + rng.normal(scale=6.0, size=(n, 3)))
        distance = rng.uniform(*DISPERSAL_DISTANCE, n)
        state = cls(
            catalog=catalog, low_hz=low_hz, canon_hz=canon_hz, names=names, functions=functions,
            sphere_index=sphere_index, frequency=frequency,
            omega=np.asarray(orbit_speed(frequency, low_hz, canon_hz)),
            phase=rng.uniform(0, 2 * math.pi, n), radius=radius,
            centre=centres[sphere_index], axis_u=axis_u, axis_v=axis_v,
            direction=outward * distance[:, None],
            status=np.zeros(n, np.int8), status_until=np.full(n, math.inf),
            exc_from=np.zeros(n), exc_to=np.zeros(n), exc_start=np.zeros(n),
            positions=np.zeros((n, 3), np.float32),
        )
        state.integrate(slice(0, n), 0.0)
        return state

    @property
    def size(self) -> int:
        return len(self.status)

    # -- whole-state copies (checkpoints) -------------------------------------------------------

    def copy(self) -> SwarmState:
        """A detached copy: later changes to either leave the other as it was."""
        return dataclasses.replace(self, **{name: getattr(self, name).copy()
                                            for name in STATE_ARRAYS})

    def load(self, arrays: Mapping[str, np.ndarray]) -> bool:
        """Take every array of :data:`STATE_ARRAYS` from ``arrays``, in place (the sphere actors
        hold views of them); False, and nothing changed, when a shape differs."""
        if any(np.shape(arrays[name]) != getattr(self, name).shape for name in STATE_ARRAYS):
            return False
        for name in STATE_ARRAYS:
            getattr(self, name)[...] = arrays[name]
        # What is derived from the geometry (the scaled orbit basis) follows the new geometry.
        self.orbit_u[...] = self.axis_u * self.radius[:, None]
        self.orbit_v[...] = self.axis_v * self.radius[:, None]
        return True

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays of :data:`STATE_ARRAYS`, by name (not copied)."""
        return {name: getattr(self, name) for name in STATE_ARRAYS}

    # -- motion ---------------------------------------------------------------------------------

    def excursion(self, sl: slice | int, t: float) -> np.ndarray:
        """How far out (0 home … 1 fully dispersed) the agents of ``sl`` are at time ``t``."""
        progress = np.clip((t - self.exc_start[sl]) / FLY_S, 0.0, 1.0)
        ease = progress * progress * (3.0 - 2.0 * progress)  # smoothstep: no jolt at either end
        return self.exc_from[sl] + (self.exc_to[sl] - self.exc_from[sl]) * ease

    def integrate(self, sl: slice, t: float) -> None:
        """Write the positions of the agents of ``sl`` at time ``t`` into ``positions[sl]``."""
        SliceView(self, sl).integrate(t)

    def view(self, sl: slice) -> SliceView:
        """A sphere's rows bound once, for its integrator to move every tick."""
        return SliceView(self, sl)

    # -- transitions (called by the agent tasks, one agent at a time) ---------------------------

    def move(self, agent: int, t: float, target: float) -> None:
        """Start moving ``agent``'s excursion from where it is now towards ``target``."""
        self.exc_from[agent] = float(self.excursion(agent, t))
        self.exc_to[agent] = target
        self.exc_start[agent] = t

    def set_frequency(self, agent: int, hz: float, t: float) -> None:
        """Retune ``agent``: its orbit speed changes and its phase is shifted so it does not jump."""
        new_omega = float(orbit_speed(hz, self.low_hz, self.canon_hz))
        self.phase[agent] += (self.omega[agent] - new_omega) * t
        self.omega[agent] = new_omega
        self.frequency[agent] = hz

    # -- views ----------------------------------------------------------------------------------

    def agent(self, i: int, with_position: bool = True) -> dict:
        out = {
            "id": i,
            "sphere": self.catalog.spheres[self.sphere_index[i]].name,
            "name": self.names[i],
            "function": self.functions[i],
            "frequency": round(float(self.frequency[i]), 3),
            "status": STATUS_NAMES[self.status[i]],
        }
        if with_position:
            x, y, z = (round(float(c), 4) for c in self.positions[i])
            out["position"] = {"x": x, "y": y, "z": z}
        return out


@dataclass(frozen=True)
class Checkpoint:
    """The swarm at one frame: what :meth:`Engine.checkpoint` gives and :meth:`Engine.restore`
    takes. ``state`` is a detached copy (:meth:`SwarmState.copy`)."""

    seq: int        # the last frame's sequence number
    t: float        # engine (Unix) seconds when it was taken
    state: SwarmState


class SliceView:
    """One sphere's rows of a :class:`SwarmState`, as views bound once, with scratch buffers.

    Its ``integrate`` is the engine's hot path (15 spheres × 60 ticks a second), where numpy's
    per-call overhead, not the arithmetic, is the cost: so no re-slicing of nine arrays and no
    temporaries per tick, the orbit radius folded into the basis vectors, and no excursion work
    for a sphere whose agents are all home.
    """

    def __init__(self, state: SwarmState, sl: slice) -> None:
        self.state, self.rows = state, sl
        self.omega, self.phase = state.omega[sl], state.phase[sl]
        self.orbit_u, self.orbit_v = state.orbit_u[sl], state.orbit_v[sl]
        self.centre, self.direction = state.centre[sl], state.direction[sl]
        self.status, self.out = state.status[sl], state.positions[sl]
        n = len(self.omega)
        self._angle, self._cos, self._sin = np.empty(n), np.empty((n, 1)), np.empty((n, 1))
        self._pos, self._tmp = np.empty((n, 3)), np.empty((n, 3))

    def integrate(self, t: float) -> None:
        angle, pos, tmp = self._angle, self._pos, self._tmp
        np.multiply(self.omega, t, out=angle)
        angle += self.phase
        np.cos(angle, out=self._cos[:, 0])
        np.sin(angle, out=self._sin[:, 0])
        np.multiply(self.orbit_u, self._cos, out=pos)
        np.multiply(self.orbit_v, self._sin, out=tmp)
        pos += tmp
        pos += self.centre
        if self.status.any():
            pos += self.state.excursion(self.rows, t)[:, None] * self.direction
        self.out[...] = pos
