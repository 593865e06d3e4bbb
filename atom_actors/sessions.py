"""Sceau sessions (CONTRACT.md §2.1): the one module that makes and checks session tokens.

A token is ``v1.<nonce>.<mac>``: 32 random bytes (256 bits) and an HMAC-SHA256 of them under
SECRET_KEY, both base64url. Only ``sha256(token)`` is kept, as the session id, with its expiry and
a revoked flag: a leaked database or Redis opens no session, and a token whose MAC does not
verify is refused before anything is asked.

Where sessions live:

* the **coordinator** holds the live ones (in a deployment: Redis hashes expiring with the
  session), so every process checks any session with one Redis round trip and no PostgreSQL one;
  a revocation reaches every process's revocation readers (the broadcasters close its streams);
* the **store** keeps the durable record (PostgreSQL when configured), written behind by
  :meth:`SessionService.run` from a bounded queue, retried every DURABLE_RETRY_S while the store
  is down. A session the coordinator does not know (Redis lost it, a single process restarted)
  is looked up there, and put back in the coordinator when it is still live.

The REST API creates and revokes sessions here; the broadcaster checks them here too.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass

import trio

from .clock import WallClock
from .coordinator import Coordinator
from .errors import BackendUnavailable, SceauTooShort, SessionInvalid, SessionRequired
from .store import SessionRecord, Store

log = logging.getLogger("atom_actors.sessions")

TOKEN_PREFIX = "v1"
NONCE_BYTES = 32
MAC_BYTES = 16
MAX_TOKEN_CHARS = 256
DURABLE_BUFFER = 4096       # session writes waiting for the store; beyond, dropped and counted
DURABLE_RETRY_S = 1.0


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Session:
    token: str
    id: str
    expires_at: float
    frequency: float


class SessionService:
    """Creates, checks and revokes sessions. ``clock`` gives Unix seconds (virtual under MockClock).

    ``coordinator`` holds the live sessions; ``store`` (optional) the durable record, written by
    :meth:`run` (until it runs, the writes wait in its queue).
    """

    def __init__(self, coordinator: Coordinator, secret_key: str, *, sceau_duration_ms: int,
                 ttl_s: float, frequency: float, store: Store | None = None,
                 clock: WallClock | None = None) -> None:
        if not secret_key:
            raise ValueError("SessionService needs a SECRET_KEY (see Settings.with_ephemeral_key)")
        self.coordinator = coordinator
        self.store = store
        self._key = hashlib.sha256(b"atom-sceau-v1" + secret_key.encode()).digest()
        self.sceau_duration_ms = sceau_duration_ms
        self.ttl_s = ttl_s
        self.frequency = frequency
        self.clock = clock or WallClock()
        self.durable_pending = 0    # writes not in the store yet
        self.durable_dropped = 0    # writes the queue could not hold (a very long outage)
        self._durable_send, self._durable_receive = \
            trio.open_memory_channel[SessionRecord | str](DURABLE_BUFFER)

    def _mac(self, nonce: str) -> str:
        return _b64(hmac.new(self._key, nonce.encode(), hashlib.sha256).digest()[:MAC_BYTES])

    async def activate(self, duration_ms: int) -> Session:
        """Open a session for a touch of ``duration_ms``; raise SceauTooShort below SCEAU_DURATION,
        BackendUnavailable when the coordinator does not answer (the store is not waited for)."""
        if duration_ms < self.sceau_duration_ms:
            raise SceauTooShort(duration_ms, self.sceau_duration_ms)
        nonce = _b64(secrets.token_bytes(NONCE_BYTES))
        token = f"{TOKEN_PREFIX}.{nonce}.{self._mac(nonce)}"
        now = self.clock.now()
        record = SessionRecord(id=token_hash(token), created_at=now, expires_at=now + self.ttl_s,
                               frequency=self.frequency)
        await self.coordinator.save_session(record)
        self._durable(record)
        return Session(token, record.id, record.expires_at, record.frequency)

    def well_formed(self, token: str) -> bool:
        """Whether ``token`` is one of ours (format and MAC), without asking anyone."""
        if not token or len(token) > MAX_TOKEN_CHARS:
            return False
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != TOKEN_PREFIX:
            return False
        return hmac.compare_digest(self._mac(parts[1]), parts[2])

    async def verify(self, token: str | None) -> Session:
        """Return the live session of ``token``; raise SessionRequired or SessionInvalid
        (BackendUnavailable when the coordinator does not answer)."""
        if token is None or not token.strip():
            raise SessionRequired()
        token = token.strip()
        if not self.well_formed(token):
            raise SessionInvalid("it does not verify")
        session_id = token_hash(token)
        record = await self.coordinator.get_session(session_id)
        if record is None:
            record = await self._recall(session_id)
        if record is None:
            raise SessionInvalid("unknown session")
        if record.revoked:
            raise SessionInvalid("revoked")
        if record.expires_at <= self.clock.now():
            raise SessionInvalid("expired")
        return Session(token, record.id, record.expires_at, record.frequency)

    async def live(self, session_id: str) -> bool:
        """Whether the session ``session_id`` is still live (neither revoked nor expired).
        Raises BackendUnavailable when the coordinator (or, for a session it does not know, the
        store) does not answer."""
        record = await self.coordinator.get_session(session_id)
        if record is None:
            record = await self._recall(session_id)
        return record is not None and not record.revoked and record.expires_at > self.clock.now()

    async def revoke(self, token: str | None) -> None:
        """Revoke the session of ``token`` (which must be live), everywhere."""
        session = await self.verify(token)
        await self.coordinator.revoke_session(session.id)
        self._durable(session.id)

    async def _recall(self, session_id: str) -> SessionRecord | None:
        """The durable record of a session the coordinator does not know; put back there while
        it is live. Unknown to both, or expired: None."""
        if self.store is None:
            return None
        record = await self.store.get_session(session_id)
        if record is not None and not record.revoked and record.expires_at > self.clock.now():
            await self.coordinator.save_session(record)
        return record

    # -- the durable record ------------------------------------------------------------------------

    def _durable(self, change: SessionRecord | str) -> None:
        if self.store is None:
            return
        try:
            self._durable_send.send_nowait(change)
            self.durable_pending += 1
        except trio.WouldBlock:
            self.durable_dropped += 1

    async def run(self, *, task_status: trio.TaskStatus[SessionService] = trio.TASK_STATUS_IGNORED) -> None:
        """Write new sessions and revocations to the store, in order, until cancelled.

        Errors: an unavailable store holds the queue, and the same write is retried every
        DURABLE_RETRY_S (logged once per outage). Cancellation drops what was not written.
        """
        task_status.started(self)
        if self.store is None:
            await trio.sleep_forever()
        async for change in self._durable_receive:
            failing = False
            while True:
                try:
                    if isinstance(change, str):
                        await self.store.revoke_session(change)
                    else:
                        await self.store.save_session(change)
                    break
                except BackendUnavailable as exc:
                    if not failing:
                        log.warning("sessions not recorded in the store yet, retrying every "
                                    "%g s: %s", DURABLE_RETRY_S, exc.detail)
                    failing = True
                    await trio.sleep(DURABLE_RETRY_S)
            self.durable_pending -= 1
            if failing:
                log.warning("sessions recorded in the store again")
