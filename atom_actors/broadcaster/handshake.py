"""What a subscriber asked for, and whether it may have it (CONTRACT.md §4): pure, no I/O.

The server reads the request target and headers of a WebSocket handshake, and either streams with
the :class:`StreamRequest` made here or refuses with the HTTP status of the
:class:`~atom_actors.errors.StreamRefused` raised here. The hello message is built here too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

from ..catalog import Catalog
from ..errors import AtomError, BadStreamParameter, HostNotAllowed, OriginForbidden, StreamNotFound
from ..origins import OriginPolicy
from ..protocol import ENCODINGS, Q16_RANGE

PATH: Final = "/ws/swarm"
PROTOCOL: Final = 1
SESSION_HEADER: Final = b"x-sceau-session"
MAX_PARAMETER_CHARS: Final = 512


@dataclass(frozen=True, slots=True)
class StreamRequest:
    encoding: str
    fps: int
    session: str | None   # the Sceau token, from ``?session=`` or X-Sceau-Session
    origin: str | None    # the browser's Origin header; None for a non-browser client
    host: str = ""        # the Host header: behind a proxy, the site's public host


def parse_request(target: str, headers: list[tuple[bytes, bytes]], tick_hz: int,
                  host: str = "") -> StreamRequest:
    """Read path, query and headers; raise StreamNotFound (404) or BadStreamParameter (400)."""
    parts = urlsplit(target)
    if parts.path != PATH:
        raise StreamNotFound(parts.path, PATH)
    try:
        query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=False,
                         max_num_fields=16)
    except ValueError:
        raise BadStreamParameter("query", "too many parameters") from None
    for name, values in query.items():
        if len(values) > 1:
            raise BadStreamParameter(name, "given more than once")
    encoding = query.get("encoding", ["f32"])[0]
    if encoding not in ENCODINGS:
        raise BadStreamParameter("encoding", f"{encoding[:32]!r} is not one of {', '.join(ENCODINGS)}")
    fps_text = query.get("fps", [str(tick_hz)])[0]
    if not fps_text.isascii() or not fps_text.isdigit() or len(fps_text) > 4 \
            or not 1 <= int(fps_text) <= tick_hz or tick_hz % int(fps_text):
        raise BadStreamParameter("fps", f"{fps_text[:32]!r} is not a divisor of TICK_HZ={tick_hz}")
    session = query.get("session", [None])[0]
    origin = None
    for name, value in headers:
        name = name.lower()
        if name == SESSION_HEADER and session is None:
            session = value.decode("latin-1")
        elif name == b"origin":
            origin = value.decode("latin-1")
    if session is not None and len(session) > MAX_PARAMETER_CHARS:
        session = session[:MAX_PARAMETER_CHARS]   # too long to be ours: it will not verify
    return StreamRequest(encoding, int(fps_text), session or None, origin, host.lower())


def check_host_and_origin(wanted: StreamRequest, policy: OriginPolicy) -> None:
    """The Host must be on ALLOWED_HOSTS (else HostNotAllowed, 400) and a browser's Origin one the
    policy accepts (else OriginForbidden, 403): the same rules as the API's (origins.py)."""
    if not policy.host_allowed(wanted.host):
        raise HostNotAllowed(wanted.host)
    if not policy.origin_allowed(wanted.origin, wanted.host):
        raise OriginForbidden(wanted.origin or "")


def error_body(error: AtomError) -> bytes:
    """The JSON error body of a refused handshake, as the API's errors are."""
    return json.dumps({"error": error.code, "detail": error.detail}).encode()


def hello_head(catalog: Catalog, tick_hz: int, fps: int, encoding: str) -> str:
    """The hello message up to its roster, as JSON text missing its closing brace."""
    hello: dict[str, Any] = {
        "type": "hello", "protocol": PROTOCOL, "agents": catalog.size, "tick_hz": tick_hz,
        "fps": fps, "encoding": encoding, "q16_range": Q16_RANGE,
        "spheres": [{"name": s.name, "count": s.count, "first_agent": s.first, "color": s.color}
                    for s in catalog.spheres],
    }
    return json.dumps(hello, separators=(",", ":"))[:-1]


def hello(head: str, roster_json: str) -> str:
    """The whole hello: ``head`` from :func:`hello_head` and the roster, already JSON."""
    return f'{head},"roster":{roster_json}}}'
