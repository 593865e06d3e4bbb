"""Readiness checks, as the API and the engine and ws roles' probes answer them (pure but for
the pings)."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from ..errors import BackendUnavailable

READY_TIMEOUT_S = 2.0
# What a readiness check answers when its part is fine.
OK = "ok"

async def ping(part: Any) -> str:
    """``OK`` when ``part.ping()`` answers within READY_TIMEOUT_S, else what went wrong."""
    return await answers(part.ping)


async def answers(call: Callable[[], Awaitable[Any]]) -> str:
    """``OK`` when ``call()`` returns within READY_TIMEOUT_S, else what went wrong."""
    with trio.move_on_after(READY_TIMEOUT_S):
        try:
            await call()
        except BackendUnavailable as exc:
            return exc.detail
        return OK
    return f"no answer within {READY_TIMEOUT_S:g} s"


def fresh(age_s: float, bound_s: float, what: str) -> str:
    """``OK`` when ``age_s`` (since the last ``what``) is under ``bound_s``, else why not."""
    if age_s < bound_s:
        return OK
    return f"no {what} yet" if age_s == math.inf else f"no {what} for {age_s:.1f} s"


def readiness(checks: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """The status and body of ``/api/v1/health/ready`` for these checks."""
    failing = {k: v for k, v in checks.items() if v != OK}
    if not failing:
        return 200, {"status": "ready", "checks": checks}
    detail = "not ready: " + ", ".join(f"{k} {v}" for k, v in failing.items())
    return 503, {"error": "not_ready", "detail": detail, "checks": checks}
