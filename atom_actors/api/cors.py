"""CORS for the REST API (CONTRACT.md §1 CORS_ORIGINS, issue 4 §4), on the one host and origin
policy of :mod:`atom_actors.origins` that the WebSocket handshake asks too.

Only listed origins are echoed (never ``*``), with credentials allowed and ``Vary: Origin``; a
preflight from a listed origin is answered 204. A request whose ``Host`` is not on ALLOWED_HOSTS
is refused (400), and a browser request whose ``Origin`` the policy does not accept is refused
(403), as the WebSocket handshake refuses them: a page elsewhere can then neither read nor
trigger anything.
"""

from __future__ import annotations

from ..origins import OriginPolicy

ALLOWED_METHODS = "GET, POST, PUT, DELETE, OPTIONS"
# Authorization: operators' bearer tokens (§2.3) from a console on a listed origin; Idempotency-Key (§2).
ALLOWED_HEADERS = "Content-Type, X-Sceau-Session, Authorization, Idempotency-Key"
EXPOSED_HEADERS = "X-Sceau-Session, Retry-After"
PREFLIGHT_MAX_AGE_S = 600


class CorsPolicy:
    def __init__(self, policy: OriginPolicy) -> None:
        self.policy = policy

    def host_allowed(self, host: str | None) -> bool:
        return self.policy.host_allowed(host)

    def acceptable(self, origin: str | None, host: str) -> bool:
        """Whether a request carrying ``origin`` may be served at all (``host``: its Host)."""
        return self.policy.origin_allowed(origin, host)

    def headers(self, origin: str | None) -> dict[str, str]:
        """Headers for a response to a request from ``origin``."""
        if origin is None or not self.policy.listed(origin):
            return {}
        return {"Access-Control-Allow-Origin": origin,
                "Access-Control-Allow-Credentials": "true",
                "Access-Control-Expose-Headers": EXPOSED_HEADERS}

    def preflight_headers(self, origin: str) -> dict[str, str]:
        """Headers for the 204 answer to a preflight from a listed ``origin``."""
        return {**self.headers(origin),
                "Access-Control-Allow-Methods": ALLOWED_METHODS,
                "Access-Control-Allow-Headers": ALLOWED_HEADERS,
                "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE_S)}
