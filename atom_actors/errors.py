"""Every error atom_actors raises on purpose, in one place.

The tree::

    AtomError                    base; ``code`` is the JSON error code, ``status`` the HTTP status
    ├── ConfigError              a setting has a bad value (start-up stops with one line)
    ├── CommandError             a swarm command was refused for its arguments (422)
    │   ├── UnknownLevel
    │   ├── UnknownSphere        (404 where the sphere is a path segment)
    │   ├── UnknownAgent         (404 where the agent is a path segment)
    │   └── FrequencyOutOfRange
    ├── SafeguardOpen            the Brise-Circuit is open (423 + Retry-After)
    ├── SessionError
    │   ├── SceauTooShort        the touch was shorter than SCEAU_DURATION (400)
    │   ├── SessionRequired      no X-Sceau-Session (401)
    │   └── SessionInvalid       unknown, expired, revoked or tampered token (401)
    ├── OperatorError            an (O) endpoint's caller is not an operator with the right (§2.3)
    │   ├── OperatorTokenRequired    no bearer token (401 + WWW-Authenticate: Bearer)
    │   ├── OperatorTokenInvalid     a token that does not verify (401 + WWW-Authenticate)
    │   ├── RoleRequired             a good token without the role (403)
    │   └── MfaRequired              a reset below SAFEGUARD_RESET_AAL (403)
    ├── RateLimited              too many session creations from one address (429 + Retry-After)
    ├── RequestError             a request the API cannot read
    │   ├── BodyNotJSON          the body is not JSON (400)
    │   ├── RequestInvalid       a body or query field has a wrong type or value (422 + fields)
    │   ├── OriginRefused        a browser Origin outside CORS_ORIGINS (403)
    │   ├── IdempotencyKeyInvalid   an Idempotency-Key that is not 1-128 printable characters (400)
    │   ├── IdempotencyKeyReused    a key used again for another request (409)
    │   └── IdempotencyKeyInUse     a key whose first request is still running (409 + Retry-After)
    ├── HostNotAllowed           a Host header not on ALLOWED_HOSTS, REST or WebSocket (400)
    ├── BackendUnavailable       Redis or PostgreSQL does not answer (503)
    │   └── CommandUnconfirmed   a command's write was not confirmed (REDIS_MIN_ACKS): outcome unknown
    ├── StreamRefused            a WebSocket handshake on WS_PORT was refused with an HTTP status
    │   ├── StreamNotFound       another path than /ws/swarm (404)
    │   ├── BadStreamParameter   a bad ``encoding`` or ``fps`` (400)
    │   ├── OriginForbidden      a browser ``Origin`` that is not allowed (403)
    │   ├── TooManySubscribers   WS_MAX_CONNECTIONS subscribers are open (503)
    │   │   └── SubscriberShareTaken  one session's or one address's share is open (503)
    │   └── TooManyHandshakes    handshakes pending beyond the bound, or from one address (503)
    ├── WatchUnreachable         ``atom watch`` cannot reach the API or the stream, or is refused
    ├── MalformedFrame           a binary message of L'Essaim that cannot be decoded (also a ValueError)
    └── SupervisorEscalation     a supervisor's children crashed more than its intensity allows

Error messages say who and what (setting, sphere, agent, child), never anything that identifies a
person: they may reach logs and clients.

Trio's nurseries wrap what their tasks raise in exception groups; :func:`leaves`, :func:`find` and
:func:`sole` are the one way this project looks inside them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TypeVar

E = TypeVar("E", bound=BaseException)


def leaves(exc: BaseException) -> Iterator[BaseException]:
    """The exceptions ``exc`` carries, groups opened, depth first and in order (``exc`` itself
    when it is not a group)."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from leaves(inner)
    else:
        yield exc


def find(exc: BaseException, kind: type[E]) -> E | None:
    """The first exception of ``kind`` among the :func:`leaves` of ``exc``, or None."""
    return next((leaf for leaf in leaves(exc) if isinstance(leaf, kind)), None)


