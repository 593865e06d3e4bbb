"""Services started in order and stopped in reverse order.

A plain nursery cancels all its tasks at once: the store could close its connections while the
engine is still writing its last snapshot, or the bus while the engine gives its lease back. In a
:class:`ServiceStack` each service runs in a cancel scope of its own, shielded from the
cancellation of the tree; leaving the stack (cancelled, crashed or done) cancels the services one
at a time, last started first, each awaited before the next — the ``rest_for_one`` order run
backwards.

Every service keeps the usual contract: ``fn(task_status=...)`` calls ``task_status.started()``,
and stops, bounded, when cancelled.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import trio


class ServiceStack:
    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self._running: list[tuple[str, trio.CancelScope, trio.Event]] = []

    async def start(self, fn: Callable[..., Awaitable[Any]], *args: Any, name: str | None = None) -> Any:
        """Start ``fn(*args)`` like ``nursery.start``; return what it passed to ``started``."""
        scope = trio.CancelScope(shield=True)
        done = trio.Event()
        value = await self._nursery.start(self._host, partial(fn, *args), scope, done,
                                          name=name or getattr(fn, "__qualname__", repr(fn)))
        self._running.append((name or "", scope, done))
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
        """Stop every service, last started first."""
        while self._running:
            _, scope, done = self._running.pop()
            scope.cancel()
            await done.wait()


@asynccontextmanager
async def open_service_stack() -> AsyncIterator[ServiceStack]:
    async with trio.open_nursery() as nursery:
        stack = ServiceStack(nursery)
        try:
            yield stack
        finally:
            with trio.CancelScope(shield=True):
                await stack.stop()
