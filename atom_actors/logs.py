"""Logging: nothing that identifies a person under ZERO_LOG, structured actor traces without it.

:func:`configure` is called once, by the CLI, before anything starts. Every line that leaves the
process — ours through structlog, and every library's through the stdlib ``logging`` tree
(Hypercorn, Quart, trio-websocket, asyncpg, redis) — goes through ONE handler on stderr, whose
formatter renders a JSON line after :func:`scrub` has run over it.

ZERO_LOG=true (the default)
    Only warnings and errors are written (start and stop are the CLI's own ``atom:`` lines):
    crashes, escalations, backends that fail. Hypercorn's access log is off, always. Every string
    of every line is scrubbed of IPv4/IPv6 addresses, Sceau tokens (``v1.<b64>.<b64>``), 64-hex
    hashes (a token's hash is its session id) and user agents; keys that name such data
    (``client``, ``user_agent``, ``token``, ...) have their values redacted whatever they hold.
    The actors' trace calls are made on a structlog *filtering* bound logger whose ``debug`` and
    ``info`` are no-op methods, so they cost a Python call and nothing more.

Whatever the setting, the handler writes at most one line a second per failure class
(:class:`OncePerSecond`): no client can fill the disk by making the server fail.

ZERO_LOG=false
    JSON lines for developers tracing actors, filtered by LOG_LEVEL. Every line has ``time``,
    ``level``, ``actor`` and ``event``; lines about a command carry its ``command_id``. Events:
    ``actor.start``, ``actor.stop``, ``actor.crash`` (with the exception), ``actor.restart``
    (with ``restart``), ``actor.escalate``; ``command.received`` and ``command.applied`` with
    their ``size``; ``agent.status``, ``agent.frequency``; once a second ``compositor.stats`` and
    ``broadcaster.stats`` (:func:`report_stats`). Scrubbing still runs: tokens are never logged.

Parts get their logger with :func:`logger` (``logger("compositor")``) when they start, after
:func:`configure`; until then the trace is at WARNING, as under ZERO_LOG.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import re
import sys
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

import structlog
import trio
from structlog.stdlib import ProcessorFormatter

from .supervisor import Report, is_cancellation

if TYPE_CHECKING:
    from .config import Settings

TRACE_LOGGER = "atom_actors.trace"
STATS_INTERVAL_S = 1.0

# Library loggers, and the actor their lines are attributed to.
LIBRARY_ACTORS = {
    "hypercorn": "api",
    "quart": "api",
    "atom_actors.api": "api",
    "trio-websocket": "broadcaster",
    "atom_actors.broadcaster": "broadcaster",
    "asyncpg": "store",
    "atom_actors.store": "store",
    "redis": "bus",
    "atom_actors.bus": "bus",
    "trio_asyncio": "bus",
}
# Hypercorn writes one access line per request: client address, request line, user agent.
ACCESS_LOGGERS = ("hypercorn.access",)

# -- scrubbing ------------------------------------------------------------------------------------

REDACTED = "<redacted>"
# Keys whose values are personal whatever they look like (compared lower-case, '-' as '_').
SENSITIVE_KEYS = frozenset({
    "client", "client_addr", "client_address", "remote", "remote_addr", "remote_address", "peer",
    "peername", "addr", "address", "ip", "host_ip", "forwarded", "x_forwarded_for", "x_real_ip",
    "user_agent", "ua", "headers", "cookie", "cookies", "authorization", "token", "session",
    "session_id", "token_hash", "x_sceau_session", "query_string",
})

_TOKEN = re.compile(r"v1\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}")
_HEX64 = re.compile(r"(?<![0-9A-Fa-f])[0-9A-Fa-f]{64}(?![0-9A-Fa-f])")
# Candidates only: a run of hex digits, colons and dots with at least two colons, then checked
# by ipaddress, so that times ("12:34:56") and other colon runs are left alone.
_IPV6_CANDIDATE = re.compile(r"(?<![\w:.])[0-9A-Fa-f.]*:[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*")
# Any run of four or more dot-separated numbers, address or not, taken whole: an address inside a
# longer run ("v1.2.10.0.0.1", "9910.0.0.1") is scrubbed with it (issue 24: a look-behind for
# "digit + dot" let those through). Over-scrubbing a version number costs nothing.
_IPV4 = re.compile(r"(?<!\d)\d+(?:\.\d+){3,}")
# A User-Agent given by name ("User-Agent: ...", "user_agent=...", a headers list's
# (b'user-agent', b'...')) to the end of its quotes or line; the browsers' "Mozilla/5.0 (...)",
# and product/version tokens such as "curl/8.5.0" or "python-httpx/0.28.1 (comment)". Actor names
# ("agent/217", "sphere/transport") have no dotted version and stay.
# A quoted value may hold escaped quotes (a repr of "it's"), is quoted only if its closing quote
# ends it (else the line is the value: "User-Agent: ''000000"), and only a lower-case b before a
# quote is a bytes prefix (not the first letter of "Bob's agent": issue 24, found by the
# property tests).
_UA_NAMED = re.compile(r"""(?i)(user[-_ ]?agent["']?\s*[:=,]\s*(?-i:b(?=["']))?)"""
                       r"""((?:"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')(?=[\s,;)\]}]|$)"""
                       r"""|[^\n]*)""")
_UA_PRODUCT = re.compile(r"(?<![\w/])(?!HTTP/)[A-Za-z][\w.+-]*/\d+(?:\.\w+)+(?:\s*\([^)\n]*\))?")


def _ipv6(match: re.Match[str]) -> str:
    text = match.group(0)
    dotless = text.strip(".")
    # The candidate as it is ("0:0:0:1::" ends in its own "::"), without stray colons around it,
    # or without a ":port" after it ("1:2:3:4:5:6:7:8:8000").
    for core in (dotless, dotless.strip(":"), dotless.rstrip(":"), dotless.lstrip(":"),
                 dotless.rsplit(":", 1)[0]):
        try:
            ipaddress.IPv6Address(core)
        except ValueError:
            continue
        return text.replace(core, "<ip>")
    return text


def scrub_text(text: str) -> str:
    """``text`` with addresses, tokens, hashes and user agents replaced by placeholders."""
    if not text:
        return text
    text = _TOKEN.sub("<token>", text)
    text = _HEX64.sub("<hash>", text)
    text = _UA_NAMED.sub(lambda m: m.group(1) + "<ua>", text)
    text = _UA_PRODUCT.sub("<ua>", text)
    if ":" in text:
        text = _IPV6_CANDIDATE.sub(_ipv6, text)
    return _IPV4.sub("<ip>", text)


def _scrub_value(value: Any) -> Any:
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, dict):
        return {k: REDACTED if _sensitive(k) else _scrub_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_scrub_value(v) for v in value)
    if isinstance(value, bytes | bytearray):
        return scrub_text(value.decode("utf-8", "replace"))
    if isinstance(value, int | float | bool) or value is None:
        return value
    return scrub_text(repr(value))