def sole(exc: BaseException) -> BaseException:
    """What a chain of one-member groups wraps (``exc`` itself when it is not such a group)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


class AtomError(Exception):
    """Base of the project's errors. ``code`` and ``status`` drive the JSON error of the API."""

    code = "internal_error"
    status = 500

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class ConfigError(AtomError):
    """Raised when a setting (environment or ``.env``) has a bad value; names the setting."""

    code = "config_error"

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"{setting}: {problem}")
        self.setting = setting
        self.problem = problem


class CommandError(AtomError):
    """Raised when a swarm command's arguments are wrong; ``field`` names the bad argument."""

    code = "invalid_command"
    status = 422
    field = ""


class UnknownLevel(CommandError):
    """Raised when a dispersal level is not partial, sectoral or total."""

    code = "unknown_level"
    field = "level"

    def __init__(self, level: object) -> None:
        super().__init__(f"unknown dispersal level {level!r}: expected partial, sectoral or total")
        self.level = level


class UnknownSphere(CommandError):
    """Raised when a sphere name is not in the catalog."""

    code = "sphere_not_found"
    field = "sphere"

    def __init__(self, sphere: object) -> None:
        super().__init__(f"unknown sphere {sphere!r}")
        self.sphere = sphere


class UnknownAgent(CommandError):
    """Raised when an agent id is outside 0..ESSAIM_SIZE-1."""

    code = "agent_not_found"
    field = "agent_id"

    def __init__(self, agent_id: object, size: int) -> None:
        super().__init__(f"unknown agent {agent_id!r}: ids run 0..{size - 1}")
        self.agent_id = agent_id


class FrequencyOutOfRange(CommandError):
    """Raised when a retune asks for a frequency outside [432, FREQUENCY]."""

    code = "frequency_out_of_range"
    field = "frequency"

    def __init__(self, hz: object, low: float, high: float) -> None:
        super().__init__(f"frequency {hz!r} Hz is outside [{low:g}, {high:g}]")
        self.hz = hz


class SafeguardOpen(AtomError):
    """Raised when a swarm-changing command arrives while the Brise-Circuit is open."""

    code = "brise_circuit_open"
    status = 423

    def __init__(self, reason: str, retry_after_s: float) -> None:
        super().__init__(f"the Brise-Circuit is open ({reason}); retry in {retry_after_s:.0f} s")
        self.reason = reason
        self.retry_after_s = retry_after_s


class SessionError(AtomError):
    """Base of the Sceau session errors."""

    status = 401


class SceauTooShort(SessionError):
    """Raised when a Sceau touch lasted less than SCEAU_DURATION."""

    code = "sceau_too_short"
    status = 400

    def __init__(self, duration_ms: int, required_ms: int) -> None:
        super().__init__(f"the touch lasted {duration_ms} ms; the Sceau needs {required_ms} ms")


class SessionRequired(SessionError):
    """Raised when a request that needs a session carries none."""

    code = "sceau_session_required"

    def __init__(self) -> None:
        super().__init__("this endpoint needs a Sceau session (X-Sceau-Session)")


class SessionInvalid(SessionError):
    """Raised when a token is unknown, expired, revoked or does not verify."""

    code = "sceau_session_invalid"

    def __init__(self, why: str = "unknown, expired or revoked") -> None:
        super().__init__(f"the Sceau session is invalid: {why}")


class OperatorError(AtomError):
    """Base of the refusals of an operator's request (CONTRACT §2.3). Their details say what is
    wrong with the token, never what it holds: no claim of it reaches an answer or a log."""

    status = 401


class OperatorTokenRequired(OperatorError):
    """Raised when an (O) endpoint is called without ``Authorization: Bearer <token>``."""

    code = "operator_token_required"

    def __init__(self) -> None:
        super().__init__("this endpoint is for operators: send Authorization: Bearer <access token>")


class OperatorTokenInvalid(OperatorError):
    """Raised when a bearer token does not verify: signature, key, algorithm, time, issuer or
    audience; ``why`` says which, in words of our own."""

    code = "operator_token_invalid"

    def __init__(self, why: str) -> None:
        super().__init__(f"the operator token is not accepted: {why}")
        self.why = why


class RoleRequired(OperatorError):
    """Raised when a verified token does not carry the role an endpoint needs."""

    code = "role_required"
    status = 403

    def __init__(self, role: str) -> None:
        super().__init__(f"this needs the role {role!r}, which the token does not carry")
        self.role = role


