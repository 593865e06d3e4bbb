"""Streams end with their session (CONTRACT §4, close 4401): revoked or expired, on a whole
``atom serve`` in the test's nursery, with virtual time (``autojump_clock``). Across processes
over real Redis: ``test_roles``."""

from __future__ import annotations

import httpx
import trio
from trio_websocket import ConnectionClosed

from atom_actors import app

from .conftest import make_settings
from .test_broadcaster import BOUND_S, open_websocket_url


async def closed_with(ws) -> tuple[int, str | None, float]:
    """Read until the server closes; the close code, its reason and when (Trio time)."""
    try:
        while True:
            await ws.get_message()
    except ConnectionClosed as closed:
        return closed.reason.code, closed.reason.reason, trio.current_time()


async def open_session(services) -> str:
    async with httpx.AsyncClient(base_url=services.api_url) as http:
        r = await http.post("/api/v1/sceau/activate", json={"duration_ms": 2000})
        return r.json()["session"]


async def test_a_revoked_session_s_streams_close_with_4401_at_once_and_others_stay(
        autojump_clock, nursery):
    services = await nursery.start(app.serve, make_settings(ws_port=0, api_port=0))
    with trio.fail_after(BOUND_S):
        doomed, other = await open_session(services), await open_session(services)
        async with open_websocket_url(f"{services.ws_url}?session={doomed}&encoding=json&fps=6") as a, \
                open_websocket_url(f"{services.ws_url}?session={doomed}&encoding=json&fps=6") as b, \
                open_websocket_url(f"{services.ws_url}?session={other}&encoding=json&fps=6") as c:
            for ws in (a, b, c):
                await ws.get_message()            # hello
            async with httpx.AsyncClient(base_url=services.api_url) as http:
                r = await http.delete("/api/v1/sceau/session", headers={"X-Sceau-Session": doomed})
                assert r.status_code == 204
                revoked = trio.current_time()
                r = await http.get("/api/v1/swarm", headers={"X-Sceau-Session": doomed})
                assert r.status_code == 401 and r.json()["error"] == "sceau_session_invalid"
            for ws in (a, b):
                code, reason, at = await closed_with(ws)
                assert (code, reason) == (4401, "session ended") and at - revoked < 1.0
            await ws_still_streams(c)
    assert services.broadcaster.stats.closed_session == 2


async def ws_still_streams(ws) -> None:
    for _ in range(3):
        assert isinstance(await ws.get_message(), str)


async def test_an_expired_session_s_stream_closes_with_4401_when_it_expires(autojump_clock, nursery):
    services = await nursery.start(app.serve, make_settings(ws_port=0, api_port=0,
                                                            session_ttl_s=30))
    with trio.fail_after(BOUND_S):
        token = await open_session(services)
        opened = trio.current_time()
        async with open_websocket_url(f"{services.ws_url}?session={token}&encoding=json&fps=1") as ws:
            await ws.get_message()
            code, reason, at = await closed_with(ws)
    assert (code, reason) == (4401, "session ended")
    assert 29.0 < at - opened <= 31.0