def _sensitive(key: object) -> bool:
    return isinstance(key, str) and key.lower().replace("-", "_") in SENSITIVE_KEYS


def scrub(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: every value scrubbed (:func:`scrub_text`), sensitive keys redacted,
    text values stripped of control characters and cut to a bounded length (a client may have
    chosen them: a path, a method, an exception's message)."""
    return {k: (REDACTED if _sensitive(k) else _bounded(_scrub_value(v), k))
            for k, v in event_dict.items() if not k.startswith("_")}


MAX_FIELD_CHARS = 1000          # a logged text value longer than this is cut
MAX_EXCEPTION_CHARS = 8000      # a traceback, likewise
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")   # all but tab and newline


def _bounded(value: Any, key: str) -> Any:
    if not isinstance(value, str):
        return value
    limit = MAX_EXCEPTION_CHARS if key == "exception" else MAX_FIELD_CHARS
    value = _CONTROL.sub("", value)
    return value if len(value) <= limit else value[:limit] + f"... ({len(value) - limit} more)"


def client_text(text: object, limit: int = 80) -> str:
    """Text a client chose (a method, a path), fit for a log line: on one line, without control
    characters, at most ``limit`` characters."""
    text = _CONTROL.sub("", str(text)).replace("\n", " ").replace("\t", " ")
    return text if len(text) <= limit else text[:limit] + "..."


# -- log volume -----------------------------------------------------------------------------------

class OncePerSecond(logging.Filter):
    """At most one line a second per failure class (issue 24: four hostile connections added
    0.9 MB/s to the log; ~75 GB a day). A failure class is the logger, the level, the message's
    template (its ``%`` form, or a structlog line's event) and the exception's type, so the text a
    client chose never makes a class of its own. Lines below WARNING (the actor trace) pass.

    The first line of a class in a second is written; the others are counted and the next line
    written for it says how many were left out (``... [N alike not written]``). At most
    MAX_CLASSES are remembered (the least recent forgotten). ``clock``: seconds, monotonic.
    """

    INTERVAL_S = 1.0
    MAX_CLASSES = 1024

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.clock = clock
        self.dropped = 0     # lines left out, ever
        self._classes: OrderedDict[tuple[Any, ...], tuple[float, int]] = OrderedDict()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = _failure_class(record)
        now = self.clock()
        written_at, left_out = self._classes.pop(key, (-math.inf, 0))
        if now - written_at < self.INTERVAL_S:
            self._remember(key, (written_at, left_out + 1))
            self.dropped += 1
            return False
        self._remember(key, (now, 0))
        if left_out:
            if isinstance(record.msg, dict):
                record.msg = {**record.msg, "not_written": left_out}
            else:
                record.msg = f"{record.msg} [{left_out} alike not written]"
        return True

    def _remember(self, key: tuple[Any, ...], value: tuple[float, int]) -> None:
        self._classes[key] = value
        while len(self._classes) > self.MAX_CLASSES:
            self._classes.popitem(last=False)


def _failure_class(record: logging.LogRecord) -> tuple[Any, ...]:
    template = record.msg.get("event") if isinstance(record.msg, dict) else record.msg
    exc = record.exc_info[0] if record.exc_info else None
    return (record.name, record.levelno, str(template)[:200], exc)


# -- the processors -------------------------------------------------------------------------------

def _actor_of_record(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """A library's line gets the actor its logger belongs to (and keeps the logger's name)."""
    record = event_dict.get("_record")
    if event_dict.get("_from_structlog") or record is None:
        return event_dict
    name = record.name
    event_dict.setdefault("logger", name)
    if "actor" not in event_dict:
        event_dict["actor"] = next((actor for prefix, actor in LIBRARY_ACTORS.items()
                                    if name == prefix or name.startswith(prefix + ".")), name)
    return event_dict


def _ordered(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """time, level, actor, event first: the four keys every line has, where a reader looks."""
    head = {k: event_dict.pop(k, None) for k in ("time", "level", "actor", "event")}
    head.update(event_dict)
    return head


_TIMESTAMP = structlog.processors.TimeStamper(fmt="iso", utc=True, key="time")


def _configure_structlog(level: int) -> None:
    _State.structlog_set = True
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            _TIMESTAMP,
            ProcessorFormatter.wrap_for_formatter,
        ],
        # Below `level` the logger's methods are no-ops: the trace costs a call, nothing more.
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.stdlib.LoggerFactory(),
        # Not cached: tests configure several times in one process, and parts bind their
        # logger once when they start anyway.
        cache_logger_on_first_use=False,
    )


def formatter() -> ProcessorFormatter:
    """The one formatter: JSON lines, scrubbed, for our lines and every library's alike."""
    return ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_log_level, _TIMESTAMP],
        processors=[
            _actor_of_record,
            structlog.processors.format_exc_info,
            scrub,
            _ordered,
            structlog.processors.JSONRenderer(default=repr),
        ],
    )


