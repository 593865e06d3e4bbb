"""Who may command (CONTRACT §2.3): operators' access tokens, verified at the edge.

* :mod:`.tokens`: the pure part — :func:`~.tokens.verify` (token, keys, now, policy) →
  :class:`~.tokens.Operator` or a refusal; :func:`~.tokens.mint` for local tokens.
* :mod:`.keys`: the thin Trio shell that fetches the issuer's public keys (httpx, never blocking).
* :class:`Operators` (here): the two together, what the API asks "who is this bearer?".
"""

from __future__ import annotations

import secrets
import time

import trio

from ..clock import WallClock
from ..config import Settings
from ..errors import BackendUnavailable, OperatorTokenInvalid
from .keys import JwksKeys
from .tokens import GUARDIAN, OPERATOR, ROLES, Keys, Operator, Policy, UnknownKey, mint, verify

__all__ = ["GUARDIAN", "OPERATOR", "ROLES", "Operator", "Operators", "local_operators", "mint"]

# The embedded default's link: a token for this process only (its key dies with it).
LOCAL_TOKEN_TTL_S = 7 * 24 * 3600.0


class Operators:
    """Verifies operators' tokens with the keys ``settings`` name: the issuer's JWKS
    (OPERATOR_ISSUER / OPERATOR_JWKS_URL), the shared secret (OPERATOR_JWT_SECRET), both, or
    neither (a view-only deployment: every token is refused).

    Start :meth:`run` (it fetches and refreshes the public keys; without a JWKS it only waits);
    then :meth:`identify` each bearer token. Each process verifies on its own, with its own keys.
    """

    def __init__(self, settings: Settings | None, *, clock: WallClock | None = None,
                 jwks: JwksKeys | None = None) -> None:
        # No settings: view-only (nothing verifies, so the policy is never read).
        self.policy = Policy.from_settings(settings) if settings is not None else \
            Policy("", "", ("",), b"")
        self.secret = (settings.operator_jwt_secret.encode() or None) if settings else None
        # ``jwks``: the keys' fetcher, when not the settings' own (tests tune its bounds).
        self.jwks = jwks or (JwksKeys(settings.jwks_url) if settings and settings.jwks_url
                             else None)
        self._clock = clock   # made on first use: a WallClock needs a running trio

    @classmethod
    def view_only(cls) -> Operators:
        """Operators that accept no token (no issuer, no secret): a view-only API."""
        return cls(None)

    @property
    def configured(self) -> bool:
        return self.secret is not None or self.jwks is not None

    async def run(self, *, task_status: trio.TaskStatus[Operators] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the issuer's keys fresh until cancelled (:class:`~.keys.JwksKeys`); started once
        the first fetch is done or a few seconds have passed."""
        if self.jwks is None:
            task_status.started(self)
            await trio.sleep_forever()
        async with trio.open_nursery() as nursery:
            await nursery.start(self.jwks.run)
            task_status.started(self)

    async def identify(self, token: str) -> Operator:
        """Who bears ``token``. Raises OperatorTokenInvalid for a token that does not verify
        (view-only: any token), BackendUnavailable when it names a public key and none could ever
        be fetched."""
        if not self.configured:
            raise OperatorTokenInvalid("this deployment accepts no operator tokens (view-only)")
        try:
            return verify(token, self._keys(), self._now(), self.policy)
        except UnknownKey:
            if self.jwks is None:
                raise OperatorTokenInvalid("it names a key this server does not have") from None
        await self.jwks.refetch()
        try:
            return verify(token, self._keys(), self._now(), self.policy)
        except UnknownKey:
            if not self.jwks.ever_fetched:
                raise BackendUnavailable("issuer", "its public keys could not be fetched yet") from None
            raise OperatorTokenInvalid("it names a key its issuer does not publish") from None

    def _now(self) -> float:
        if self._clock is None:
            self._clock = WallClock()
        return self._clock.now()

    def _keys(self) -> Keys:
        return Keys(self.jwks.known() if self.jwks is not None else {}, self.secret)


def local_operators(settings: Settings) -> tuple[Settings, str]:
    """The embedded default (§2.3): settings with an ephemeral OPERATOR_JWT_SECRET, and a token
    with both roles signed with it, valid while this process lives."""
    local = settings.model_copy(update={"operator_jwt_secret": secrets.token_urlsafe(48)})
    token = mint(local.operator_jwt_secret, ROLES, now=time.time(), ttl_s=LOCAL_TOKEN_TTL_S,
                 settings=local, subject="local-operator")
    return local, token
