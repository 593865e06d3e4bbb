"""Shared fixtures. Time-dependent tests use ``autojump_clock`` (virtual time)."""

from __future__ import annotations

import os

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


# The modules whose tests take the longest (a browser, podman, nginx, Prometheus, the chaos run,
# several processes per test): marked `slow`, so that `-m "not slow"` runs the quick part.
SLOW_MODULES = frozenset({"test_chaos", "test_image", "test_deploy", "test_prometheus",
                          "test_viewer", "test_example", "test_roles"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.module is not None and item.module.__name__.rsplit(".", 1)[-1] in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> object:
    """Under scripts/test.sh (ATOM_REQUIRE_SERVERS=1, after its set-up installed everything) a
    test never skips quietly: whatever would skip it, by any route, fails it, with the reason."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("ATOM_REQUIRE_SERVERS") == "1" \
            and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under scripts/test.sh, which must not skip: {reason}"


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
