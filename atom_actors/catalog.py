"""The sphere catalog (CONTRACT.md §3), read from ``config/spheres.toml``.

The catalog fixes the agent-id order: sphere after sphere, in the file's order, so that agent ids
run 0..N-1 and each sphere owns a contiguous slice ``[first, first + count)``.

It is read with the settings (``Settings.catalog``) and handed down from there; nothing reads
the file at import. ``CATALOG`` (the shipped catalog, read on first use) is for scripts and tests.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
# An installed wheel carries the catalog inside the package; a source checkout has it at the top.
_CANDIDATES = (_HERE / "_config" / "spheres.toml", _HERE.parent / "config" / "spheres.toml")


@dataclass(frozen=True, slots=True)
class Sphere:
    index: int
    name: str
    count: int
    color: str
    functions: tuple[str, ...]
    first: int  # id of its first agent

    @property
    def agent_ids(self) -> range:
        return range(self.first, self.first + self.count)


@dataclass(frozen=True)
class Catalog:
    spheres: tuple[Sphere, ...]

    @cached_property
    def size(self) -> int:
        return sum(s.count for s in self.spheres)

    @cached_property
    def by_name(self) -> dict[str, Sphere]:
        return {s.name: s for s in self.spheres}

    def sphere_of(self, agent_id: int) -> Sphere:
        for sphere in self.spheres:
            if agent_id < sphere.first + sphere.count:
                return sphere
        raise IndexError(agent_id)

    @classmethod
    def load(cls, path: Path | None = None) -> Catalog:
        if path is None:
            path = next((p for p in _CANDIDATES if p.is_file()), _CANDIDATES[-1])
        with open(path, "rb") as f:
            data = tomllib.load(f)
        spheres, first = [], 0
        for index, entry in enumerate(data["sphere"]):
            spheres.append(Sphere(index, entry["name"], int(entry["count"]), entry["color"],
                                  tuple(entry["functions"]), first))
            first += int(entry["count"])
        return cls(tuple(spheres))


@cache
def shipped() -> Catalog:
    """The catalog shipped with the package, read once."""
    return Catalog.load()


def __getattr__(name: str) -> Any:
    if name == "CATALOG":
        return shipped()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
