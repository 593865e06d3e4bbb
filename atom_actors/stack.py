"""Services started in order and stopped in reverse order, each within a deadline.

A plain nursery cancels all its tasks at once: the store could close its connections while the
engine is still writing its last snapshot, or the bus while the engine gives its lease back. In a
:class:`ServiceStack` each service runs in a cancel scope of its own, shielded from the
cancellation of the tree; leaving the stack (cancelled, crashed or done) cancels the services one
at a time, last started first, each awaited before the next — the ``rest_for_one`` order run
backwards.

Every service keeps the usual contract: ``fn(task_status=...)`` calls ``task_status.started()``,
and stops, bounded, when cancelled. One that is still running ``stop_timeout_s`` after it was
cancelled (its own clean-up is stuck) is named in an error line and left behind: the services
below it are stopped on time all the same. (Trio cannot kill a task: the stack's nursery still
ends only once that service does.)
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import trio

log = logging.getLogger("atom_actors.stack")

STOP_TIMEOUT_S = 5.0     # what a service gets to stop once cancelled, unless told otherwise


class ServiceStack:
    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self._running: list[tuple[str, trio.CancelScope, trio.Event, float]] = []
        self.hung: list[str] = []   # services that did not stop within their deadline

    async def start(self, fn: Callable[..., Awaitable[Any]], *args: Any, name: str | None = None,
                    stop_timeout_s: float = STOP_TIMEOUT_S) -> Any:
        """Start ``fn(*args)`` like ``nursery.start``; return what it passed to ``started``.

        Once cancelled, it has ``stop_timeout_s`` to stop before the stack goes on without it."""
        name = name or getattr(fn, "__qualname__", repr(fn))
        scope = trio.CancelScope(shield=True)
        done = trio.Event()
        value = await self._nursery.start(self._host, partial(fn, *args), scope, done, name=name)
        self._running.append((name, scope, done, stop_timeout_s))
        return value

    @staticmethod
    async def _host(fn: Callable[..., Awaitable[Any]], scope: trio.CancelScope, done: trio.Event,
                    *, task_status: trio.TaskStatus[Any]) -> None:
        try:
            with scope:
                await fn(task_status=task_status)
        finally:
            done.set()

    async def stop(self) -> None:
        """Stop every service, last started first, each within its deadline."""
        while self._running:
            name, scope, done, timeout_s = self._running.pop()
            scope.cancel()
            with trio.move_on_after(timeout_s):
                await done.wait()
            if not done.is_set():
                self.hung.append(name)
                log.error("service %s did not stop within %g s of being cancelled; "
                          "stopping the others", name, timeout_s)


@asynccontextmanager
async def open_service_stack() -> AsyncIterator[ServiceStack]:
    async with trio.open_nursery() as nursery:
        stack = ServiceStack(nursery)
        try:
            yield stack
        finally:
            with trio.CancelScope(shield=True):
                await stack.stop()
