"""Request plumbing the routes share: the API's context, session checks, body and query parsing,
and the error documentation of each route.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager as ContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import wraps
from typing import TYPE_CHECKING, Any, TypeVar

import pydantic
import trio
from quart import current_app, g, request
from quart_schema import document_querystring, document_request, document_response, security_scheme

from ..bus import Bus
from ..clock import WallClock
from ..config import Settings
from ..coordinator import Coordinator, MemoryCoordinator
from ..errors import (BackendUnavailable, BodyNotJSON, OperatorTokenInvalid, OperatorTokenRequired,
                      RequestInvalid, RoleRequired, UnknownAgent, UnknownSphere)
from ..metrics import Counted, Metrics
from ..operators import Operator, Operators
from ..peers import ClientAddresses
from ..safeguard import BriseCircuit
from ..sessions import SessionService
from ..store import EventRecord, Store
from . import idempotency
from .cors import CorsPolicy
from .ratelimit import SessionLimits
from .schemas import ErrorBody, ValidationErrorBody

if TYPE_CHECKING:
    from ..swarm_view import SwarmControl

log = logging.getLogger("atom_actors.api")

SESSION_HEADER = "X-Sceau-Session"
BEARER_SCHEME = "bearer"   # the OpenAPI security scheme of operators' tokens (§2.3)
SCEAU_SCHEME = "sceau"
# The agent list over REST may be this old (and is never older than the last command).
AGENTS_MAX_AGE_S = 0.1
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class ApiInput:
    """Everything the API uses, named: what :func:`~atom_actors.api.create_app` and
    :func:`~atom_actors.api.serve_api` take.

    ``control``: the swarm (the engine, or a remote one); ``store``: where commands are recorded
    and what readiness pings, with ``bus`` and ``coordinator``; ``metrics``: served on
    /metrics and counting commands (none: nothing counted, an empty /metrics); ``subscribers``:
    the WebSocket
    subscribers now (none: 0); ``ws_url``: the broadcaster's, whose port /health tells;
    ``operators``: who verifies operators' tokens (none: a view-only API, every token refused).
    """

    settings: Settings
    control: SwarmControl
    sessions: SessionService
    safeguard: BriseCircuit
    store: Store
    bus: Bus
    coordinator: Coordinator | None = None
    metrics: Metrics | None = None
    subscribers: Callable[[], int] | None = None
    ws_url: str | None = None
    operators: Operators | None = None


@dataclass
class Api:
    """What the routes use: the :class:`ApiInput`, and this app's own CORS policy, rate-limit
    buckets, rule for client addresses and caches."""

    input: ApiInput
    cors: CorsPolicy
    buckets: SessionLimits
    addresses: ClientAddresses = field(default_factory=lambda: ClientAddresses(0))
    clock: WallClock = field(default_factory=WallClock)
    # Where Idempotency-Key records are: the deployment's coordinator (this app's own memory one
    # when it was given none, as in some tests).
    keys: Coordinator = field(default_factory=MemoryCoordinator)
    settled_at: float = -math.inf   # this API's last command has reached the swarm by then
    _agents_cache: tuple[float, dict[tuple, bytes]] = field(default_factory=lambda: (-math.inf, {}))

    @property
    def settings(self) -> Settings:
        return self.input.settings

    @property
    def control(self) -> SwarmControl:
        return self.input.control

    @property
    def sessions(self) -> SessionService:
        return self.input.sessions

    @property
    def safeguard(self) -> BriseCircuit:
        return self.input.safeguard

    @property
    def store(self) -> Store:
        return self.input.store

    @property
    def operators(self) -> Operators:
        """Who verifies bearer tokens: the API's input's, or none (view-only: every token is
        refused) for an API given none."""
        if self.input.operators is None:
            return Operators.view_only()
        return self.input.operators

    def subscribers(self) -> int:
        count = self.input.subscribers
        return int(count()) if count is not None else 0

    def counted(self, command: str, level: Any, command_id: str) -> ContextManager[Counted]:
        """Count and trace one swarm-changing command (atom_commands_total, ``command.done``);
        put it around the Brise-Circuit, so that refused and blocked commands count too. The
        trace names the operator by pseudonym and role, never otherwise."""
        metrics = self.input.metrics
        if metrics is None:
            return nullcontext(Counted())
        by = attribution()
        return metrics.counted(command, level, command_id, **by)

    async def command_done(self, record: tuple[str, dict[str, Any]]) -> None:
        """A swarm-changing command was carried out: forget cached views of the swarm, and keep
        the command in the store (swarm facts only, nobody's data).

        Best effort: the command is done whatever the store says, so a store outage must not turn
        it into a 503 (a client would retry it). The engine's own event log records it as well,
        retrying through the outage; the store keeps one record per command id."""
        # The sphere actors apply a command within a tick: views made before then are stale.
        self.settled_at = trio.current_time() + 1.0 / self.settings.tick_hz
        kind, payload = record
        by = attribution()
        try:
            await self.store.record_event(EventRecord(self.clock.now(), kind, payload, **by))
        except BackendUnavailable as exc:
            log.warning("command %s not recorded by the API: %s", payload.get("command_id"), exc)

    def agents_json(self, sphere: str | None, status: str | None) -> bytes:
        """The agent list as JSON, made at most once per AGENTS_MAX_AGE_S and filter, and again
        after any command of this API: at 200 requests/s most requests would otherwise rebuild
        the same 57 kB. Positions over REST are a snapshot; the WebSocket is the live view."""
        now = trio.current_time()
        built_at, bodies = self._agents_cache
        if now - built_at >= AGENTS_MAX_AGE_S or built_at <= self.settled_at:
            bodies = {}
            self._agents_cache = (now, bodies)
        body = bodies.get((sphere, status))
        if body is None:
            agents = self.control.agents(sphere=sphere, status=status)
            body = bodies[(sphere, status)] = json.dumps(agents, separators=(",", ":")).encode()
        return body


def api() -> Api:
    return current_app.extensions["atom"]


def idempotent(func: F) -> F:
    """``Idempotency-Key`` on this (O) POST or PUT route (``api/idempotency.py``), its records
    in the API's coordinator; below ``json_body`` and the caller's check."""
    document_errors(400, 409)(func)
    return idempotency.idempotent(lambda: api().keys)(func)


def no_content() -> Any:
    """A 204: no body, no Content-Type. (The app's own response class: quart's plain one reads
    an empty body through asyncio.)"""
    response = current_app.response_class(b"", status=204)
    del response.headers["Content-Type"]
    return response


# -- who is calling: viewers and operators (CONTRACT §2.3) ---------------------------------------

def requires_session(func: F) -> F:
    """(S) in CONTRACT §2: the route runs only for a viewer with a live Sceau session (in
    ``g.session``) or a caller with an operator's token that verifies (in ``g.operator``, with
    ``g.session`` None). A bearer token, when sent, is what is checked."""
    security_scheme([{SCEAU_SCHEME: []}, {BEARER_SCHEME: []}])(func)
    document_errors(401)(func)

    @wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        token = bearer_token()
        if token is not None:
            g.operator, g.session = await api().operators.identify(token), None
        else:
            g.session = await api().sessions.verify(request.headers.get(SESSION_HEADER))
        return await func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def requires_role(role: str) -> Callable[[F], F]:
    """(O) in CONTRACT §2: the route runs only for a bearer of an operator's token that verifies
    and carries ``role`` (in ``g.operator``); a Sceau session is not enough. Checked before the
    body is read: a stranger learns nothing from a 422."""

    def decorator(func: F) -> F:
        security_scheme([{BEARER_SCHEME: []}])(func)
        document_errors(401, 403, 503)(func)

        @wraps(func)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            token = bearer_token()
            if token is None:
                raise OperatorTokenRequired()
            caller = await api().operators.identify(token)
            if not caller.has(role):
                raise RoleRequired(role)
            g.operator, g.role = caller, role
            return await func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorator


def bearer_token() -> str | None:
    """The token of ``Authorization: Bearer <token>``, or None when the request has no bearer
    credential (no header, or another scheme)."""
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    token = token.strip()
    if not token:
        raise OperatorTokenInvalid("the Authorization header holds no token")
    return token


def caller() -> Operator | None:
    """The operator this request was verified for, if any."""
    return getattr(g, "operator", None)


def attribution() -> dict[str, str | None]:
    """What the audit keeps of who made this request: the role that allowed it and the
    operator's pseudonym (CONTRACT §2.4); both None for a viewer or the server itself."""
    operator = caller()
    return {"role": getattr(g, "role", None) if operator is not None else None,
            "operator": operator.pseudonym if operator is not None else None}


