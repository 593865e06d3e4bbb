"""The asyncio bridge and the one guard every backend call goes through."""

from __future__ import annotations

import pytest

from atom_actors.aio import GuardedCalls, open_bridge, outage_detail
from atom_actors.errors import BackendUnavailable


class Outage(ConnectionError):
    pass


async def _refused() -> None:
    raise Outage("connection refused\nsecond line")


async def _bug() -> None:
    raise KeyError("a bug, not an outage")


async def _answer(x: int) -> int:
    return x + 1


async def test_a_guarded_call_answers_and_an_outage_becomes_backend_unavailable():
    failures: list[str] = []
    successes: list[None] = []
    guard = GuardedCalls("redis", "bus", (ConnectionError,), 1.0,
                         on_failure=failures.append, on_success=lambda: successes.append(None))
    async with open_bridge() as bridge:
        guard.bridge = bridge
        assert await guard(_answer, 41) == 42
        with pytest.raises(BackendUnavailable) as info:
            await guard(_refused)
        # A bug is not an outage: it propagates as itself, and is counted as neither.
        with pytest.raises(KeyError):
            await guard(_bug)
    assert info.value.backend == "redis" and info.value.status == 503
    # The answer says what; why (and where) only reaches the log, through str().
    assert info.value.detail == "redis is unavailable"
    assert str(info.value) == "redis is unavailable: Outage: connection refused"
    assert failures == ["Outage: connection refused"] and len(successes) == 1


async def test_a_backend_that_is_not_running_fails_at_once():
    guard = GuardedCalls("postgresql", "store", (OSError,), 1.0)
    with pytest.raises(BackendUnavailable, match="the store is not running"):
        await guard(_answer, 1)


def test_an_outage_is_described_in_one_line():
    assert outage_detail(TimeoutError()) == "TimeoutError"
    assert outage_detail(OSError("reset\nby peer")) == "OSError: reset"