class _State:
    handler: logging.Handler | None = None
    excepthook: Callable[..., Any] | None = None
    structlog_set: bool = False   # structlog has been configured (by us), at some level


def level_of(settings: Settings) -> int:
    """The level in force: LOG_LEVEL, but never below WARNING under ZERO_LOG."""
    level = logging.getLevelName(settings.log_level)
    return max(level, logging.WARNING) if settings.zero_log else level


def configure(settings: Settings, *, stream: Any = None) -> None:
    """Set up structlog and the stdlib logging tree for ``settings`` (see the module docstring).

    ``stream`` defaults to ``sys.stderr``. Calling it again replaces the previous set-up.
    """
    level = level_of(settings)
    _configure_structlog(level)
    root = logging.getLogger()
    if _State.handler is not None:
        root.removeHandler(_State.handler)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter())
    handler.addFilter(OncePerSecond())
    _State.handler = handler
    root.addHandler(handler)
    root.setLevel(level)
    # Libraries speak at WARNING at the most: their INFO/DEBUG is about connections, not actors.
    for name in LIBRARY_ACTORS:
        if not name.startswith("atom_actors"):
            logging.getLogger(name).setLevel(max(level, logging.WARNING))
    for name in ACCESS_LOGGERS:
        access = logging.getLogger(name)
        access.handlers.clear()
        access.propagate = False
        access.disabled = True
    logging.getLogger(TRACE_LOGGER).setLevel(level)
    # An uncaught exception goes through the same scrubbed handler, not raw to stderr.
    if _State.excepthook is None:
        _State.excepthook = sys.excepthook
    sys.excepthook = _log_uncaught


