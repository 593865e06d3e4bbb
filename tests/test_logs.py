"""Logging: the scrubber, ZERO_LOG's silence, and the actor trace of a running engine.

The end-to-end checks (a real ``atom serve`` with every byte of its output captured) are in
``tests/test_zero_log.py``.
"""

from __future__ import annotations

import io
import json
import logging
import re
import sys
import time

import hypothesis
import hypothesis.strategies as st
import pytest
import trio

from atom_actors import app, logs
from atom_actors.bus import MemoryBus
from atom_actors.engine import Engine
from atom_actors.sessions import token_hash
from tests.atom_process import (CLIENT_HOST, FORWARDED_FOR, OPERATOR_PHONE, OPERATOR_SUBJECT,
                                UA_MARK, Seen, client_address,
                                running_atom, scenario)
from tests.conftest import make_settings
from tests.servers import sql

TOKEN = "v1.Zm9vYmFyYmF6cXV4cXV1eHF1dXhxdXV4cXV1eHF1dXg.c2lnbmF0dXJlc2lnbmE"
HASH = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
UA = "AtomProbe/9.99 (Quokka; zero-log)"
FREE_PORTS = {"api_port": 0, "ws_port": 0}


@pytest.fixture
def output():
    """Configures logging per test (``output.configure(**settings)``) into a buffer; undoes it."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, sys.excepthook,
             {name: (logging.getLogger(name).level, logging.getLogger(name).disabled,
                     logging.getLogger(name).propagate)
              for name in [*logs.LIBRARY_ACTORS, *logs.ACCESS_LOGGERS]})

    class Output:
        buffer = io.StringIO()

        def configure(self, **overrides: object) -> None:
            logs.configure(make_settings(**overrides), stream=self.buffer)

        @property
        def text(self) -> str:
            return self.buffer.getvalue()

        def lines(self) -> list[dict]:
            return [json.loads(line) for line in self.text.splitlines()]

        def events(self, event: str) -> list[dict]:
            return [line for line in self.lines() if line["event"] == event]

    yield Output()
    logs.reset()
    root.handlers[:], sys.excepthook = saved[0], saved[2]
    root.setLevel(saved[1])
    for name, (level, disabled, propagate) in saved[3].items():
        library = logging.getLogger(name)
        library.setLevel(level)
        library.disabled, library.propagate = disabled, propagate


# -- the scrubber -------------------------------------------------------------------------------

@pytest.mark.parametrize("text, secret", [
    ("client 127.0.0.1:54321 closed.", "127.0.0.1"),
    ("peer [::1]:8000", "::1"),
    ("mapped ::ffff:127.0.0.1 here", "127.0.0.1"),
    ("from 2001:db8::8a2e:370:7334 ok", "2001:db8::8a2e:370:7334"),
    ("full 2001:0db8:85a3:0000:0000:8a2e:0370:7334", "2001:0db8:85a3:0000:0000:8a2e:0370:7334"),
    ("link fe80::1%eth0", "fe80::1"),
    (f"presented {TOKEN}.", TOKEN),
    (f"session id {HASH}", HASH),
    (f"User-Agent: {UA}\n", "Quokka"),
    (f"[(b'host', b'x'), (b'user-agent', b'{UA}')]", "Quokka"),
    (f"agent {UA} said", "Quokka"),
    ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0",
     "X11"),
])
def test_scrub_removes_what_identifies_a_person(text, secret):
    assert secret not in logs.scrub_text(text)


@pytest.mark.parametrize("text", [
    "actor agent/217 of sphere/transport",
    "at 12:34:56 on 2026-11-21T11:56:45.845271Z",
    "command_id 3f2a9c0e5b7d4e1f8a6c2b9d0e4f7a1c",   # 32 hex: a command id, not a token hash
    "HTTP/1.1 400 Bad Request",
    "Foo::bar and dead:beef:cafe",
])
def test_scrub_keeps_what_a_developer_needs(text):
    assert logs.scrub_text(text) == text


# -- the scrubber's properties (issue 24, finding 9) -------------------------------------------------
# Random text around what identifies a person: none of it may come out. The text draws on digits,
# dots, colons, letters and punctuation so that the neighbours an address meets in real lines
# ("digit + dot", a version, a port) are tried.

TEXT = st.text(alphabet=st.sampled_from("0123456789.:abcxyzAF -_/=,'\"()[]\n\t"), max_size=40)
# Where an IPv6 address or a hash may stand: after anything that is not part of one (a hex digit
# or colon next to it would make a longer candidate, which is no longer that address).
SEPARATOR = st.sampled_from(" \t\n[(=,'\"@/;")
UA_CHARS = st.characters(codec="ascii", categories=("L", "N"), include_characters=" ._-;()+'\"\\")
USER_AGENT = st.one_of(
    st.text(UA_CHARS, min_size=6, max_size=40).filter(lambda t: t.strip() == t and t),
    st.builds(lambda name, major, minor, comment: f"{name}/{major}.{minor} ({comment})",
              st.from_regex(r"[A-Za-z][A-Za-z0-9-]{3,12}", fullmatch=True),
              st.integers(0, 200), st.integers(0, 99),
              st.from_regex(r"[A-Za-z0-9; ]{4,20}", fullmatch=True)))
# How a user agent appears in a line: a header, a headers list or mapping as Python prints them
# (with their quotes escaped), JSON, a keyword, a WSGI environ.
UA_CONTEXTS = (
    lambda ua: f"User-Agent: {ua}",
    lambda ua: repr([(b"host", b"x"), (b"user-agent", ua.encode())]),
    lambda ua: repr({"user-agent": ua}),
    lambda ua: repr([("User-Agent", ua)]),
    lambda ua: json.dumps({"User-Agent": ua}),
    lambda ua: f"user_agent={ua}",
    lambda ua: f"HTTP_USER_AGENT={ua!r}",
)


def ua_leaked(ua: str, out: str) -> bool:
    """Whether ``out`` still holds ``ua``, or a telling piece of it (its longest word)."""
    longest = max(re.findall(r"[A-Za-z0-9]+", ua) or [""], key=len)
    return ua in out or (len(longest) >= 6 and longest in out)


@hypothesis.given(before=TEXT, address=st.ip_addresses(v=4).map(str), after=TEXT)
def test_no_ipv4_address_survives_the_scrubber_whatever_surrounds_it(before, address, after):
    assert address not in logs.scrub_text(before + address + after)


@hypothesis.given(before=TEXT, sep=SEPARATOR, address=st.ip_addresses(v=6),
                  exploded=st.booleans(), port=st.sampled_from(["", ":8000", "]:443"]),
                  after=TEXT)
def test_no_ipv6_address_survives_the_scrubber(before, sep, address, exploded, port, after):
    text = address.exploded if exploded else str(address)
    hypothesis.assume(len(text) > 2)   # "::" alone is no one's
    out = logs.scrub_text(f"{before}{sep}{text}{port} {after}")
    assert text not in out


@hypothesis.given(before=TEXT, token=st.from_regex(r"v1\.[A-Za-z0-9_-]{22,43}\.[A-Za-z0-9_-]{22,43}",
                                                   fullmatch=True), after=TEXT,
                  sep=SEPARATOR, digest=st.from_regex(r"[0-9a-f]{64}", fullmatch=True))
def test_no_token_or_token_hash_survives_the_scrubber(before, token, after, sep, digest):
    out = logs.scrub_text(f"{before}{token}{after}{sep}{digest}{sep}")
    assert token not in out and digest not in out


@hypothesis.given(before=TEXT, ua=USER_AGENT, context=st.sampled_from(UA_CONTEXTS), after=TEXT)
# Found by this test: a repr escapes a quote inside the value, which ended the match early.
@hypothesis.example(before="", ua="it's \"Quokka\" Navigator", context=UA_CONTEXTS[2], after="")
def test_no_user_agent_survives_the_scrubber(before, ua, context, after):
    """Versioned or not ("MyBot", "Bob's agent"), quoted, escaped, in bytes or in JSON."""
    hypothesis.assume(not ua_leaked(ua, before + after))
    assert not ua_leaked(ua, logs.scrub_text(f"{before} {context(ua)}\n{after}"))


def test_scrub_processor_redacts_sensitive_keys_and_nested_values():
    event = logs.scrub(None, "info", {"event": "x", "client": "anything", "User-Agent": "Quokka",
                                      "nested": {"token": "t", "note": f"from 10.1.2.3 {TOKEN}"},
                                      "items": [HASH, 3], "_record": object()})
    assert event == {"event": "x", "client": logs.REDACTED, "User-Agent": logs.REDACTED,
                     "nested": {"token": logs.REDACTED, "note": "from <ip> <token>"},
                     "items": ["<hash>", 3]}


# -- ZERO_LOG -----------------------------------------------------------------------------------

def test_zero_log_writes_only_warnings_and_errors_scrubbed(output):
    output.configure()  # ZERO_LOG defaults to true
    log = logs.logger("api")
    log.info("command.received", command_id="abc")
    log.debug("actor.start")
    try:
        raise ConnectionResetError(f"peer 127.0.0.1:40000 sent {TOKEN} as {UA}")
    except ConnectionResetError as exc:
        log.error("backend.failed", exc_info=exc, remote_addr="127.0.0.1")
    lines = output.lines()
    assert [line["event"] for line in lines] == ["backend.failed"]
    assert lines[0]["remote_addr"] == logs.REDACTED
    assert "ConnectionResetError" in lines[0]["exception"]
    for secret in ("127.0.0.1", TOKEN, "Quokka"):
        assert secret not in output.text


def test_zero_log_silences_libraries_and_the_access_log(output):
    output.configure()
    logging.getLogger("hypercorn.access").warning('127.0.0.1:5000 - "GET / 1.1" 200 "%s"', UA)
    logging.getLogger("hypercorn.error").info("Running on http://127.0.0.1:8000")
    logging.getLogger("trio-websocket").debug("conn from ::1 %s", TOKEN)
    logging.getLogger("quart.app").error("Exception on request GET /api/v1/swarm from 10.0.0.7")
    logging.getLogger("asyncpg").warning("connection to 192.168.1.9 lost")
    lines = output.lines()
    assert [(line["actor"], line["level"]) for line in lines] == [("api", "error"),
                                                                  ("store", "warning")]
    assert lines[0]["event"] == "Exception on request GET /api/v1/swarm from <ip>"
    for secret in ("127.0.0.1", "10.0.0.7", "192.168.1.9", "Quokka", TOKEN):
        assert secret not in output.text


def test_an_uncaught_exception_is_logged_scrubbed(output):
    output.configure()
    try:
        raise RuntimeError(f"while serving 127.0.0.1 with {TOKEN}")
    except RuntimeError:
        sys.excepthook(*sys.exc_info())
    (line,) = output.lines()
    assert line["level"] == "critical" and "RuntimeError" in line["exception"]
    assert "127.0.0.1" not in output.text and TOKEN not in output.text


def test_a_disabled_trace_call_costs_next_to_nothing(output):
    """Under ZERO_LOG the actors' info() calls are structlog's no-op methods: measured against a
    line that is written, a filtered call must be at least 20 times cheaper, and under 2 µs."""
    output.configure()
    log = logs.logger("agent/217")

    def per_call(call, n: int) -> float:
        started = time.perf_counter()
        for _ in range(n):
            call()
        return (time.perf_counter() - started) / n

    disabled = per_call(lambda: log.info("agent.status", status="dispersed", command_id="c"),
                        100_000)
    written = per_call(lambda: log.warning("agent.status", status="dispersed", command_id="c"),
                       500)
    assert disabled < 2e-6
    assert disabled * 20 < written


# -- ZERO_LOG=false: the actor trace ------------------------------------------------------------

def test_log_level_filters_the_trace(output):
    output.configure(zero_log="false", log_level="WARNING")
    log = logs.logger("compositor")
    log.info("compositor.stats")
    log.warning("compositor.late")
    assert [line["event"] for line in output.lines()] == ["compositor.late"]


async def test_trace_of_commands_status_crash_and_restart(output, nursery, autojump_clock):
    output.configure(zero_log="false", log_level="INFO", dispersal_dwell_s="1")
    from atom_actors.metrics import supervision_reporter

    settings = make_settings(swarm_seed=3, dispersal_dwell_s=1)
    engine = await nursery.start(
        Engine(settings, MemoryBus(), on_report=supervision_reporter(None)).run)
    result = await engine.disperse("partial")
    command_id = result["command_id"]
    await trio.sleep(5)  # out, dwell, home again
    await engine.retune(217, 500.0)
    engine.inject_crash("transport")
    await trio.sleep(0.1)

    lines = output.lines()
    for line in lines:
        assert {"time", "level", "actor", "event"} <= line.keys(), line
    (received,) = [e for e in output.events("command.received") if e["command"] == "disperse"]
    assert received["actor"] == "engine" and received["size"] == 70
    assert received["command_id"] == command_id
    applied = [e for e in output.events("command.applied") if e["command_id"] == command_id]
    assert sum(e["size"] for e in applied) == 70
    assert all(e["actor"].startswith("sphere/") for e in applied)
    status = output.events("agent.status")
    dispersed = [e for e in status if e["status"] == "dispersed"]
    assert len(dispersed) == 70 and {e["command_id"] for e in dispersed} == {command_id}
    assert all(e["actor"].startswith("agent/") for e in status)
    assert {e["status"] for e in status} == {"dispersed", "regrouping", "active"}
    (retuned,) = output.events("agent.frequency")
    assert retuned["actor"] == "agent/217" and retuned["frequency"] == 500.0

    (crash,) = output.events("actor.crash")
    assert crash["actor"] == "sphere/transport" and crash["level"] == "error"
    assert "InjectedCrash" in crash["exception"]
    (restart,) = output.events("actor.restart")
    assert restart["actor"] == "sphere/transport" and restart["restart"] == 1
    starts = [e["actor"] for e in output.events("actor.start")]
    assert starts.count("sphere/transport") == 2 and "compositor" in starts


async def test_stats_once_a_second_and_stops_logged(output, autojump_clock):
    output.configure(zero_log="false")
    async with trio.open_nursery() as nursery:
        services = await nursery.start(app.serve, make_settings(zero_log="false", **FREE_PORTS))
        assert services.engine is not None
        await trio.sleep(3.5)
        nursery.cancel_scope.cancel()
    stats = output.events("compositor.stats")
    assert len(stats) == 3
    assert all(59 <= s["fps"] <= 61 and s["actor"] == "compositor" for s in stats)
    assert all(s["lateness_p99_ms"] >= 0 and s["late_spheres"] >= 0 for s in stats)
    stopped = {e["actor"] for e in output.events("actor.stop")}
    assert {"compositor", "sphere/transport", "sphere/personal"} <= stopped


async def test_no_stats_task_work_under_zero_log(output, autojump_clock):
    output.configure()
    async with trio.open_nursery() as nursery:
        await nursery.start(app.serve, make_settings(**FREE_PORTS))
        await trio.sleep(3)
        nursery.cancel_scope.cancel()
    assert output.text == ""


# -- end to end: a real `atom serve`, every byte of its output -----------------------------------

def forbidden(seen: Seen) -> dict[str, bytes]:
    """What identifies the person of the scenario, as it could appear in any output."""
    return {"client address": CLIENT_HOST.encode(), "token": seen.token.encode(),
            "token hash": token_hash(seen.token).encode(), "user agent": UA_MARK.encode(),
            "forwarded address": FORWARDED_FOR.encode(),
            "operator token": seen.operator_token.encode(),
            "operator subject": OPERATOR_SUBJECT.encode(),     # also in the e-mail: <sub>@…
            "operator phone": OPERATOR_PHONE.encode(),
            "operator session_id": seen.operator_session_id.encode()}


async def database_rows(url: str) -> dict[str, list[str]]:
    """Every row of every table of the database, as JSON text, by table."""
    tables = await sql(url, "SELECT table_name FROM information_schema.tables "
                            "WHERE table_schema = 'public'")
    return {t["table_name"]: [r["row"] for r in await sql(
        url, f'SELECT row_to_json(t)::text AS row FROM "{t["table_name"]}" t')] for t in tables}


async def test_zero_log_holds_through_a_whole_session(tmp_path, pg_url):
    """ZERO_LOG=true, on PostgreSQL: after Sceau, subscribers, commands, malformed requests and a
    refused handshake, the process wrote its start and stop lines and nothing else, and no output,
    error body, metric label or database row holds the client's address, token or user agent; the
    token's hash is in one place only, the session's id (CONTRACT §2.1)."""
    # "localhost": the server's own connection to PostgreSQL must not put 127.0.0.1 in the output.
    database = pg_url.replace("127.0.0.1", "localhost")
    with trio.fail_after(120):
        async with running_atom(tmp_path, DATABASE_URL=database, SECRET_KEY="s" * 40) as atom:
            assert await client_address(atom.api_url) == CLIENT_HOST   # the check below is honest
            seen = await scenario(atom.api_url, atom.ws_url)
        rows = await database_rows(pg_url)
    assert_zero_log(seen, [atom.output], rows)


def assert_zero_log(seen: Seen, outputs: list[bytes], rows: dict[str, list[str]]) -> None:
    """The scenario went as planned, and what identifies its person is nowhere."""
    assert seen.statuses["activate"] == 201 and seen.statuses["disperse"] == 202
    assert seen.refused_handshake == 401 and seen.frames.count > 240
    assert max(seen.statuses.values()) < 500, seen.statuses
    assert seen.statuses["revoked"] == 401
    assert {seen.statuses[k] for k in ("bad_level", "retune_high")} == {422}
    for output in outputs:
        lines = output.decode().splitlines()
        assert lines and all(line.startswith("atom: ") for line in lines), lines
        assert lines[-1] == "atom: stopped"
        for what, secret in forbidden(seen).items():
            assert secret not in output, what
    for what, secret in forbidden(seen).items():
        assert not any(secret in body for body in seen.error_bodies), what
        assert secret.decode() not in seen.metrics_during, what
    session_id = token_hash(seen.token)
    assert [r for r in rows["sessions"] if session_id in r], "the session was not stored"
    assert rows["events"] and rows["agents"], "the commands and the snapshot were not stored"
    for table, texts in rows.items():
        for what, secret in forbidden(seen).items():
            if table == "sessions" and what == "token hash":
                assert all(json.loads(r)["id"] == session_id for r in texts if session_id in r)
                continue
            assert not any(secret.decode() in r for r in texts), (table, what)


async def test_zero_log_holds_across_roles_over_redis(tmp_path, pg_url, redis_server):
    """The same, with an engine, an api and a ws process meeting on Redis and PostgreSQL: none of
    the three writes more than its start and stop lines, nor anything about the person."""
    env = {"DATABASE_URL": pg_url.replace("127.0.0.1", "localhost"),
           "REDIS_URL": redis_server.url.replace("127.0.0.1", "localhost")}
    with trio.fail_after(120):
        async with running_atom(tmp_path, "--role", "engine", **env) as engine, \
                running_atom(tmp_path, "--role", "ws", **env) as ws, \
                running_atom(tmp_path, "--role", "api", **env) as api:
            assert await client_address(api.api_url) == CLIENT_HOST
            seen = await scenario(api.api_url, ws.ws_url)
        rows = await database_rows(pg_url)
    assert_zero_log(seen, [engine.output, ws.output, api.output], rows)


async def test_the_actor_trace_of_the_same_session(tmp_path):
    """ZERO_LOG=false: the same scenario's lines are JSON, each with time, level, actor and event,
    and follow one command from the API through the engine and the spheres to its agents."""
    with trio.fail_after(120):
        async with running_atom(tmp_path, ZERO_LOG="false", LOG_LEVEL="INFO") as atom:
            seen = await scenario(atom.api_url, atom.ws_url)
    trace = [json.loads(line) for line in atom.output.decode().splitlines()
             if not line.startswith("atom: ")]
    for line in trace:
        assert {"time", "level", "actor", "event"} <= line.keys(), line

    def events(name: str, **match: object) -> list[dict]:
        return [e for e in trace
                if e["event"] == name and all(e.get(k) == v for k, v in match.items())]

    started = {e["actor"] for e in events("actor.start")}
    assert {"sphere/transport", "sphere/dashboard", "compositor", "broadcaster", "api"} <= started
    stopped = {e["actor"] for e in events("actor.stop")}
    assert {"sphere/transport", "compositor", "broadcaster", "api"} <= stopped

    dispersal = seen.command_ids["disperse"]
    (received,) = events("command.received", command_id=dispersal)
    assert received["actor"] == "engine" and received["size"] == 70
    assert sum(e["size"] for e in events("command.applied", command_id=dispersal)) == 70
    assert len(events("agent.status", command_id=dispersal, status="dispersed")) == 70
    (done,) = events("command.done", command_id=dispersal)
    assert done["actor"] == "api" and done["result"] == "accepted" and done["size"] == 70
    # Who asked: the role and the audit's pseudonym, nothing else of the token (forbidden below).
    assert done["role"] == "operator" and len(done["operator"]) == 16
    assert int(done["operator"], 16) >= 0
    (regroup,) = events("command.done", command_id=seen.command_ids["regroup"])
    assert regroup["result"] == "accepted" and regroup["command"] == "regroup"
    assert events("agent.frequency", actor="agent/217")
    compositor = events("compositor.stats")
    assert compositor and all(f["fps"] > 0 and "lateness_p99_ms" in f for f in compositor)
    assert any(b["clients"] == 2 for b in events("broadcaster.stats"))
    for what, secret in forbidden(seen).items():
        assert secret not in atom.output, what