class MfaRequired(OperatorError):
    """Raised when a reset of the Brise-Circuit needs a token from a multi-factor sign-in
    (SAFEGUARD_RESET_AAL=aal2) and the token's ``aal`` is below it."""

    code = "mfa_required"
    status = 403

    def __init__(self, needed: str) -> None:
        super().__init__(f"resetting the Brise-Circuit needs a multi-factor sign-in ({needed})")
        self.needed = needed


class RateLimited(AtomError):
    """Raised when one address opens sessions faster than the token bucket allows."""

    code = "rate_limited"
    status = 429

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"too many sessions opened; retry in {retry_after_s:.0f} s")
        self.retry_after_s = retry_after_s


class RequestError(AtomError):
    """Base of the errors about a request's form rather than about the swarm."""

    code = "bad_request"
    status = 400


class BodyNotJSON(RequestError):
    """Raised when a request body that must be a JSON document is not one."""

    code = "invalid_json"

    def __init__(self, why: str) -> None:
        super().__init__(f"the body is not valid JSON: {why}")


class RequestInvalid(RequestError):
    """Raised when body or query fields have a wrong type or value; ``fields`` maps each bad field
    (dotted path, ``body`` for the whole document) to what is wrong with it."""

    code = "validation_error"
    status = 422

    def __init__(self, fields: dict[str, str]) -> None:
        super().__init__("; ".join(f"{name}: {problem}" for name, problem in fields.items()))
        self.fields = fields


class OriginRefused(RequestError):
    """Raised when a browser request comes from an Origin that is neither in CORS_ORIGINS nor the
    API's own."""

    code = "origin_not_allowed"
    status = 403

    def __init__(self, origin: str) -> None:
        super().__init__(f"the origin {origin[:200]!r} is not allowed (CORS_ORIGINS)")
        self.origin = origin


class IdempotencyKeyInvalid(RequestError):
    """Raised when an ``Idempotency-Key`` header is empty, longer than 128 characters, or holds
    anything but printable ASCII."""

    code = "invalid_idempotency_key"

    def __init__(self) -> None:
        super().__init__("Idempotency-Key must be 1 to 128 printable ASCII characters")


class IdempotencyKeyReused(RequestError):
    """Raised when an ``Idempotency-Key`` comes back with another method, path or body than the
    request it was first used for (within its 10 minutes). A 409: the request itself is valid
    (a 422 names bad fields), it conflicts with what the key already stands for."""

    code = "idempotency_key_reused"
    status = 409

    def __init__(self) -> None:
        super().__init__("this Idempotency-Key was used for another request; use a new key")


class IdempotencyKeyInUse(RequestError):
    """Raised when a request comes with the ``Idempotency-Key`` of one still being carried out."""

    code = "idempotency_key_in_use"
    status = 409
    retry_after_s = 1.0

    def __init__(self) -> None:
        super().__init__("a request with this Idempotency-Key is still being carried out; "
                         "retry in a moment to get its answer")


class HostNotAllowed(AtomError):
    """Raised when a request's ``Host`` (REST or WebSocket) is not on ALLOWED_HOSTS: a page on
    another name, re-pointed at this server by DNS rebinding, gets no answer from it."""

    code = "host_not_allowed"
    status = 400

    def __init__(self, host: str) -> None:
        # The answer does not repeat the Host: nothing in it is built from that header.
        super().__init__("this server does not answer for that host (ALLOWED_HOSTS)")
        self.host = host


_PUBLIC_BACKEND_NAMES = {"postgresql": "the database", "redis": "redis",
                         "issuer": "the operators' identity provider"}


class BackendUnavailable(AtomError):
    """Raised when a configured backend (Redis, PostgreSQL) does not answer in time."""

    code = "backend_unavailable"
    status = 503

    def __init__(self, backend: str, why: str) -> None:
        # The answer says what; where and why (an address, a driver's message) only go to the
        # (scrubbed) log, through str(exc).
        super().__init__(f"{_PUBLIC_BACKEND_NAMES.get(backend, backend)} is unavailable")
        self.backend = backend
        self.reason = why
        self.args = (f"{self.detail}: {why}",)