# -- bodies and queries -----------------------------------------------------------------------------

def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def invalid(exc: pydantic.ValidationError, *, root: str = "body") -> RequestInvalid:
    """A RequestInvalid naming each bad field of a pydantic error."""
    fields: dict[str, str] = {}
    for err in exc.errors(include_url=False):
        name = ".".join(str(part) for part in err["loc"]) or root
        fields.setdefault(name, err["msg"] if name != root else "must be a JSON object")
    return RequestInvalid(fields)


def json_body(model: type[pydantic.BaseModel]) -> Callable[[F], F]:
    """Parse the body as JSON (whatever its Content-Type: curl -d sends a form type) into
    ``model``, passed as ``body=``. Not JSON → 400; wrong fields → 422 naming them."""

    def decorator(func: F) -> F:
        document_request(model)(func)
        document_errors(400, 422)(func)

        @wraps(func)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            raw = await request.get_data(as_text=False)
            try:
                data = json.loads(raw, parse_constant=_reject_constant) if raw.strip() else None
            except (ValueError, RecursionError) as exc:
                raise BodyNotJSON(str(exc)[:200]) from None
            try:
                body = model.model_validate(data)
            except pydantic.ValidationError as exc:
                raise invalid(exc) from None
            return await func(*args, body=body, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorator


def query(model: type[pydantic.BaseModel]) -> Callable[[F], F]:
    """Parse the query string into ``model`` (first value of each name), passed as ``query=``."""

    def decorator(func: F) -> F:
        document_querystring(model)(func)
        document_errors(422)(func)

        @wraps(func)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                parsed = model.model_validate({k: request.args[k] for k in request.args})
            except pydantic.ValidationError as exc:
                raise invalid(exc, root="query") from None
            return await func(*args, query=parsed, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorator


_AGENT_ID = re.compile(r"[0-9]{1,9}")


def agent_id(text: str) -> int:
    """An agent id from a path segment; anything but a plain decimal is an unknown agent (404)."""
    if not _AGENT_ID.fullmatch(text):
        with path_segment():
            raise UnknownAgent(text[:40], api().settings.essaim_size)
    return int(text)


@contextmanager
def path_segment() -> Iterator[None]:
    """An unknown agent or sphere named in the path is a 404, not a 422."""
    try:
        yield
    except (UnknownAgent, UnknownSphere) as exc:
        exc.status = 404
        raise


# -- documentation ----------------------------------------------------------------------------------

def document_errors(*statuses: int) -> Callable[[F], F]:
    """Add the JSON error bodies of ``statuses`` to a route's documentation."""

    def decorator(func: F) -> F:
        for status in statuses:
            document_response(ValidationErrorBody if status == 422 else ErrorBody, status)(func)
        return func

    return decorator
