"""The REST API of CONTRACT.md §2, as an operator's client sees it.

Most tests run the real tree (``app.serve``) and talk to the API in-process through httpx's ASGI
transport, so that virtual time (``autojump_clock``) drives session expiry, the rate limit and the
Brise-Circuit's cooldown; the tests marked "over HTTP" go through Hypercorn on a real socket.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator

import httpx
import hypothesis
import pytest
import schemathesis
import trio
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import negative_data_rejection

from atom_actors import app as tree
from atom_actors.api import ApiInput, create_app
from atom_actors.api.routes import meta
from atom_actors.app import Services
from atom_actors.bus import MemoryBus
from atom_actors.catalog import CATALOG
from atom_actors.coordinator import MemoryCoordinator
from atom_actors.engine import Engine
from atom_actors.safeguard import BriseCircuit
from atom_actors.sessions import SessionService
from atom_actors.store import MemoryStore

from .conftest import make_settings
from .operators import bearer

ORIGIN = "https://operators.example"
SESSION = "X-Sceau-Session"
AGENT_KEYS = {"id", "sphere", "name", "function", "frequency", "status", "position"}

# Every (S) endpoint of §2, with a body that would be valid.
SESSION_ENDPOINTS = [
    ("DELETE", "/api/v1/sceau/session", None),
    ("GET", "/api/v1/swarm", None),
    ("GET", "/api/v1/swarm/agents", None),
    ("GET", "/api/v1/swarm/agents/0", None),
    ("GET", "/api/v1/frequency", None),
    ("GET", "/api/v1/spheres", None),
    ("GET", "/api/v1/spheres/privacy", None),
    ("GET", "/api/v1/safeguard", None),
]
# Every (O) endpoint of §2 (tests/test_operators.py has their refusals), with its role.
OPERATOR_ENDPOINTS = [
    ("POST", "/api/v1/swarm/disperse", {"level": "partial"}, "operator"),
    ("POST", "/api/v1/swarm/regroup", None, "operator"),
    ("PUT", "/api/v1/swarm/agents/0/frequency", {"frequency": 500}, "operator"),
    ("POST", "/api/v1/safeguard/reset", None, "guardian"),
    ("GET", "/api/v1/audit", None, "guardian"),
]


def settings(**overrides: object):
    # The in-process clients' host, atom.test, is this deployment's name: listed like a site's.
    base = {"api_port": 0, "ws_port": 0, "cors_origins": ORIGIN,
            "allowed_hosts": "atom.test,localhost,127.0.0.1"}
    base.update(overrides)
    return make_settings(**base)


async def serve(nursery: trio.Nursery, **overrides: object) -> Services:
    return await nursery.start(tree.serve, settings(**overrides))


def client(services: Services, address: str = "192.0.2.10") -> httpx.AsyncClient:
    """An in-process client of a new app on the running tree's services."""
    transport = httpx.ASGITransport(create_app(services.api_input), client=(address, 50000))
    return httpx.AsyncClient(transport=transport, base_url="http://atom.test")


async def activate(c: httpx.AsyncClient, duration_ms: int = 2000) -> dict[str, str]:
    r = await c.post("/api/v1/sceau/activate", json={"duration_ms": duration_ms})
    assert r.status_code == 201, r.text
    return {SESSION: r.json()["session"]}


