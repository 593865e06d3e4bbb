"""The one policy on hosts and origins, for the REST API (CORS) and the WebSocket handshake alike
(CONTRACT.md §1 ALLOWED_HOSTS and CORS_ORIGINS, §2, §4): pure, no I/O.

* A request's ``Host`` must be on ALLOWED_HOSTS (``*`` allows any), else 400 ``host_not_allowed``.
  This is what defeats DNS rebinding: a page on ``evil.example``, re-pointed at 127.0.0.1, sends
  ``Host: evil.example``, which no deployment lists.
* A browser's ``Origin`` is accepted when it is listed in CORS_ORIGINS, when it is the server's
  own (the API's bound URL, under every loopback name on a loopback address), or when it names
  the allowed Host the request was sent to (a page of the site itself, e.g. the viewer behind
  nginx). No Origin (a non-browser client) is accepted.

Hosts and origins are compared lower-case, without a trailing slash or dot, and with the
scheme's default port dropped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final
from urllib.parse import urlsplit

ANY_HOST: Final = "*"
LOOPBACK_NAMES: Final = ("localhost", "127.0.0.1", "[::1]")
DEFAULT_PORTS: Final = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_HOST = re.compile(r"(?P<name>\[[0-9a-f:.]+\]|[a-z0-9_][a-z0-9_.-]*)(?::(?P<port>[0-9]{1,5}))?")


def split_host(host: str) -> tuple[str, int | None] | None:
    """``host[:port]`` as (name, port), lower-case; None if it is not a host name at all."""
    found = _HOST.fullmatch(host.strip().lower())
    if found is None:
        return None
    port = found.group("port")
    return found.group("name").rstrip("."), int(port) if port else None


def normalise_origin(origin: str) -> str:
    """``scheme://host[:port]``, lower-case, with the scheme's default port dropped."""
    parts = urlsplit(origin.strip().rstrip("/").lower())
    split = split_host(parts.netloc)
    if not parts.scheme or split is None:
        return origin.strip().rstrip("/").lower()
    name, port = split
    if port is not None and port != DEFAULT_PORTS.get(parts.scheme):
        return f"{parts.scheme}://{name}:{port}"
    return f"{parts.scheme}://{name}"


def own_origins(url: str) -> set[str]:
    """``url`` as an origin; on a loopback or wildcard address, under every loopback name."""
    parts = urlsplit(url.strip().lower())
    host = parts.hostname or ""
    names = {f"[{host}]" if ":" in host else host}
    if host in ("localhost", "127.0.0.1", "::1", "0.0.0.0", "::"):
        names |= set(LOOPBACK_NAMES)
    port = f":{parts.port}" if parts.port else ""
    return {normalise_origin(f"{parts.scheme}://{name}{port}") for name in names}


class OriginPolicy:
    """ALLOWED_HOSTS, CORS_ORIGINS and the server's own origins, asked by both servers."""

    def __init__(self, cors_origins: Iterable[str], allowed_hosts: Iterable[str],
                 own: Iterable[str] = ()) -> None:
        self.listed_origins = frozenset(normalise_origin(o) for o in cors_origins)
        self.any_host = False
        self._hosts: set[tuple[str, int | None]] = set()
        for entry in allowed_hosts:
            if entry.strip() == ANY_HOST:
                self.any_host = True
            elif (split := split_host(entry)) is not None:
                self._hosts.add(split)
        self.own: set[str] = set()
        for url in own:
            self.add_own(url)

    def add_own(self, url: str) -> None:
        """Also accept pages from ``url`` (a server's bound URL, known once it listens)."""
        self.own |= own_origins(url)

    def host_allowed(self, host: str | None) -> bool:
        """Whether a request whose Host header is ``host`` may be served at all."""
        if self.any_host:
            return True
        split = split_host(host or "")
        if split is None:
            return False
        name, port = split
        return (name, None) in self._hosts or (port is not None and (name, port) in self._hosts)

    def listed(self, origin: str | None) -> bool:
        """Whether ``origin`` is in CORS_ORIGINS (the only origins CORS headers are sent to)."""
        return origin is not None and normalise_origin(origin) in self.listed_origins

    def origin_allowed(self, origin: str | None, host: str | None) -> bool:
        """Whether a request carrying ``origin``, sent to ``host``, may be served."""
        if origin is None:
            return True
        normal = normalise_origin(origin)
        if normal in self.listed_origins or normal in self.own:
            return True
        if not self.host_allowed(host):
            return False   # the same-host rule holds only for an allowed Host
        scheme = urlsplit(normal).scheme
        split = split_host(host or "")
        if split is None or scheme not in DEFAULT_PORTS:
            return False
        name, port = split
        return normal == normalise_origin(f"{scheme}://{name}" + (f":{port}" if port else ""))
