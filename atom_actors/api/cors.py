"""CORS as a pure policy (CONTRACT.md §1 CORS_ORIGINS, issue 4 §4).

Only listed origins are echoed (never ``*``), with credentials allowed and ``Vary: Origin``; a
preflight from a listed origin is answered 204. A browser request whose ``Origin`` is neither
listed nor the API's own host is refused (403), as the WebSocket handshake refuses it: a page
elsewhere can then neither read nor trigger anything.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

ALLOWED_METHODS = "GET, POST, PUT, DELETE, OPTIONS"
ALLOWED_HEADERS = "Content-Type, X-Sceau-Session"
EXPOSED_HEADERS = "X-Sceau-Session, Retry-After"
PREFLIGHT_MAX_AGE_S = 600


class CorsPolicy:
    def __init__(self, origins: Iterable[str]) -> None:
        self.origins = frozenset(o.rstrip("/") for o in origins)

    def listed(self, origin: str) -> bool:
        return origin.rstrip("/") in self.origins

    def acceptable(self, origin: str | None, host: str) -> bool:
        """Whether a request carrying ``origin`` may be served at all (``host``: its Host)."""
        if origin is None or self.listed(origin):
            return True
        try:
            return urlsplit(origin).netloc.lower() == host.lower()
        except ValueError:
            return False

    def headers(self, origin: str | None) -> dict[str, str]:
        """Headers for a response to a request from ``origin``."""
        if origin is None or not self.listed(origin):
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