def assert_error(r: httpx.Response, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["error"] == code
    assert isinstance(body["detail"], str) and body["detail"]
    assert set(body) <= {"error", "detail", "fields", "checks"}
    return body


@pytest.fixture
async def api(nursery: trio.Nursery) -> AsyncIterator[tuple[Services, httpx.AsyncClient]]:
    services = await serve(nursery)
    async with client(services) as c:
        yield services, c


# -- over HTTP --------------------------------------------------------------------------------------

async def test_over_http_the_api_binds_a_free_port_and_a_session_steers_the_swarm(nursery):
    with trio.fail_after(20):
        services = await serve(nursery)
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", services.api_url)
        assert not services.api_url.endswith(":0")
        async with httpx.AsyncClient(base_url=services.api_url) as c:
            r = await c.get("/api/v1/health")
            assert r.status_code == 200 and r.json()["status"] == "ok"
            r = await c.post("/api/v1/sceau/activate", json={"duration_ms": 2000})
            assert r.status_code == 201 and r.headers[SESSION] == r.json()["session"]
            headers = {SESSION: r.headers[SESSION]}
            r = await c.post("/api/v1/swarm/disperse", json={"level": "sectoral"}, headers=bearer())
            assert r.status_code == 202 and r.json()["dispersed"] == 175
            assert (await c.delete("/api/v1/sceau/session", headers=headers)).status_code == 204
            assert_error(await c.get("/api/v1/swarm", headers=headers), 401, "sceau_session_invalid")


async def test_over_http_errors_are_json_never_html(nursery):
    with trio.fail_after(20):
        services = await serve(nursery)
        async with httpx.AsyncClient(base_url=services.api_url) as c:
            assert_error(await c.get("/api/v1/nothing"), 404, "not_found")
            r = await c.patch("/api/v1/health")
            assert_error(r, 405, "method_not_allowed")
            assert "GET" in r.headers["allow"]
            r = await c.post("/api/v1/sceau/activate", content=b"{" * 70_000,
                             headers={"content-type": "application/json"})
            assert_error(r, 413, "request_entity_too_large")


async def test_over_http_cors_preflight_from_a_listed_origin(nursery):
    with trio.fail_after(20):
        services = await serve(nursery)
        async with httpx.AsyncClient(base_url=services.api_url) as c:
            r = await c.options("/api/v1/swarm/disperse", headers={
                "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type, x-sceau-session"})
    assert r.status_code == 204, r.text
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert r.headers["access-control-allow-credentials"] == "true"
    assert "POST" in r.headers["access-control-allow-methods"]
    assert "X-Sceau-Session" in r.headers["access-control-allow-headers"]
    # An operators' console on a listed origin sends its bearer token and its Idempotency-Key.
    assert {"Authorization", "Idempotency-Key"} <= {
        h.strip() for h in r.headers["access-control-allow-headers"].split(",")}


async def test_atom_serve_makes_an_ephemeral_key_says_so_once_and_serves_the_api(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.isupper() or k in ("PATH", "HOME", "LANG")}
    env.update(API_PORT="0", WS_PORT="0", PYTHONUNBUFFERED="1")
    proc = await trio.lowlevel.open_process([sys.executable, "-m", "atom_actors", "serve"],
                                            env=env, cwd=tmp_path, stderr=subprocess.PIPE)
    buffer = b""
    try:
        with trio.fail_after(30):
            while b"serving" not in buffer:
                chunk = await proc.stderr.receive_some()
                assert chunk, buffer
                buffer += chunk
            url = re.search(rb"api (http://\S+?)(,|\s|$)", buffer).group(1).decode()
            async with httpx.AsyncClient(base_url=url) as c:
                assert (await c.get("/api/v1/health/ready")).status_code == 200
    finally:
        proc.send_signal(signal.SIGINT)
        with trio.fail_after(10):
            await proc.wait()
            while chunk := await proc.stderr.receive_some():
                buffer += chunk
    assert buffer.count(b"ephemeral") == 1, buffer
    assert b"Traceback" not in buffer


# -- health, metrics, docs, viewer ------------------------------------------------------------------

async def test_health_and_readiness(autojump_clock, api):
    services, c = api
    r = await c.get("/api/v1/health")
    ws_port = int(services.ws_url.rsplit(":", 1)[1].split("/")[0])
    assert r.status_code == 200 and r.json() == {"status": "ok", "ticking": True,
                                                 "ws_port": ws_port, "sceau_duration_ms": 2000}
    r = await c.get("/api/v1/health/ready")
    assert r.status_code == 200
    assert r.json() == {"status": "ready", "checks": {"engine": "ok", "store": "ok", "bus": "ok",
                                                      "commands": "ok"}}


def parts(s, store=None) -> Services:
    """Services put together by hand, the engine made but not started."""
    bus = MemoryBus()
    store = store or MemoryStore()
    services = Services(s, bus, store=store, coordinator=MemoryCoordinator())
    services.sessions = SessionService(MemoryCoordinator(), "k" * 40, store=store,
                                       sceau_duration_ms=s.sceau_duration,
                                       ttl_s=s.session_ttl_s, frequency=s.frequency)
    services.safeguard = BriseCircuit(s, bus, store)
    services.engine = Engine(s, bus)
    services.api_input = ApiInput(s, services.engine, services.sessions, services.safeguard,
                                  store, bus)
    return services


async def test_not_ready_while_the_engine_does_not_tick(autojump_clock):
    services = parts(settings())                       # the engine is made but not started
    async with client(services) as c:
        assert (await c.get("/api/v1/health")).status_code == 200
        body = assert_error(await c.get("/api/v1/health/ready"), 503, "not_ready")
    assert body["checks"]["engine"] == "not ticking"


class HungStore(MemoryStore):
    """A store whose backend never answers (what a stalled PostgreSQL looks like)."""

    async def ping(self) -> None:
        await trio.sleep_forever()


async def test_not_ready_while_the_store_does_not_answer(autojump_clock, nursery):
    services = parts(settings(), store=HungStore())
    await nursery.start(services.engine.run)
    async with client(services) as c:
        body = assert_error(await c.get("/api/v1/health/ready"), 503, "not_ready")
    assert body["checks"]["store"].startswith("no answer within")
    assert body["checks"]["engine"] == "ok"


async def test_metrics_are_prometheus_text(autojump_clock, api):
    services, c = api
    r = await c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert "# TYPE" in r.text


def template(path: str) -> str:
    """The OpenAPI path of a concrete one: /api/v1/swarm/agents/0 → /api/v1/swarm/agents/{agent}."""
    return re.sub(r"/0(?=/|$)", "/{agent}", path).replace("/spheres/privacy", "/spheres/{name}")


async def test_openapi_describes_every_endpoint_of_the_contract(autojump_clock, api):
    services, c = api
    r = await c.get("/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    assert doc["openapi"].startswith("3.")
    public = [("get", "/api/v1/health"), ("get", "/api/v1/health/ready"),
              ("post", "/api/v1/sceau/activate"), ("get", "/metrics")]
    for method, path in public:
        assert method in doc["paths"][path] and "security" not in doc["paths"][path][method]
    for method, path, _ in SESSION_ENDPOINTS:
        op = doc["paths"][template(path)][method.lower()]
        assert op["security"] == [{"sceau": []}, {"bearer": []}] and "401" in op["responses"]
    for method, path, _, _ in OPERATOR_ENDPOINTS:
        op = doc["paths"][template(path)][method.lower()]
        assert op["security"] == [{"bearer": []}]
        assert set(op["responses"]) >= {"401", "403", "503"}
    disperse = doc["paths"]["/api/v1/swarm/disperse"]["post"]
    assert disperse["responses"]["423"]["headers"]["Retry-After"]
    assert set(disperse["responses"]) >= {"202", "401", "403", "422", "423"}
    assert set(doc["paths"]["/api/v1/safeguard/reset"]["post"]["responses"]) >= {"200", "202"}
    assert doc["components"]["securitySchemes"]["sceau"] == {"type": "apiKey", "in": "header",
                                                             "name": SESSION}
    assert doc["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer",
                                                              "bearerFormat": "JWT"}


async def test_docs_page_lists_every_path_without_scripts(autojump_clock, api):
    services, c = api
    doc = (await c.get("/openapi.json")).json()
    r = await c.get("/docs")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    for path in doc["paths"]:
        assert path in r.text
    assert "<script" not in r.text


async def test_root_points_to_the_api_while_no_viewer_is_installed(autojump_clock, api,
                                                                   monkeypatch, tmp_path):
    services, c = api
    monkeypatch.setattr(meta, "VIEWER_DIR", tmp_path / "absent")
    r = await c.get("/")
    assert r.status_code == 200 and r.json()["api"] == "/api/v1"
    assert_error(await c.get("/viewer/app.js"), 404, "not_found")


async def test_root_serves_the_viewer_page_and_its_files(api, monkeypatch, tmp_path):
    """On real time: Quart reads a file in a worker thread, and an autojumping MockClock sees the
    waiting task as idle and jumps past Quart's response timeout (the body then never comes)."""
    services, c = api
    (tmp_path / "index.html").write_text("<!doctype html><title>L'Essaim</title>")
    (tmp_path / "app.js").write_text("console.log('essaim')")
    (tmp_path.parent / "secret.txt").write_text("no")
    monkeypatch.setattr(meta, "VIEWER_DIR", tmp_path)
    r = await c.get("/")
    assert r.status_code == 200 and "L'Essaim" in r.text
    assert r.headers["content-type"].startswith("text/html")
    r = await c.get("/viewer/app.js")
    assert r.status_code == 200 and "essaim" in r.text
    assert_error(await c.get("/viewer/../secret.txt"), 404, "not_found")
    assert_error(await c.get("/viewer/%2e%2e/secret.txt"), 404, "not_found")


async def test_every_other_path_under_viewer_is_a_404_json_whatever_it_holds(nursery, caplog):
    """Issue 13 finding 3: no look-up on disk of what a client typed (a 5,000-character name was
    a 500 with a traceback holding it)."""
    with trio.fail_after(20):
        services = await serve(nursery)
        async with httpx.AsyncClient(base_url=services.api_url) as c:
            for path in ["/viewer/" + "a" * 5000, "/viewer/" + "%C3%A9" * 2000, "/viewer/%00",
                         "/viewer/%ff%fe", "/viewer/x/../../../etc/passwd", "/viewer/",
                         "/viewer/index.html/", "/viewer/" + "a/" * 2000]:
                body = assert_error(await c.get(path), 404, "not_found")
                assert len(body["detail"]) < 300
    assert "Traceback" not in caplog.text and "a" * 300 not in caplog.text


@pytest.mark.parametrize("allowed_hosts", ["*", "localhost,127.0.0.1"])
async def test_no_answer_is_built_from_the_host_header(nursery, allowed_hosts):
    """Issue 13 finding 5: ``//`` in a path was answered 308 to ``http://<Host>/...``."""
    with trio.fail_after(20):
        services = await serve(nursery, allowed_hosts=allowed_hosts)
        async with httpx.AsyncClient(base_url=services.api_url) as c:
            for path in ["/viewer//x", "//viewer/index.html", "/api/v1//health", "/viewer//",
                         "/api//v1/swarm"]:
                r = await c.get(path, headers={"Host": "evil.example"})
                assert r.status_code in (400, 404) and "location" not in r.headers, (path, r)
                assert r.headers["content-type"] == "application/json"
                assert "evil" not in r.text


# -- sessions ---------------------------------------------------------------------------------------

async def test_activate_returns_the_token_in_body_and_header(autojump_clock, api):
    services, c = api
    r = await c.post("/api/v1/sceau/activate", json={"duration_ms": 2500})
    assert r.status_code == 201
    body = r.json()
    assert set(body) == {"session", "expires_at", "frequency"}
    assert r.headers[SESSION] == body["session"]
    assert body["frequency"] == 999.0
    assert body["expires_at"] == pytest.approx(services.sessions.clock.now() + 3600, abs=1)
    # Only a hash is kept.
    assert body["session"] not in repr(services.store._sessions)


@pytest.mark.parametrize("body, status, code, field", [
    ({"duration_ms": 1999}, 400, "sceau_too_short", None),
    ({"duration_ms": -5}, 400, "sceau_too_short", None),
    ({"duration_ms": "2000"}, 422, "validation_error", "duration_ms"),
    ({"duration_ms": True}, 422, "validation_error", "duration_ms"),
    ({"duration_ms": 2000.5}, 422, "validation_error", "duration_ms"),
    ({}, 422, "validation_error", "duration_ms"),
    ([2000], 422, "validation_error", "body"),
    (None, 422, "validation_error", "body"),
])
async def test_activate_refuses_short_touches_and_bad_bodies(autojump_clock, api, body, status,
                                                             code, field):
    services, c = api
    r = await c.post("/api/v1/sceau/activate", **({} if body is None else {"json": body}))
    error = assert_error(r, status, code)
    if field:
        assert field in error["fields"]


@pytest.mark.parametrize("raw", [b"{", b"duration_ms=2000", b'{"duration_ms": NaN}'])
async def test_a_body_that_is_not_json_is_a_400(autojump_clock, api, raw):
    services, c = api
    r = await c.post("/api/v1/sceau/activate", content=raw,
                     headers={"content-type": "application/x-www-form-urlencoded"})
    assert_error(r, 400, "invalid_json")


async def test_a_json_body_needs_no_json_content_type(autojump_clock, api):
    services, c = api
    r = await c.post("/api/v1/sceau/activate", content=b'{"duration_ms": 2000}',
                     headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 201


@pytest.mark.parametrize("method, path, body", SESSION_ENDPOINTS)
async def test_every_session_endpoint_needs_a_session(autojump_clock, api, method, path, body):
    services, c = api
    kwargs = {} if body is None else {"json": body}
    assert_error(await c.request(method, path, **kwargs), 401, "sceau_session_required")
    for bad in ("garbage", "v1.AAAA.BBBB", " "):
        r = await c.request(method, path, headers={SESSION: bad}, **kwargs)
        assert r.status_code == 401 and r.json()["error"].startswith("sceau_session_")


async def test_a_tampered_token_is_invalid(autojump_clock, api):
    services, c = api
    token = (await activate(c))[SESSION]
    prefix, nonce, mac = token.split(".")
    flipped = nonce[:-1] + ("A" if nonce[-1] != "A" else "B")
    for bad in (f"{prefix}.{flipped}.{mac}", token + "x", token[:-1], f"v2.{nonce}.{mac}"):
        assert_error(await c.get("/api/v1/swarm", headers={SESSION: bad}), 401,
                     "sceau_session_invalid")
    assert (await c.get("/api/v1/swarm", headers={SESSION: token})).status_code == 200


async def test_a_session_expires_after_session_ttl(autojump_clock, nursery):
    services = await serve(nursery, session_ttl_s=10)
    async with client(services) as c:
        headers = await activate(c)
        await trio.sleep(9)
        assert (await c.get("/api/v1/swarm", headers=headers)).status_code == 200
        await trio.sleep(1.5)
        body = assert_error(await c.get("/api/v1/swarm", headers=headers), 401,
                            "sceau_session_invalid")
    assert "expired" in body["detail"]


async def test_revocation_answers_204_and_the_token_is_refused_after(autojump_clock, api):
    services, c = api
    headers = await activate(c)
    other = await activate(c)
    r = await c.delete("/api/v1/sceau/session", headers=headers)
    assert r.status_code == 204 and r.content == b""
    body = assert_error(await c.get("/api/v1/swarm", headers=headers), 401, "sceau_session_invalid")
    assert "revoked" in body["detail"]
    assert_error(await c.delete("/api/v1/sceau/session", headers=headers), 401,
                 "sceau_session_invalid")
    assert (await c.get("/api/v1/swarm", headers=other)).status_code == 200


async def test_session_creation_is_rate_limited_per_address_in_memory_only(autojump_clock, api,
                                                                           caplog):
    services, c = api
    app = create_app(services.api_input)               # one app: its buckets are shared

    def on(address: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app, client=(address, 50000))
        return httpx.AsyncClient(transport=transport, base_url="http://atom.test")

    address = "203.0.113.77"
    async with on(address) as a, on("203.0.113.78") as b:
        for _ in range(10):
            await activate(a)
        r = await a.post("/api/v1/sceau/activate", json={"duration_ms": 2000})
        assert_error(r, 429, "rate_limited")
        assert r.headers["retry-after"] == "6"
        await activate(b)                              # another address is not affected
        await trio.sleep(6)
        await activate(a)
        assert (await a.post("/api/v1/sceau/activate",
                             json={"duration_ms": 2000})).status_code == 429
    assert address not in repr(services.store._sessions) + repr(services.store._events)
    assert address not in caplog.text


@pytest.mark.parametrize("hops", [0, 1])
async def test_behind_a_trusted_proxy_the_rate_limit_keys_on_the_forwarded_address(
        autojump_clock, nursery, hops):
    services = await serve(nursery, trusted_proxy_hops=hops, trusted_proxies="10.0.0.0/24")
    proxy = client(services, "10.0.0.5")               # every request comes from nginx

    def forwarded(address: str) -> dict[str, str]:
        # the first entry is what a client may forge; the proxy appends the address it saw
        return {"X-Forwarded-For": f"198.51.100.1, {address}"}

    async with proxy as c:
        for _ in range(10):
            r = await c.post("/api/v1/sceau/activate", json={"duration_ms": 2000},
                             headers=forwarded("203.0.113.1"))
            assert r.status_code == 201
        other = await c.post("/api/v1/sceau/activate", json={"duration_ms": 2000},
                             headers=forwarded("203.0.113.2"))
    # trusted: another client behind the same proxy still gets its session; not trusted: the
    # header is ignored and everyone behind the proxy shares one bucket
    assert other.status_code == (201 if hops else 429)


async def test_x_forwarded_for_is_believed_only_from_a_trusted_proxy(autojump_clock, nursery):
    """Issue 24, finding 8: with TRUSTED_PROXY_HOPS=1 and the API reachable directly, a client
    naming a new address in X-Forwarded-For each time opened unlimited sessions, and could have
    a victim's address refused. A peer not on TRUSTED_PROXIES (default: loopback) is its own
    address, whatever it forwards."""
    services = await serve(nursery, trusted_proxy_hops=1)
    on = one_app(services)

    async def post(peer: str, forwarded: str | None = None) -> int:
        async with on(peer) as c:
            headers = {"X-Forwarded-For": forwarded} if forwarded else {}
            return (await c.post("/api/v1/sceau/activate", json={"duration_ms": 2000},
                                 headers=headers)).status_code

    # a direct peer rotating the address it forwards: one bucket, its own
    assert [await post("192.0.2.77", f"203.0.113.{i}") for i in range(11)] == [201] * 10 + [429]
    # nor can it spend a victim's bucket by naming the victim
    assert [await post("192.0.2.66", "192.0.2.55") for _ in range(10)] == [201] * 10
    assert await post("127.0.0.1", "192.0.2.55") == 201     # the victim, through the proxy
    # the proxy on this machine is believed: the client it names has its own bucket
    assert await post("127.0.0.1", "192.0.2.77") == 429     # the rotating client, found again


async def test_session_creation_has_a_global_bucket_beside_each_addresss(autojump_clock,
                                                                          nursery):
    """Issue 24, finding 8: 200 addresses opened 2,000 sessions in 5 s. Beside each address's
    bucket, one for everyone: SESSION_GLOBAL_BURST at once, then SESSION_GLOBAL_PER_S."""
    services = await serve(nursery, session_global_burst=30, session_global_per_s=2)
    on = one_app(services)
    codes = []
    for i in range(20):                                # 20 addresses, 3 sessions each
        async with on(f"198.51.100.{i + 1}") as c:
            for _ in range(3):
                r = await c.post("/api/v1/sceau/activate", json={"duration_ms": 2000})
                codes.append(r.status_code)
                if r.status_code == 429:
                    assert int(r.headers["retry-after"]) >= 1
    assert codes == [201] * 30 + [429] * 30
    await trio.sleep(5)                                # 2 a second come back
    async with on("198.51.100.200") as c:
        codes = [(await c.post("/api/v1/sceau/activate", json={"duration_ms": 2000})).status_code
                 for _ in range(11)]
    assert codes == [201] * 10 + [429]


def one_app(services: Services):
    """In-process clients from any address, all of one app (one set of buckets)."""
    app = create_app(services.api_input)

    def on(address: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app, client=(address, 50000))
        return httpx.AsyncClient(transport=transport, base_url="http://atom.test")

    return on


# -- the swarm --------------------------------------------------------------------------------------

async def test_swarm_summary(autojump_clock, api):
    services, c = api
    headers = await activate(c)
    body = (await c.get("/api/v1/swarm", headers=headers)).json()
    assert body["agents"] == 350 and body["tick_hz"] == 60 and body["ticking"] is True
    assert sum(body["by_status"].values()) == 350
    assert body["by_sphere"] == {s.name: s.count for s in CATALOG.spheres}
    assert body["subscribers"] == 0 and body["safeguard"] == "closed"
    # The API reads the subscriber count it was given at each request.
    services.api_input = dataclasses.replace(services.api_input, subscribers=lambda: 7)
    async with client(services) as c:
        assert (await c.get("/api/v1/swarm", headers=headers)).json()["subscribers"] == 7


async def test_agents_list_and_filters(autojump_clock, api):
    services, c = api
    headers = bearer()
    agents = (await c.get("/api/v1/swarm/agents", headers=headers)).json()
    assert [a["id"] for a in agents] == list(range(350))
    assert all(set(a) == AGENT_KEYS and set(a["position"]) == {"x", "y", "z"} for a in agents)
    await trio.sleep(0.2)
    later = (await c.get("/api/v1/swarm/agents", headers=headers)).json()
    assert [a["position"] for a in later] != [a["position"] for a in agents], "agents move"
    privacy = (await c.get("/api/v1/swarm/agents?sphere=privacy", headers=headers)).json()
    assert len(privacy) == 8 and {a["sphere"] for a in privacy} == {"privacy"}
    assert (await c.get("/api/v1/swarm/agents?status=dispersed", headers=headers)).json() == []
    await c.post("/api/v1/swarm/disperse", json={"level": "partial"}, headers=headers)
    await trio.sleep(0.1)
    out = (await c.get("/api/v1/swarm/agents?status=dispersed", headers=headers)).json()
    assert len(out) == 70 and {a["status"] for a in out} == {"dispersed"}
    for q, field in (("sphere=nowhere", "sphere"), ("status=asleep", "status")):
        body = assert_error(await c.get(f"/api/v1/swarm/agents?{q}", headers=headers), 422,
                            "validation_error")
        assert field in body["fields"]


async def test_the_agent_list_is_fresh_after_a_command(autojump_clock, api):
    """The list is reused for up to 0.1 s, but not across a command of the API (once the
    command has had a tick to reach the swarm)."""
    services, c = api
    headers = bearer()
    active = "/api/v1/swarm/agents?status=active"
    assert len((await c.get(active, headers=headers)).json()) == 350
    await c.post("/api/v1/swarm/disperse", json={"level": "partial"}, headers=headers)
    await trio.sleep(0.05)
    assert len((await c.get(active, headers=headers)).json()) == 280


@pytest.mark.parametrize("ident", ["350", "-1", "abc", "1e3", "99999999999", " 1"])
async def test_an_unknown_agent_is_a_404(autojump_clock, api, ident):
    services, c = api
    headers = bearer()
    assert_error(await c.get(f"/api/v1/swarm/agents/{ident}", headers=headers), 404,
                 "agent_not_found")
    assert_error(await c.put(f"/api/v1/swarm/agents/{ident}/frequency", json={"frequency": 500},
                             headers=headers), 404, "agent_not_found")


async def test_one_agent(autojump_clock, api):
    services, c = api
    headers = await activate(c)
    last = (await c.get("/api/v1/swarm/agents/349", headers=headers)).json()
    assert set(last) == AGENT_KEYS and last["id"] == 349 and last["sphere"] == "dashboard"


@pytest.mark.parametrize("body, size, sphere", [
    ({"level": "partial"}, 70, None), ({"level": "sectoral"}, 175, None),
    ({"level": "total"}, 350, None), ({"level": "partial", "sphere": "transport"}, 10, "transport"),
    ({"level": "total", "sphere": "privacy"}, 8, "privacy"),
])
async def test_disperse_answers_202_and_is_recorded(autojump_clock, api, body, size, sphere):
    services, c = api
    headers = bearer()
    r = await c.post("/api/v1/swarm/disperse", json=body, headers=headers)
    assert r.status_code == 202
    result = r.json()
    assert result["level"] == body["level"] and result["sphere"] == sphere
    assert result["dispersed"] == size and result["command_id"]
    [record] = await services.store.events("dispersal")
    assert record.payload == {"command_id": result["command_id"], "level": body["level"],
                              "sphere": sphere, "dispersed": size}


@pytest.mark.parametrize("body, field", [
    ({"level": "everything"}, "level"), ({"level": 1}, "level"), ({}, "level"),
    ({"level": "partial", "sphere": "nowhere"}, "sphere"), ({"level": "partial", "sphere": 3}, "sphere"),
])
async def test_disperse_names_the_bad_field(autojump_clock, api, body, field):
    services, c = api
    headers = bearer()
    error = assert_error(await c.post("/api/v1/swarm/disperse", json=body, headers=headers), 422,
                         "validation_error")
    assert field in error["fields"] and field in error["detail"]
    assert await services.store.events("dispersal") == []


async def test_regroup_answers_202_and_is_recorded(autojump_clock, api):
    services, c = api
    headers = bearer()
    await c.post("/api/v1/swarm/disperse", json={"level": "partial"}, headers=headers)
    await trio.sleep(0.1)
    r = await c.post("/api/v1/swarm/regroup", headers=headers)
    assert r.status_code == 202
    assert r.json()["regrouped"] == 70 and r.json()["command_id"]
    [record] = await services.store.events("regroup")
    assert record.payload == r.json()


@pytest.mark.parametrize("hz", [432, 999, 640.5])
async def test_retune_returns_the_agent_and_is_recorded(autojump_clock, api, hz):
    services, c = api
    headers = bearer()
    r = await c.put("/api/v1/swarm/agents/12/frequency", json={"frequency": hz}, headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["id"] == 12 and r.json()["frequency"] == hz
    [record] = await services.store.events("retune")
    assert record.payload["agent"] == 12 and record.payload["frequency"] == hz


@pytest.mark.parametrize("body", [{"frequency": 431.9}, {"frequency": 999.01}, {"frequency": "500"},
                                  {"frequency": True}, {"frequency": None}, {}])
async def test_retune_out_of_range_or_of_the_wrong_type_is_a_422(autojump_clock, api, body):
    services, c = api
    headers = bearer()
    error = assert_error(await c.put("/api/v1/swarm/agents/12/frequency", json=body,
                                     headers=headers), 422, "validation_error")
    assert "frequency" in error["fields"]


async def test_frequency_stats(autojump_clock, api):
    services, c = api
    headers = await activate(c)
    body = (await c.get("/api/v1/frequency", headers=headers)).json()
    assert set(body) == {"canon", "min", "max", "mean"} and body["canon"] == 999.0
    assert 432 <= body["min"] <= body["mean"] <= body["max"] <= 999


async def test_spheres(autojump_clock, api):
    services, c = api
    headers = await activate(c)
    spheres = (await c.get("/api/v1/spheres", headers=headers)).json()
    assert [(s["name"], s["count"]) for s in spheres] == [(s.name, s.count) for s in CATALOG.spheres]
    privacy = (await c.get("/api/v1/spheres/privacy", headers=headers)).json()
    assert privacy["name"] == "privacy" and privacy["count"] == 8
    assert [a["id"] for a in privacy["agents"]] == list(CATALOG.by_name["privacy"].agent_ids)
    assert privacy["by_status"] == {"active": 8}
    assert_error(await c.get("/api/v1/spheres/nowhere", headers=headers), 404, "sphere_not_found")


# -- the Brise-Circuit through the API --------------------------------------------------------------

async def test_a_flood_of_total_dispersals_opens_the_brise_circuit(autojump_clock, api):
    services, c = api
    headers = bearer()
    for _ in range(3):
        r = await c.post("/api/v1/swarm/disperse", json={"level": "total"}, headers=headers)
        assert r.status_code == 202
    r = await c.post("/api/v1/swarm/disperse", json={"level": "total"}, headers=headers)
    body = assert_error(r, 423, "brise_circuit_open")
    assert r.headers["retry-after"] == "30" and "total dispersals" in body["detail"]
    for method, path, json in (("POST", "/api/v1/swarm/regroup", None),
                               ("POST", "/api/v1/swarm/disperse", {"level": "partial"}),
                               ("PUT", "/api/v1/swarm/agents/3/frequency", {"frequency": 500})):
        r = await c.request(method, path, json=json, headers=headers)
        assert_error(r, 423, "brise_circuit_open")
        assert 1 <= int(r.headers["retry-after"]) <= 30
    status = (await c.get("/api/v1/safeguard", headers=headers)).json()
    assert status["state"] == "open" and status["trips"] == 1
    assert (await c.get("/api/v1/swarm", headers=headers)).json()["safeguard"] == "open"
    await trio.sleep(0.2)
    assert services.engine.counts()["by_status"]["dispersed"] == 0   # regrouped to safety
    [trip] = await services.store.events("safeguard")
    assert trip.payload["trigger"] == "total"


async def test_after_the_cooldown_one_command_closes_it(autojump_clock, api):
    services, c = api
    headers = bearer()
    services.safeguard.trip("overload", "test")
    await trio.sleep(0.5)
    r = await c.post("/api/v1/swarm/regroup", headers=headers)
    assert_error(r, 423, "brise_circuit_open")
    assert r.headers["retry-after"] == "30"             # 29.5 s, rounded up: never too early
    await trio.sleep(29.5)
    assert (await c.get("/api/v1/safeguard", headers=headers)).json()["state"] == "half_open"
    assert (await c.post("/api/v1/swarm/regroup", headers=headers)).status_code == 202
    assert (await c.get("/api/v1/safeguard", headers=headers)).json()["state"] == "closed"


async def test_reset_closes_the_brise_circuit(autojump_clock, api):
    services, c = api
    headers = bearer()
    services.safeguard.trip("overload", "test")
    r = await c.post("/api/v1/safeguard/reset", headers=headers)
    assert r.status_code == 200 and r.json()["state"] == "closed"
    assert (await c.post("/api/v1/swarm/regroup", headers=headers)).status_code == 202


async def test_serve_wires_the_engine_to_the_brise_circuit(autojump_clock, api):
    services, c = api
    assert services.engine.compositor.on_overload == services.safeguard.on_overload
    services.engine.compositor.on_overload(6.0)
    assert services.safeguard.state == "open"


# -- CORS -------------------------------------------------------------------------------------------

async def test_a_listed_origin_is_echoed_with_credentials(autojump_clock, api):
    services, c = api
    r = await c.get("/api/v1/health", headers={"Origin": ORIGIN})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert r.headers["access-control-allow-credentials"] == "true"
    assert "X-Sceau-Session" in r.headers["access-control-expose-headers"]
    assert "Origin" in r.headers["vary"]


@pytest.mark.parametrize("origin", ["https://evil.example", "null", ORIGIN + ".evil.example",
                                    "http://operators.example"])
async def test_a_foreign_origin_is_refused(autojump_clock, api, origin):
    services, c = api
    r = await c.get("/api/v1/health", headers={"Origin": origin})
    assert_error(r, 403, "origin_not_allowed")
    assert "access-control-allow-origin" not in r.headers
    r = await c.options("/api/v1/swarm/disperse", headers={
        "Origin": origin, "Access-Control-Request-Method": "POST"})
    assert_error(r, 403, "origin_not_allowed")
    assert "access-control-allow-origin" not in r.headers


async def test_a_rebound_host_is_refused_400_over_http(nursery):
    """Issue 13 finding 2 (DNS rebinding): a page on evil.example, re-pointed at 127.0.0.1, holds
    a session and sends its own name as Host and Origin: refused, whatever the route."""
    with trio.fail_after(20):
        services = await serve(nursery, allowed_hosts="localhost,127.0.0.1")
        port = services.api_url.rsplit(":", 1)[1]
        evil = f"evil.example:{port}"
        async with httpx.AsyncClient(base_url=services.api_url) as c:
            token = (await activate(c))[SESSION]
            for method, path in [("GET", "/api/v1/swarm"), ("POST", "/api/v1/swarm/regroup"),
                                 ("GET", "/api/v1/health"), ("GET", "/nowhere")]:
                r = await c.request(method, path, headers={
                    "Host": evil, "Origin": f"http://{evil}", SESSION: token})
                body = assert_error(r, 400, "host_not_allowed")
                assert "evil" not in body["detail"]
            r = await c.get("/api/v1/swarm", headers={SESSION: token, "Origin": services.api_url})
            assert r.status_code == 200   # the allowed host's own page still may


async def test_the_apis_own_origin_is_served_without_cors_headers(autojump_clock, api):
    services, c = api
    r = await c.post("/api/v1/sceau/activate", json={"duration_ms": 2000},
                     headers={"Origin": "http://atom.test"})
    assert r.status_code == 201 and "access-control-allow-origin" not in r.headers


async def test_errors_carry_cors_headers_for_a_listed_origin(autojump_clock, api):
    services, c = api
    r = await c.get("/api/v1/swarm", headers={"Origin": ORIGIN})
    assert_error(r, 401, "sceau_session_required")
    assert r.headers["access-control-allow-origin"] == ORIGIN


# -- the error boundary -----------------------------------------------------------------------------

async def test_an_unexpected_failure_is_a_json_500_without_traceback(autojump_clock, nursery,
                                                                     caplog):
    services = await serve(nursery)
    app = create_app(services.api_input)

    async def boom():
        raise RuntimeError("internal secret state")

    app.add_url_rule("/api/v1/boom", "boom", boom)
    transport = httpx.ASGITransport(app, client=("192.0.2.1", 1))
    async with httpx.AsyncClient(transport=transport, base_url="http://atom.test") as c:
        r = await c.get("/api/v1/boom")
    assert_error(r, 500, "internal_error")
    assert "secret" not in r.text and "Traceback" not in r.text
    assert "internal secret state" in caplog.text            # but the operator's log has it


async def test_responses_are_not_cached(autojump_clock, api):
    services, c = api
    r = await c.post("/api/v1/sceau/activate", json={"duration_ms": 2000})
    assert r.headers["cache-control"] == "no-store"


# -- property-based: schemathesis against /openapi.json ---------------------------------------------

@pytest.fixture(scope="module")
def live_api() -> Iterator[tuple[str, list[str]]]:
    """The real tree in a thread of its own (schemathesis calls synchronously): its URL and
    session tokens. Thresholds are high so that the Brise-Circuit does not refuse every case."""
    started: queue.Queue = queue.Queue()

    def run() -> None:
        async def main() -> None:
            async with trio.open_nursery() as nursery:
                services = await nursery.start(tree.serve, settings(
                    safeguard_max_commands=100_000, safeguard_max_total=100_000))
                tokens = [(await services.sessions.activate(2000)).token for _ in range(500)]
                started.put((services.api_url, tokens, nursery.cancel_scope,
                             trio.lowlevel.current_trio_token()))
        trio.run(main)

    thread = threading.Thread(target=run, name="live-api", daemon=True)
    thread.start()
    url, tokens, scope, trio_token = started.get(timeout=30)
    yield url, tokens
    trio.from_thread.run_sync(scope.cancel, trio_token=trio_token)
    thread.join(timeout=10)
    assert not thread.is_alive()


def json_errors(ctx, response, case) -> None:
    """Every 4xx and 5xx is {"error", "detail"} JSON (422 with "fields"), never HTML."""
    if response.status_code < 400:
        return None
    assert response.headers.get("content-type", [""])[0].startswith("application/json"), response
    body = response.json()
    assert isinstance(body.get("error"), str) and isinstance(body.get("detail"), str), body
    if response.status_code == 422:
        assert isinstance(body.get("fields"), dict) and body["fields"], body
    return None


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_request_finds_a_500_or_a_non_json_error(live_api, mode):
    """Cases generated from /openapi.json, valid ones and invalid ones, with a session and
    without: every answer conforms to the document, and no error is a 500 or not JSON."""
    url, tokens = live_api
    token = tokens.pop()
    api_schema = schemathesis.openapi.from_url(url + "/openapi.json")

    @hypothesis.given(case=api_schema.as_strategy(mode))
    @hypothesis.settings(max_examples=150, deadline=None, database=None,
                         suppress_health_check=list(hypothesis.HealthCheck))
    def check(case) -> None:
        # A revocation spends its token; every other case keeps using the same one.
        revokes = case.method == "DELETE" and case.path.endswith("/sceau/session")
        session = tokens.pop() if revokes and tokens else token
        with_session = case.call(headers={SESSION: session})
        seen.append((case.method, case.path, with_session.status_code))
        # Unknown query parameters and body fields are ignored on purpose (a cache-buster, a
        # newer client), which this check would count as accepting invalid data.
        case.validate_response(with_session, additional_checks=[json_errors],
                               excluded_checks=[negative_data_rejection])
        case.validate_response(case.call(), checks=[not_a_server_error, json_errors])

    seen: list[tuple[str, str, int]] = []
    check()
    # The run got past the session check to the swarm's own answers.
    wanted = range(200, 300) if mode == GenerationMode.POSITIVE else (404, 422)
    assert any(status in wanted and "/swarm" in path for _, path, status in seen), seen


# -- the audit (§2.4) --------------------------------------------------------------------------------

async def test_the_audit_lists_who_did_what_newest_first_and_its_chain_holds(autojump_clock, api):
    """Commands by one operator, a trip by the server itself, a reset by a guardian: the audit
    names each with its role and pseudonym (the same for one person, different between two, never
    their subject), and the memory store's chain is a real walk: a record changed breaks it."""
    services, c = api
    alice, bob = bearer(("operator",), subject="alice"), bearer(("guardian",), subject="bob")
    assert (await c.post("/api/v1/swarm/disperse", json={"level": "partial"},
                         headers=alice)).status_code == 202
    assert (await c.post("/api/v1/swarm/regroup", headers=alice)).status_code == 202
    for _ in range(4):
        await c.post("/api/v1/swarm/disperse", json={"level": "total"}, headers=alice)
    assert (await c.get("/api/v1/safeguard", headers=alice)).json()["state"] == "open"
    assert (await c.post("/api/v1/safeguard/reset", headers=bob)).status_code == 200
    await trio.sleep(0.5)   # the event log writes off the engine's path
    assert_error(await c.get("/api/v1/audit", headers=alice), 403, "role_required")
    assert_error(await c.get("/api/v1/audit", headers=await activate(c)), 401,
                 "operator_token_required")
    page = (await c.get("/api/v1/audit", headers=bob)).json()
    records = page["records"]
    assert [r["id"] for r in records] == sorted((r["id"] for r in records), reverse=True)
    assert page["chain"] == {"records": len(records), "verified": True, "first_broken": None}
    kinds = [(r["kind"], r.get("state"), r["role"]) for r in reversed(records)]
    assert kinds[:2] == [("dispersal", None, "operator"), ("regroup", None, "operator")]
    # The trip and its regroup are the server's own; the reset is the guardian's.
    assert {("safeguard", "open", None), ("regroup", None, None),
            ("safeguard", "closed", "guardian")} <= set(kinds)
    by_alice = {r["operator"] for r in records if r["role"] == "operator"}
    (reset,) = [r for r in records if r["role"] == "guardian"]
    assert all(r["operator"] is None for r in records if r["role"] is None)
    assert len(by_alice) == 1 and reset["operator"] not in by_alice | {None}
    assert reset["guardians"] == [reset["operator"]]
    assert all(len(p) == 16 and p not in ("alice", "bob") for p in by_alice | {reset["operator"]})
    assert "alice" not in str(records) and "bob" not in str(records)
    assert len((await c.get("/api/v1/audit?limit=2", headers=bob)).json()["records"]) == 2
    # A record changed where it is kept: the chain says so, and names it.
    store = services.store
    store._events[0] = dataclasses.replace(store._events[0], payload={"dispersed": 0})
    page = (await c.get("/api/v1/audit", headers=bob)).json()
    assert page["chain"]["verified"] is False
    assert page["chain"]["first_broken"] == records[-1]["id"]
