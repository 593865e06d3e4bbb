"""Streams end with their session (CONTRACT §4): a subscriber whose Sceau session is revoked —
through any API process of the deployment — or expires is closed with 4401 (``session ended``)
within a second, on every WebSocket process.

* Revocations come from the coordinator (``subscribe_revocations``: Redis pub/sub in a
  deployment, in-process otherwise): :meth:`SessionGuard.run` kicks every subscriber of that
  session at once. When the coordinator says revocations may have been missed (RESYNC: the
  subscription to Redis was made again), every session held here is checked again.
* Expiry needs nobody: :meth:`SessionGuard.expire` sleeps in the subscriber's own task until its
  session's ``expires_at``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

import trio

from ..clock import WallClock
from ..coordinator import RESYNC
from ..errors import BackendUnavailable
from ..sessions import Session, SessionService
from .fanout import Subscriber

log = logging.getLogger("atom_actors.broadcaster")

SESSION_ENDED: Final = 4401


class SessionGuard:
    """The subscribers of each session, in one process; ``run`` it beside the fan-out."""

    def __init__(self, sessions: SessionService) -> None:
        self.sessions = sessions
        self.clock = WallClock()
        self._by_session: dict[str, set[Subscriber]] = {}

    @contextmanager
    def watch(self, session: Session, sub: Subscriber) -> Iterator[None]:
        """While the block runs, ``sub`` is closed with 4401 when ``session`` is revoked."""
        self._by_session.setdefault(session.id, set()).add(sub)
        try:
            yield
        finally:
            subs = self._by_session.get(session.id)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._by_session[session.id]

    async def expire(self, session: Session, sub: Subscriber) -> None:
        """Close ``sub`` with 4401 when ``session`` expires (run it in the subscriber's tasks)."""
        await trio.sleep_until(self.clock.to_trio(session.expires_at))
        self._end(sub)

    async def run(self, *, task_status: trio.TaskStatus[SessionGuard] = trio.TASK_STATUS_IGNORED) -> None:
        """Close the streams of every revoked session until cancelled.

        Errors: a session that cannot be checked again after a RESYNC (the coordinator is down)
        keeps its streams until the next RESYNC."""
        with self.sessions.coordinator.subscribe_revocations() as revocations:
            task_status.started(self)
            async for session_id in revocations:
                if session_id == RESYNC:
                    await self._resync()
                else:
                    self._end_session(session_id)

    async def _resync(self) -> None:
        for session_id in list(self._by_session):
            try:
                live = await self.sessions.live(session_id)
            except BackendUnavailable:
                continue
            if not live:
                self._end_session(session_id)

    def _end_session(self, session_id: str) -> None:
        for sub in list(self._by_session.get(session_id, ())):
            self._end(sub)

    def _end(self, sub: Subscriber) -> None:
        sub.kick("session", SESSION_ENDED)
