"""Sceau sessions (CONTRACT.md §2.1): the one module that makes and checks session tokens.

A token is ``v1.<nonce>.<mac>``: 32 random bytes (256 bits) and an HMAC-SHA256 of them under
SECRET_KEY, both base64url. The store keeps only ``sha256(token)`` as the session id, with its
expiry and a revoked flag: a leaked database opens no session, and a token whose MAC does not
verify is refused before the store is asked.

The REST API creates and revokes sessions here; the broadcaster checks them here too.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from .clock import WallClock
from .errors import SceauTooShort, SessionInvalid, SessionRequired
from .store import SessionRecord, Store

TOKEN_PREFIX = "v1"
NONCE_BYTES = 32
MAC_BYTES = 16
MAX_TOKEN_CHARS = 256


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
    """Creates, checks and revokes sessions. ``clock`` gives Unix seconds (virtual under MockClock)."""

    def __init__(self, store: Store, secret_key: str, *, sceau_duration_ms: int, ttl_s: float,
                 frequency: float, clock: WallClock | None = None) -> None:
        if not secret_key:
            raise ValueError("SessionService needs a SECRET_KEY (see Settings.with_ephemeral_key)")
        self.store = store
        self._key = hashlib.sha256(b"atom-sceau-v1" + secret_key.encode()).digest()
        self.sceau_duration_ms = sceau_duration_ms
        self.ttl_s = ttl_s
        self.frequency = frequency
        self.clock = clock or WallClock()

    def _mac(self, nonce: str) -> str:
        return _b64(hmac.new(self._key, nonce.encode(), hashlib.sha256).digest()[:MAC_BYTES])

    async def activate(self, duration_ms: int) -> Session:
        """Open a session for a touch of ``duration_ms``; raise SceauTooShort below SCEAU_DURATION."""
        if duration_ms < self.sceau_duration_ms:
            raise SceauTooShort(duration_ms, self.sceau_duration_ms)
        nonce = _b64(secrets.token_bytes(NONCE_BYTES))
        token = f"{TOKEN_PREFIX}.{nonce}.{self._mac(nonce)}"
        now = self.clock.now()
        record = SessionRecord(id=token_hash(token), created_at=now, expires_at=now + self.ttl_s,
                               frequency=self.frequency)
        await self.store.save_session(record)
        return Session(token, record.id, record.expires_at, record.frequency)

    def well_formed(self, token: str) -> bool:
        """Whether ``token`` is one of ours (format and MAC), without asking the store."""
        if not token or len(token) > MAX_TOKEN_CHARS:
            return False
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != TOKEN_PREFIX:
            return False
        return hmac.compare_digest(self._mac(parts[1]), parts[2])

    async def verify(self, token: str | None) -> Session:
        """Return the live session of ``token``; raise SessionRequired or SessionInvalid."""
        if token is None or not token.strip():
            raise SessionRequired()
        token = token.strip()
        if not self.well_formed(token):
            raise SessionInvalid("it does not verify")
        record = await self.store.get_session(token_hash(token))
        if record is None:
            raise SessionInvalid("unknown session")
        if record.revoked:
            raise SessionInvalid("revoked")
        if record.expires_at <= self.clock.now():
            raise SessionInvalid("expired")
        return Session(token, record.id, record.expires_at, record.frequency)

    async def revoke(self, token: str | None) -> None:
        """Revoke the session of ``token`` (which must be live)."""
        session = await self.verify(token)
        await self.store.revoke_session(session.id)
