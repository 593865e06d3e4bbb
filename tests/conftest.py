"""Shared fixtures. Time-dependent tests use ``autojump_clock`` (virtual time)."""

from __future__ import annotations

import pytest
import trio

from atom_actors import aio
from atom_actors.bus import MemoryBus
from atom_actors.config import Settings, load_settings
from atom_actors.engine import Engine

from .operators import OPERATOR_SECRET


# real PostgreSQL and Redis, shared and throwaway; a throwaway Redis Sentinel deployment
pytest_plugins = ["tests.servers", "tests.sentinel"]


def pytest_configure(config: pytest.Config) -> None:
    aio.configure()   # as `atom`'s main() does: trio-asyncio loaded, plain asyncio kept outside Trio


def make_settings(**overrides: object) -> Settings:
    """Settings as a fresh environment would give, plus ``overrides`` (lower-case names)."""
    env = {k.upper(): str(v) for k, v in overrides.items()}
    env.setdefault("SWARM_SEED", "7")
    # Every test deployment accepts the tests' operator tokens (tests/operators.py's bearer()).
    env.setdefault("OPERATOR_JWT_SECRET", OPERATOR_SECRET)
    return load_settings(env, env_file=None)


@pytest.fixture
def settings() -> Settings:
    return make_settings()


@pytest.fixture
async def engine(nursery: trio.Nursery, settings: Settings) -> Engine:
    """A running engine; the test must also take `autojump_clock` (pytest-trio reads the clock
    from the test's own arguments only)."""
    return await nursery.start(Engine(settings, MemoryBus()).run)
