"""The asyncio bridge: asyncpg and ``redis.asyncio`` are asyncio libraries; the rest is Trio.

One trio-asyncio loop per process, opened near the root nursery (:func:`atom_actors.app.serve`),
shared by both backends. Only ``store/postgres.py`` and ``bus/redis.py`` call into it, through
:class:`Bridge`; everything else stays plain Trio and never sees an asyncio object.

A backend run on its own (a test, ``atom migrate``) opens a loop of its own: :func:`open_bridge`
reuses the loop of the calling task's context when there is one.

Importing this module does nothing: :func:`configure` (``main()`` calls it, before ``trio.run``)
loads trio-asyncio and keeps plain asyncio working outside Trio.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from .errors import BackendUnavailable, sole

if TYPE_CHECKING:
    import trio_asyncio

T = TypeVar("T")


def configure() -> None:
    """Load trio-asyncio, and keep plain asyncio working outside Trio; once, before ``trio.run``.

    Importing trio_asyncio makes ``asyncio.new_event_loop()`` outside Trio return its own
    synchronous loop unless a policy is set. Asyncio code of other libraries in this process (a
    browser driver in the tests, say) expects the standard loop: set the default policy, which
    trio_asyncio then defers to outside Trio. Inside Trio nothing changes. Called inside Trio,
    it does nothing (the policy cannot be changed there)."""
    import trio_asyncio  # noqa: F401 - its import installs its loop policy

    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)   # the policy API, from 3.14
            asyncio.set_event_loop_policy(asyncio.DefaultEventLoopPolicy())


class Bridge:
    """Runs asyncio coroutine functions on one loop, from any Trio task.

    The loop is named explicitly, so a Trio task that did not inherit the loop's context (a test
    fixture's sibling task, say) can still call in. Cancelling the Trio caller cancels the asyncio
    task it waits on.
    """

    def __init__(self, loop: trio_asyncio.BaseTrioEventLoop) -> None:
        self.loop = loop

    async def call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        # The coroutine is created here but runs (and so first touches asyncio) inside the loop.
        return await self.loop.run_aio_coroutine(fn(*args, **kwargs))

    async def close(self, fn: Callable[..., Awaitable[Any]], *args: Any, timeout_s: float = 1.0) -> None:
        """Run a closing coroutine even while the caller is being cancelled, for at most
        ``timeout_s``; a failure to close is not worth a crash at shutdown."""
        with trio.CancelScope(shield=True), trio.move_on_after(timeout_s):
            try:
                await self.call(fn, *args)
            except Exception:  # noqa: BLE001 - the connection is going away either way
                pass


def outage_detail(exc: BaseException) -> str:
    """What an outage was, in one line: ``ConnectionRefusedError: [Errno 111] ...``.

    The one place the detail of a BackendUnavailable raised by a backend call is worded."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def silence_detail(timeout_s: float) -> str:
    """The detail of a call that got no answer within ``timeout_s``."""
    return f"no answer within {timeout_s:g} s"


class GuardedCalls:
    """The one way a backend calls its asyncio client: bounded, and an outage made
    :class:`~atom_actors.errors.BackendUnavailable`.

    ``backend`` names it in errors and metrics (``redis``, ``postgres``); ``outages`` are the
    exceptions that mean the server is unreachable, restarting or overloaded (anything else is a
    bug and propagates as it is); each call gets ``2 × timeout_s`` (the client's own socket
    timeouts should fire first). ``on_failure(detail)`` hears of every failed call (count it, log
    the start of an outage), ``on_success()`` of every answered one. ``bridge`` is None while the
    backend is not running: a call then fails at once, ``the <part> is not running``.
    """

    def __init__(self, backend: str, part: str, outages: tuple[type[BaseException], ...],
                 timeout_s: float, *, on_failure: Callable[[str], None] | None = None,
                 on_success: Callable[[], None] | None = None) -> None:
        self.backend = backend
        self.part = part
        self.outages = outages
        self.timeout_s = timeout_s
        self.bridge: Bridge | None = None
        self._on_failure = on_failure or (lambda detail: None)
        self._on_success = on_success or (lambda: None)

    def not_running(self) -> BackendUnavailable:
        return BackendUnavailable(self.backend, f"the {self.part} is not running")

    async def __call__(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``fn(*args)`` on the asyncio loop; an outage or silence raises BackendUnavailable."""
        if self.bridge is None:
            raise self.not_running()
        try:
            with trio.fail_after(self.timeout_s * 2):
                result = await self.bridge.call(fn, *args)
        except trio.TooSlowError:
            detail = silence_detail(self.timeout_s * 2)
        except self.outages as exc:
            detail = outage_detail(exc)
        else:
            self._on_success()
            return result
        self._on_failure(detail)
        raise BackendUnavailable(self.backend, detail) from None


@asynccontextmanager
async def open_bridge() -> AsyncIterator[Bridge]:
    """Yield a :class:`Bridge` on the loop of this task's context, opening one if there is none."""
    import trio_asyncio

    loop = trio_asyncio.current_loop.get()
    if loop is not None:
        yield Bridge(loop)
        return
    try:
        async with trio_asyncio.open_loop() as loop:
            yield Bridge(loop)
    except BaseExceptionGroup as group:
        # open_loop's own nurseries wrap whatever the body raised: hand it on as itself.
        raise sole(group) from None