def _log_uncaught(kind: type[BaseException], exc: BaseException, tb: Any) -> None:
    if issubclass(kind, KeyboardInterrupt):
        (_State.excepthook or sys.__excepthook__)(kind, exc, tb)
        return
    logger("atom").critical("uncaught", exc_info=(kind, exc, tb))


def reset() -> None:
    """Undo :func:`configure` (for tests): no handler of ours, the trace back at WARNING."""
    if _State.handler is not None:
        logging.getLogger().removeHandler(_State.handler)
        _State.handler = None
    if _State.excepthook is not None:
        sys.excepthook = _State.excepthook
        _State.excepthook = None
    logging.getLogger(TRACE_LOGGER).setLevel(logging.NOTSET)
    _configure_structlog(logging.WARNING)


def logger(actor: str, **context: Any) -> Any:
    """A structlog logger for ``actor`` (``"sphere/transport"``, ``"agent/217"``, ``"api"``...).

    Until :func:`configure` runs (library use, unit tests) the trace is at WARNING: quiet, and
    cheap; that set-up is made here, on first use, rather than when the module is imported.
    """
    if not _State.structlog_set:
        _configure_structlog(logging.WARNING)
    return structlog.get_logger(TRACE_LOGGER).bind(actor=actor, **context)


def tracing(level: int = logging.INFO) -> bool:
    """Whether lines at ``level`` are written at all: for work done only to be logged."""
    return logging.getLogger(TRACE_LOGGER).isEnabledFor(level)


# -- what the parts report ------------------------------------------------------------------------