class CommandUnconfirmed(BackendUnavailable):
    """Raised when a command's entry in the command stream could not be confirmed: Redis did not
    answer the write, or fewer than REDIS_MIN_ACKS replicas acknowledged it in time. It may have
    been written (and will then be applied), or not: the client may retry it with the same
    ``Idempotency-Key``, which applies it at most once."""

    def __init__(self, why: str) -> None:
        super().__init__("redis", why)
        self.detail = ("the command's write could not be confirmed, so its outcome is unknown; "
                       "it may be retried with the same Idempotency-Key, which applies it at most once")
        self.args = (f"{self.detail}: {why}",)


class StreamRefused(AtomError):
    """Base of the refusals of a WebSocket handshake; the subscriber gets ``status`` and the JSON
    error body before any WebSocket traffic. (A missing or invalid session is refused with the
    SessionError of the API, 401.)"""

    code = "stream_refused"
    status = 400


class StreamNotFound(StreamRefused):
    """Raised when a WebSocket handshake asks for another path than the stream's."""

    code = "not_found"
    status = 404

    def __init__(self, path: str, expected: str) -> None:
        super().__init__(f"no WebSocket stream at {path[:100]!r}; the swarm is at {expected}")
        self.path = path


class BadStreamParameter(StreamRefused):
    """Raised when a query parameter of the stream (``encoding``, ``fps``) has a bad value."""

    code = "bad_parameter"
    status = 400

    def __init__(self, parameter: str, problem: str) -> None:
        super().__init__(f"{parameter}: {problem}")
        self.parameter = parameter


class OriginForbidden(StreamRefused):
    """Raised when a browser's ``Origin`` is neither in CORS_ORIGINS nor the API's own origin."""

    code = "origin_forbidden"
    status = 403

    def __init__(self, origin: str) -> None:
        super().__init__(f"origin {origin[:200]!r} may not subscribe to this stream")
        self.origin = origin


class TooManySubscribers(StreamRefused):
    """Raised when WS_MAX_CONNECTIONS subscribers are already open in this process."""

    code = "too_many_subscribers"
    status = 503

    def __init__(self, limit: int) -> None:
        super().__init__(f"this server already streams to its {limit} subscribers; retry later")
        self.limit = limit


class SubscriberShareTaken(TooManySubscribers):
    """Raised when the subscribers of one Sceau session (WS_MAX_PER_SESSION) or of one client
    address (WS_MAX_PER_ADDRESS) are already open: one client cannot take every slot."""

    code = "too_many_subscribers"
    status = 503

    def __init__(self, whose: str, limit: int) -> None:
        StreamRefused.__init__(self, f"{whose} already streams to its {limit} subscribers; close "
                                     "one or retry later")
        self.whose = whose
        self.limit = limit


class TooManyHandshakes(StreamRefused):
    """Raised when more handshakes are pending than the server's bound, or than one address may
    hold: answered before the handshake is read."""

    code = "too_many_handshakes"
    status = 503

    def __init__(self) -> None:
        super().__init__("too many connections are opening at once; retry in a moment")


class WatchUnreachable(AtomError):
    """Raised by ``atom watch`` when the API or the WebSocket does not answer, or refuses it;
    ``detail`` says which URL and why (it ends up as the probe's one line)."""

    code = "watch_unreachable"
    status = 503


class MalformedFrame(AtomError, ValueError):
    """Raised by the decoders of :mod:`atom_actors.protocol` on a message they cannot decode: too
    short for its header, an unknown version or encoding, a length that disagrees with its agent
    count, a delta frame with w > 18 or with no keyframe before it; ``detail`` says which."""

    code = "malformed_frame"
    status = 400


class SupervisorEscalation(AtomError):
    """Raised by a supervisor whose children restarted more than ``intensity`` times in ``period``.

    The supervisor has stopped all its children before raising; ``reason`` is the last crash.
    """

    code = "supervisor_escalation"

    def __init__(self, supervisor: str, child: str, restarts: int, period: float,
                 reason: BaseException) -> None:
        super().__init__(
            f"supervisor {supervisor!r} gave up: child {child!r} crashed "
            f"{restarts} times within {period:g} s (last: {type(reason).__name__}: {reason})"
        )
        self.supervisor = supervisor
        self.child = child
        self.reason = reason
