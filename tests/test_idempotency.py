"""``Idempotency-Key`` on the operators' POST and PUT endpoints (CONTRACT §2), in process: the
real tree (``app.serve``, memory backends) through httpx's ASGI transport, on virtual time. The
same over Redis, across API processes and a failover: ``tests/test_failover.py``."""

from __future__ import annotations

import httpx
import pytest
import trio

from atom_actors.api.idempotency import REPLAYED_HEADER

from .operators import bearer
from .test_api import assert_error, client, serve

KEY = "Idempotency-Key"


async def caller(c: httpx.AsyncClient, subject: str = "op-1") -> dict[str, str]:
    """The headers of an operator allowed to send commands (the one place that says how)."""
    return bearer(subject=subject)


async def dispersed(c: httpx.AsyncClient, headers: dict[str, str]) -> int:
    r = await c.get("/api/v1/swarm", headers=headers)
    return r.json()["by_status"].get("dispersed", 0)


@pytest.fixture
async def api(nursery):
    services = await serve(nursery, dispersal_dwell_s=1000)
    async with client(services) as c:
        yield services, c


async def test_the_same_key_gets_the_first_answer_and_the_command_runs_once(autojump_clock, api):
    _, c = api
    headers = {**await caller(c), KEY: "order-7f3e"}
    first = await c.post("/api/v1/swarm/disperse", json={"level": "partial"}, headers=headers)
    assert first.status_code == 202 and REPLAYED_HEADER not in first.headers
    await trio.sleep(0.5)
    for _ in range(3):
        again = await c.post("/api/v1/swarm/disperse", json={"level": "partial"}, headers=headers)
        assert (again.status_code, again.content) == (first.status_code, first.content)
        assert again.headers[REPLAYED_HEADER] == "true"
    await trio.sleep(0.5)
    assert await dispersed(c, headers) == 70          # once, not four times
    # Without a key, or with another, it is another command.
    other = await c.post("/api/v1/swarm/disperse", json={"level": "partial"},
                         headers={**headers, KEY: "order-8"})
    assert other.status_code == 202 and other.json()["command_id"] != first.json()["command_id"]


async def test_every_command_endpoint_replays(autojump_clock, api):
    _, c = api
    headers = await caller(c)
    for method, path, body in [("POST", "/api/v1/swarm/regroup", None),
                               ("PUT", "/api/v1/swarm/agents/12/frequency", {"frequency": 512}),
                               ("POST", "/api/v1/safeguard/reset", None)]:
        h = {**headers, KEY: f"k-{path}"}
        first = await c.request(method, path, json=body, headers=h)
        assert 200 <= first.status_code < 300, first.text
        again = await c.request(method, path, json=body, headers=h)
        assert (again.status_code, again.content) == (first.status_code, first.content)
        assert again.headers[REPLAYED_HEADER] == "true"


async def test_a_key_is_the_callers_own(autojump_clock, api):
    _, c = api
    alice, bob = await caller(c, "alice"), await caller(c, "bob")
    a = await c.post("/api/v1/swarm/regroup", headers={**alice, KEY: "same"})
    b = await c.post("/api/v1/swarm/regroup", headers={**bob, KEY: "same"})
    assert a.status_code == b.status_code == 202
    assert a.json()["command_id"] != b.json()["command_id"] and REPLAYED_HEADER not in b.headers


async def test_a_key_used_again_for_another_request_is_refused(autojump_clock, api):
    _, c = api
    headers = {**await caller(c), KEY: "k1"}
    assert (await c.post("/api/v1/swarm/disperse", json={"level": "partial"},
                         headers=headers)).status_code == 202
    assert_error(await c.post("/api/v1/swarm/disperse", json={"level": "total"}, headers=headers),
                 409, "idempotency_key_reused")
    assert_error(await c.post("/api/v1/swarm/regroup", headers=headers), 409,
                 "idempotency_key_reused")


@pytest.mark.parametrize("key", ["", "x" * 129, "tab\there", "clé"])
async def test_a_bad_key_is_a_400(autojump_clock, api, key):
    _, c = api
    headers = await caller(c)
    r = await c.post("/api/v1/swarm/regroup",
                     headers=[*headers.items(), (KEY.encode(), key.encode("latin-1"))])
    assert_error(r, 400, "invalid_idempotency_key")


async def test_the_longest_key_and_every_printable_character_are_accepted(autojump_clock, api):
    _, c = api
    headers = await caller(c)
    for key in ["x" * 128, "".join(chr(i) for i in range(0x21, 0x7f))[:128], "a b"]:
        r = await c.post("/api/v1/swarm/regroup", headers={**headers, KEY: key})
        assert r.status_code == 202, (key, r.text)


async def test_an_error_is_not_kept_and_the_retry_runs_the_command(autojump_clock, nursery):
    """A refused command (423: the Brise-Circuit open) was not applied: the same key later runs it."""
    services = await serve(nursery, safeguard_max_total=1, dispersal_dwell_s=1000)
    async with client(services) as c:
        headers = await caller(c)
        assert (await c.post("/api/v1/swarm/disperse", json={"level": "total"},
                             headers={**headers, KEY: "t1"})).status_code == 202
        h = {**headers, KEY: "t2"}
        refused = await c.post("/api/v1/swarm/disperse", json={"level": "total"}, headers=h)
        assert_error(refused, 423, "brise_circuit_open")
        assert (await c.post("/api/v1/safeguard/reset", headers=headers)).status_code == 200
        retried = await c.post("/api/v1/swarm/disperse", json={"level": "total"}, headers=h)
        assert retried.status_code == 202 and REPLAYED_HEADER not in retried.headers


async def test_a_key_held_by_a_running_request_is_409_then_runs_with_its_command_id(
        autojump_clock, api):
    """Another API process holds the key (its request is being carried out): 409 with
    Retry-After. Once its hold lapses (the process died, say), the key runs the command with the
    command id its record was made with, which the engine applies at most once."""
    from atom_actors.api.idempotency import HOLD_S, fingerprint, record_id

    services, c = api
    headers = await caller(c)
    keys = services.api_input.coordinator
    operator = await services.api_input.operators.identify(headers["Authorization"].split()[1])
    record = record_id(f"operator:{operator.pseudonym}", "held")
    await keys.idempotency_claim(record, fingerprint("POST", "/api/v1/swarm/regroup", None),
                                 "cmd-held", 600, HOLD_S)
    r = await c.post("/api/v1/swarm/regroup", headers={**headers, KEY: "held"})
    assert_error(r, 409, "idempotency_key_in_use")
    assert r.headers["retry-after"] == "1"
    await trio.sleep(HOLD_S)
    r = await c.post("/api/v1/swarm/regroup", headers={**headers, KEY: "held"})
    assert r.status_code == 202 and r.json()["command_id"] == "cmd-held"