def report_supervision(report: Report) -> None:
    """The supervisor's ``on_report``: every start, stop, crash, restart and escalation.

    A crash carries its exception (scrubbed like everything else); a restart its number.
    """
    log = logger(report.child, supervisor=report.supervisor)
    if report.kind == "started":
        log.info("actor.start", restarts=report.restarts)
    elif report.kind == "stopped":
        log.info("actor.stop")
    elif report.kind == "crashed":
        log.error("actor.crash", restarts=report.restarts, exc_info=_exc_info(report.reason))
    elif report.kind == "exited":
        log.warning("actor.exit", restarts=report.restarts)
    elif report.kind == "restarted":
        log.warning("actor.restart", restart=report.restarts)
    elif report.kind == "escalated":
        log.critical("actor.escalate", restarts=report.restarts, exc_info=_exc_info(report.reason))


def _exc_info(exc: BaseException | None) -> Any:
    return (type(exc), exc, exc.__traceback__) if exc is not None else False


async def traced(actor: str, run: Callable[..., Awaitable[object]], *,
                 task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
    """Run the service ``run(task_status=...)`` as ``actor``: its start, stop and crash logged.

    Cancellation is a stop (logged at INFO) and is re-raised; an exception is logged as a crash
    with its traceback and re-raised unchanged.
    """
    log = logger(actor)

    class _Status:
        def started(self, value: Any = None) -> None:
            log.info("actor.start")
            task_status.started(value)

    try:
        await run(task_status=_Status())
    except BaseException as exc:
        if is_cancellation(exc):
            log.info("actor.stop")
        else:
            log.error("actor.crash", exc_info=_exc_info(exc))
        raise
    log.info("actor.stop")


class TickFigures(Protocol):
    """What the stats task reads of the compositor (its :class:`~atom_actors.compositor.TickStats`)."""

    frames: int
    missed: int
    late_spheres: int
    lateness: deque[float]
    last_late: list[str]


class SendFigures(Protocol):
    """What the stats task reads of the broadcaster (its ``BroadcastStats``)."""

    clients: int
    frames_dropped: int
    frames_sent: int


async def report_stats(ticks_now: Callable[[], TickFigures | None], sends: SendFigures | None, *,
                       task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Once a second, the compositor's fps, tick lateness p99 and late spheres, and the
    broadcaster's clients and dropped frames, as ``compositor.stats`` / ``broadcaster.stats``.

    ``ticks_now()`` gives the running engine's figures, or None while none runs here (with
    Redis the engine comes and goes with the lease); ``sends`` is the broadcaster's, or None
    without one. Runs only when INFO is written; otherwise returns at once (nothing is measured
    for nobody). Cancellation: stops between two reports.
    """
    task_status.started()
    if not tracing(logging.INFO):
        return
    compositor_log, broadcaster_log = logger("compositor"), logger("broadcaster")
    ticks = ticks_now()
    frames, late, missed = (ticks.frames, ticks.late_spheres, ticks.missed) if ticks else (0, 0, 0)
    dropped, sent = (sends.frames_dropped, sends.frames_sent) if sends is not None else (0, 0)
    last = trio.current_time()
    while True:
        await trio.sleep(STATS_INTERVAL_S)
        now = trio.current_time()
        elapsed, last = now - last, now
        current = ticks_now()
        if current is not ticks:   # with Redis the engine comes and goes with the lease
            ticks, frames, late, missed = current, 0, 0, 0
        if ticks is not None:
            new = ticks.frames - frames
            samples = sorted(list(ticks.lateness)[-new:]) if new else [0.0]
            p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
            compositor_log.info(
                "compositor.stats", fps=round(new / elapsed, 2), frames=ticks.frames,
                lateness_p99_ms=round(p99 * 1000, 3), late_spheres=ticks.late_spheres - late,
                last_late=list(ticks.last_late) if ticks.late_spheres > late else [],
                missed=ticks.missed - missed)
            frames, late, missed = ticks.frames, ticks.late_spheres, ticks.missed
        if sends is not None:
            broadcaster_log.info("broadcaster.stats", clients=sends.clients,
                                 dropped_frames=sends.frames_dropped - dropped,
                                 frames_sent=sends.frames_sent - sent)
            dropped, sent = sends.frames_dropped, sends.frames_sent

