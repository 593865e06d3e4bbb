"""What the API and the broadcasters use of a swarm (:class:`SwarmControl`); read-only answers
about a swarm, and the checks of command arguments, in one place.

Shared by :class:`~atom_actors.engine.Engine` (its own live state) and
:class:`~atom_actors.remote.RemoteSwarm` (a mirror of the engine's state in another process), so
that both answer the API and the broadcaster alike and refuse the same bad arguments with the
same errors.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import numpy as np

from .audit import By
from .catalog import Catalog, Sphere
from .config import MIN_HZ, Settings
from .errors import FrequencyOutOfRange, UnknownAgent, UnknownLevel, UnknownSphere
from .swarm import STATUS_NAMES, SwarmState

LEVELS = {"partial": 0.2, "sectoral": 0.5, "total": 1.0}


class SwarmControl(Protocol):
    """What the API and the broadcasters need of the swarm. :class:`Engine` is one (in-process);
    a process without the engine (``--role api|ws``) uses one that reads the bus and sends its
    commands to the engine over it."""

    @property
    def ticking(self) -> bool: ...

    # ``by``: who asked, for the audit only ({"role", "operator"}: a role and a pseudonym,
    # CONTRACT §2.4); it reaches the store's record of the command, never a subscriber.
    async def disperse(self, level: str, sphere: str | None = None,
                       command_id: str | None = None, *, by: By | None = None) -> dict[str, Any]: ...

    async def regroup(self, command_id: str | None = None, *,
                      by: By | None = None) -> dict[str, Any]: ...

    async def retune(self, agent_id: int, hz: float, command_id: str | None = None, *,
                     by: By | None = None) -> dict[str, Any]: ...

    def agent(self, agent_id: int) -> dict[str, Any]: ...

    def agents(self, sphere: str | None = None, status: str | None = None) -> list[dict[str, Any]]: ...

    def counts(self) -> dict[str, Any]: ...

    def frequency_stats(self) -> dict[str, float]: ...

    def roster(self) -> list[dict[str, Any]]: ...


def dispersal_size(level: str, count: int) -> int:
    try:
        return int(count * LEVELS[level])
    except (KeyError, TypeError):
        raise UnknownLevel(level) from None


class SwarmView:
    """Mixed into a class that has ``state``, ``catalog`` and ``settings``."""

    state: SwarmState
    catalog: Catalog
    settings: Settings

    def _refresh(self) -> None:
        """Bring positions up to date before a read (nothing to do for the engine itself)."""

    # -- queries ------------------------------------------------------------------------------

    def agent(self, agent_id: int) -> dict[str, Any]:
        agent = self._agent_id(agent_id)
        self._refresh()
        return self.state.agent(agent)

    def agents(self, sphere: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
        rows = self._rows(sphere)
        wanted = None if status is None else STATUS_NAMES.index(status)
        self._refresh()
        return [self.state.agent(i) for i in rows if wanted is None or self.state.status[i] == wanted]

    def counts(self) -> dict[str, Any]:
        status = self.state.status
        return {
            "by_status": {name: int((status == code).sum()) for code, name in enumerate(STATUS_NAMES)},
            "by_sphere": {s.name: s.count for s in self.catalog.spheres},
        }

    def frequency_stats(self) -> dict[str, float]:
        f = self.state.frequency
        return {"canon": self.settings.frequency, "min": round(float(f.min()), 3),
                "max": round(float(f.max()), 3), "mean": round(float(f.mean()), 3)}

    def roster(self) -> list[dict[str, Any]]:
        return [self.state.agent(i, with_position=False) for i in range(self.state.size)]

    # -- argument checks ----------------------------------------------------------------------

    def _check_level(self, level: Any) -> str:
        if not isinstance(level, str) or level not in LEVELS:
            raise UnknownLevel(level)
        return level

    def _check_hz(self, hz: Any) -> float:
        if isinstance(hz, bool) or not isinstance(hz, int | float) or not math.isfinite(hz) \
                or not MIN_HZ <= hz <= self.settings.frequency:
            raise FrequencyOutOfRange(hz, MIN_HZ, self.settings.frequency)
        return float(hz)

    def _rows(self, sphere: str | None) -> range:
        return self._sphere(sphere).agent_ids if sphere is not None else range(self.state.size)

    def _sphere(self, name: str | None) -> Sphere:
        try:
            return self.catalog.by_name[name]
        except (KeyError, TypeError):
            raise UnknownSphere(name) from None

    def _agent_id(self, agent_id: Any) -> int:
        if isinstance(agent_id, bool) or not isinstance(agent_id, int | np.integer) \
                or not 0 <= agent_id < self.state.size:
            raise UnknownAgent(agent_id, self.state.size)
        return int(agent_id)
