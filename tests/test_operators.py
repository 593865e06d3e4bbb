"""Operators (CONTRACT §2.3): the pure check of a token, the keys fetched from a real JWKS server
on loopback, and the API's refusals on every (O) endpoint.

The token tests need no network and no clock: :func:`verify` takes ``now``. The key tests run a
real HTTP server in a thread (tests/operators.py) and count the requests it answers; they run on
real time, since the HTTP client waits on real sockets. The API tests go through the whole tree.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import subprocess
import sys
import time

import httpx
import jwt
import pytest
import trio

from atom_actors import app as tree
from atom_actors.audit import derive_key, pseudonym
from atom_actors.errors import BackendUnavailable, OperatorTokenInvalid
from atom_actors.operators import Operators
from atom_actors.operators.keys import START_WAIT_S, JwksKeys
from atom_actors.operators.tokens import Keys, Policy, UnknownKey, parse_jwks, verify

from .conftest import make_settings
from .operators import (AUDIENCE, BOTH, OPERATOR_SECRET, Jwks, bearer, claims, new_key,
                        serve_jwks, token)
from .servers import atom_env
from .test_api import OPERATOR_ENDPOINTS, SESSION_ENDPOINTS, activate, assert_error, client, serve

ISSUER = "https://atomtest.supabase.co/auth/v1"
NOW = 1_800_000_000.0
POLICY = Policy(ISSUER, AUDIENCE, ("user_role",), derive_key("k" * 40, "audit-pseudonym"))
SECRET_KEYS = Keys(secret=OPERATOR_SECRET.encode())


def signed(roles=("operator",), *, secret: str = OPERATOR_SECRET, **kw) -> str:
    kw.setdefault("iss", ISSUER)
    return jwt.encode(claims(roles, now=NOW, **kw), secret, algorithm="HS256")


def refusal(tok: str, keys: Keys = SECRET_KEYS, now: float = NOW, policy: Policy = POLICY) -> str:
    with pytest.raises(OperatorTokenInvalid) as caught:
        verify(tok, keys, now, policy)
    return caught.value.why


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# -- the pure check --------------------------------------------------------------------------------

def test_a_good_token_gives_a_pseudonym_and_its_roles():
    caller = verify(signed(["operator", "guardian", "admin"]), SECRET_KEYS, NOW, POLICY)
    assert caller.roles == {"operator", "guardian"}      # roles this server does not know: none
    assert caller.pseudonym == pseudonym(POLICY.pseudonym_key, ISSUER, "op-1")
    assert len(caller.pseudonym) == 16 and caller.aal == "aal1"
    assert verify(signed("guardian"), SECRET_KEYS, NOW, POLICY).roles == {"guardian"}   # a string


def test_pseudonyms_are_stable_per_person_and_distinct_between_people():
    names = {verify(signed(subject=s), SECRET_KEYS, NOW, POLICY).pseudonym
             for s in ("alice", "bob", "alice", "carol")}
    assert len(names) == 3
    other_key = Policy(ISSUER, AUDIENCE, ("user_role",), derive_key("z" * 40, "audit-pseudonym"))
    assert verify(signed(subject="alice"), SECRET_KEYS, NOW, other_key).pseudonym not in names
    # Nothing of the subject is in it.
    assert "alice" not in verify(signed(subject="alice"), SECRET_KEYS, NOW, POLICY).pseudonym


@pytest.mark.parametrize("shape, roles", [
    ({"user_role": "operator"}, {"operator"}),
    ({"user_role": ["guardian"]}, {"guardian"}),
    ({"user_role": 7}, set()),
    ({}, set()),
    # user_metadata is the user's own to edit (Supabase's RBAC guide): never a role.
    ({"user_metadata": {"user_role": "operator"}}, set()),
])
def test_roles_come_from_the_roles_claim_only(shape, roles):
    payload = {**claims(None, now=NOW), "iss": ISSUER, **shape}
    tok = jwt.encode(payload, OPERATOR_SECRET, algorithm="HS256")
    assert verify(tok, SECRET_KEYS, NOW, POLICY).roles == roles


def test_a_dotted_roles_claim_reads_a_nested_list():
    policy = Policy(ISSUER, AUDIENCE, ("app_metadata", "roles"), POLICY.pseudonym_key)
    tok = signed(["guardian"], roles_claim="app_metadata.roles")
    assert verify(tok, SECRET_KEYS, NOW, policy).roles == {"guardian"}
    assert verify(signed(["guardian"]), SECRET_KEYS, NOW, policy).roles == set()


@pytest.mark.parametrize("now, accepted", [
    (NOW + 86400 + 29, True), (NOW + 86400 + 31, False),   # exp, with 30 s of leeway
])
def test_expiry_has_thirty_seconds_of_leeway(now, accepted):
    tok = signed()
    if accepted:
        assert verify(tok, SECRET_KEYS, now, POLICY).roles == {"operator"}
    else:
        assert refusal(tok, now=now) == "it has expired"


@pytest.mark.parametrize("claim", ["nbf", "iat"])
def test_a_token_from_the_future_is_refused(claim):
    assert verify(signed(**{claim: NOW + 29}), SECRET_KEYS, NOW, POLICY)
    assert "not valid yet" in refusal(signed(**{claim: NOW + 31}))


@pytest.mark.parametrize("kw, why", [
    ({"iss": "https://evil.supabase.co/auth/v1"}, "another issuer"),
    ({"aud": "anon"}, "another audience"),
    ({"aud": ["anon", "service"]}, "another audience"),
    ({"sub": ""}, "no subject"),
    ({"exp": None}, "no expiry"),
    ({"exp": "tomorrow"}, "not a time"),
])
def test_claims_that_do_not_fit_the_policy_are_refused(kw, why):
    payload = {**claims(now=NOW), "iss": ISSUER, **kw}
    payload = {k: v for k, v in payload.items() if v is not None}
    assert why in refusal(jwt.encode(payload, OPERATOR_SECRET, algorithm="HS256"))


def test_an_audience_list_holding_ours_is_accepted():
    assert verify(signed(aud=["other", AUDIENCE]), SECRET_KEYS, NOW, POLICY)


def test_a_token_signed_with_another_secret_is_refused():
    assert refusal(signed(secret="another-secret-of-forty-characters-long!!")) == \
        "its signature does not verify"


def test_alg_none_is_refused():
    header = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    body = b64(json.dumps({**claims(now=NOW), "iss": ISSUER}).encode())
    for tok in (f"{header}.{body}.", f"{header}.{body}"):
        assert refusal(tok) in ("its algorithm is not one this server accepts",
                                "it is not a signed JWT")


def test_hs256_signed_with_the_issuers_public_key_is_refused():
    """The classic confusion: the public key (public by definition) used as an HMAC secret."""
    key = new_key("ES256")
    public_pem = key.private.public_key().public_bytes(
        encoding=__import__("cryptography.hazmat.primitives.serialization",
                            fromlist=["Encoding"]).Encoding.PEM,
        format=__import__("cryptography.hazmat.primitives.serialization",
                          fromlist=["PublicFormat"]).PublicFormat.SubjectPublicKeyInfo)
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": key.kid}).encode())
    body = b64(json.dumps({**claims(now=NOW), "iss": ISSUER}).encode())
    mac = hmac.new(public_pem, f"{header}.{body}".encode(), hashlib.sha256).digest()
    forged = f"{header}.{body}.{b64(mac)}"
    public = parse_jwks(json.dumps({"keys": [key.jwk]}).encode())
    assert refusal(forged, Keys(public)) == "HS256 tokens are not accepted here"
    # Even where a shared secret is configured too, the public key never verifies HMAC.
    assert refusal(forged, Keys(public, OPERATOR_SECRET.encode())) == "its signature does not verify"


@pytest.mark.parametrize("tok", ["", "garbage", "a.b.c", "e30.e30.", "x" * 9000])
def test_garbage_is_refused_without_a_traceback(tok):
    assert refusal(tok)


def test_a_truncated_token_is_refused():
    good = signed()
    for cut in (good[:-5], good[: len(good) // 2], good.rsplit(".", 1)[0]):
        assert refusal(cut)


@pytest.mark.parametrize("alg", ["ES256", "RS256", "EdDSA"])
def test_public_keys_verify_their_own_algorithm_by_kid(alg):
    key = new_key(alg)
    keys = Keys(parse_jwks(json.dumps({"keys": [key.jwk, new_key("ES256").jwk]}).encode()))
    tok = key.sign({**claims(now=NOW), "iss": ISSUER})
    assert verify(tok, keys, NOW, POLICY).roles == {"operator"}
    with pytest.raises(UnknownKey):
        verify(key.sign({**claims(now=NOW), "iss": ISSUER}, kid="rotated-in"), keys, NOW, POLICY)


def test_a_key_never_verifies_another_algorithm():
    rsa_key, ec_key = new_key("RS256"), new_key("ES256")
    keys = Keys(parse_jwks(json.dumps({"keys": [rsa_key.jwk]}).encode()))
    # An ES256 token that names the RSA key's kid.
    tok = jwt.encode({**claims(now=NOW), "iss": ISSUER}, ec_key.private, algorithm="ES256",
                     headers={"kid": rsa_key.kid})
    assert refusal(tok, keys) == "its algorithm is not the one its key allows"


def test_only_public_signing_keys_are_taken_from_a_jwks():
    good = new_key("ES256")
    private = new_key("ES256")
    leaked = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(private.private))   # holds "d"
    document = {"keys": [good.jwk, {**leaked, "kid": "leaked"},
                         {"kty": "oct", "k": b64(b"s" * 32), "kid": "symmetric", "alg": "HS256"},
                         {**new_key("ES256").jwk, "kid": None},
                         {**new_key("RS256").jwk, "use": "enc", "kid": "encryption"},
                         {"kty": "EC", "kid": "broken"}, "not a key"]}
    assert list(parse_jwks(json.dumps(document).encode())) == [good.kid]
    for bad in (b"not json", b"[]", b'{"keys": 3}'):
        with pytest.raises(ValueError):
            parse_jwks(bad)


# -- the keys, from a real JWKS server -------------------------------------------------------------

async def test_keys_are_fetched_at_start_and_a_rotated_key_is_picked_up(nursery):
    first, second = new_key("ES256"), new_key("RS256")
    with serve_jwks(Jwks([first])) as jwks, trio.fail_after(20):
        keys = JwksKeys(jwks.url, refetch_min_s=0.3)
        await nursery.start(keys.run)
        assert list(keys.known()) == [first.kid] and jwks.requests == 1
        jwks.keys.append(second)                          # the issuer rotates a key in
        await trio.sleep(0.4)
        await keys.refetch()
        assert set(keys.known()) == {first.kid, second.kid} and jwks.requests == 2


async def test_a_flood_of_unknown_kids_costs_one_fetch(nursery):
    settings = make_settings(operator_issuer=ISSUER, operator_jwt_secret="")
    key = new_key("ES256")
    with serve_jwks(Jwks([key])) as jwks, trio.fail_after(30):
        # A shorter interval than the 30 s default, so that the flood can come after it.
        operators = await nursery.start(
            Operators(settings, jwks=JwksKeys(jwks.url, refetch_min_s=1.0)).run)
        assert jwks.requests == 1
        await trio.sleep(1.1)
        payload = {**claims(now=time.time()), "iss": ISSUER}
        started = time.monotonic()
        async with trio.open_nursery() as flood:
            for i in range(200):
                async def forged(kid: str = f"forged-{i}") -> None:
                    with pytest.raises(OperatorTokenInvalid):
                        await operators.identify(key.sign(payload, kid=kid))
                flood.start_soon(forged)
        assert time.monotonic() - started < 5
        assert jwks.requests == 2                 # 200 unknown kids: one more fetch, not 200
        assert (await operators.identify(key.sign(payload))).roles == {"operator"}


async def test_known_keys_stay_in_use_while_the_issuer_is_down(nursery):
    settings = make_settings(operator_issuer=ISSUER, operator_jwt_secret="")
    key = new_key("EdDSA")
    with serve_jwks(Jwks([key])) as jwks:
        fetcher = JwksKeys(jwks.url, refetch_min_s=0.0, timeout_s=1.0)
        operators = await nursery.start(Operators(settings, jwks=fetcher).run)
    # The server is gone: a refetch fails, the keys it had stay.
    with trio.fail_after(10):
        await fetcher.refetch()
    assert fetcher.failures == 1 and list(fetcher.known()) == [key.kid]
    caller = await operators.identify(key.sign({**claims(now=time.time()), "iss": ISSUER}))
    assert caller.roles == {"operator"}


async def test_no_keys_ever_fetched_is_a_503(nursery):
    settings = make_settings(operator_issuer=ISSUER, operator_jwt_secret="")
    key = new_key("ES256")
    with serve_jwks(Jwks([key], status=500)) as jwks, trio.fail_after(20):
        operators = await nursery.start(
            Operators(settings, jwks=JwksKeys(jwks.url, refetch_min_s=0.0)).run)
        with pytest.raises(BackendUnavailable) as caught:
            await operators.identify(key.sign({**claims(now=time.time()), "iss": ISSUER}))
        assert caught.value.status == 503 and "identity provider" in caught.value.detail
        assert jwks.url not in caught.value.detail


async def test_a_slow_issuer_does_not_hold_the_start_or_a_request(nursery):
    key = new_key("ES256")
    with serve_jwks(Jwks([key], delay_s=8.0)) as jwks, trio.fail_after(20):
        fetcher = JwksKeys(jwks.url, timeout_s=2.0)
        started = trio.current_time()
        await nursery.start(fetcher.run)
        assert trio.current_time() - started <= START_WAIT_S + 0.5
        started = trio.current_time()
        await fetcher.refetch()                         # under way: waited for, bounded
        assert trio.current_time() - started <= 2.5
        assert fetcher.known() == {} and fetcher.failures == 1


async def test_a_huge_jwks_is_cut_off_unread(nursery):
    huge = b'{"keys": [' + b" " * (10 * 1024 * 1024) + b"]}"
    with serve_jwks(Jwks(body=huge)) as jwks, trio.fail_after(20):
        fetcher = JwksKeys(jwks.url)
        await nursery.start(fetcher.run)
        assert fetcher.known() == {} and fetcher.failures == 1


# -- the API: (O) endpoints ------------------------------------------------------------------------

@pytest.mark.parametrize("method, path, body, role", OPERATOR_ENDPOINTS)
async def test_every_operator_endpoint_refuses_whoever_lacks_its_role(
        autojump_clock, nursery, method, path, body, role):
    services = await serve(nursery)
    kwargs = {} if body is None else {"json": body}
    other = "guardian" if role == "operator" else "operator"
    async with client(services) as c:
        session = await activate(c)
        r = await c.request(method, path, **kwargs)
        assert_error(r, 401, "operator_token_required")
        assert r.headers["www-authenticate"].startswith("Bearer")
        # A viewer's session is not enough (the issue's finding: it was).
        assert_error(await c.request(method, path, headers=session, **kwargs), 401,
                     "operator_token_required")
        for bad in ("garbage", token(secret="another-secret-of-forty-characters-long!!"),
                    token(ttl_s=-3600)):
            r = await c.request(method, path, headers={"Authorization": f"Bearer {bad}"}, **kwargs)
            assert_error(r, 401, "operator_token_invalid")
            assert 'error="invalid_token"' in r.headers["www-authenticate"]
        for roles in (None, [], [other]):
            error = assert_error(await c.request(method, path, headers=bearer(roles), **kwargs),
                                 403, "role_required")
            assert role in error["detail"]
        r = await c.request(method, path, headers=bearer([role]), **kwargs)
        assert r.status_code < 300, r.text
    assert await services.store.events("dispersal") == [] or path.endswith("disperse")


@pytest.mark.parametrize("method, path, body", SESSION_ENDPOINTS)
async def test_session_endpoints_take_a_session_or_a_token(autojump_clock, nursery, method, path,
                                                           body):
    services = await serve(nursery)
    kwargs = {} if body is None else {"json": body}
    async with client(services) as c:
        if method != "DELETE":
            # Any token the issuer vouches for may watch, with or without a role.
            for roles in (BOTH, None):
                r = await c.request(method, path, headers=bearer(roles), **kwargs)
                assert r.status_code == 200, r.text
        else:   # a token has no session to revoke
            assert_error(await c.request(method, path, headers=bearer(), **kwargs), 401,
                         "sceau_session_required")
        r = await c.request(method, path, headers={"Authorization": "Bearer garbage"}, **kwargs)
        assert_error(r, 401, "operator_token_invalid")
        r = await c.request(method, path, headers=await activate(c), **kwargs)
        assert r.status_code in (200, 204)


async def test_the_commands_record_the_role_and_pseudonym_never_the_person(autojump_clock, nursery):
    services = await serve(nursery)
    async with client(services) as c:
        r = await c.post("/api/v1/swarm/disperse", json={"level": "partial"},
                         headers=bearer(subject="alice", phone="+15555550111"))
        assert r.status_code == 202
        await trio.sleep(0.2)
    [record] = await services.store.events("dispersal")
    expected = pseudonym(derive_key(services.settings.secret_key, "audit-pseudonym"), "", "alice")
    assert (record.role, record.operator) == ("operator", expected)
    assert "alice" not in repr(record) and "5555550111" not in repr(record)


# -- the reset: a guardian's act -------------------------------------------------------------------

async def test_a_reset_below_the_required_assurance_is_refused(autojump_clock, nursery):
    services = await serve(nursery, safeguard_reset_aal="aal2")
    services.safeguard.trip("overload", "test")
    async with client(services) as c:
        assert_error(await c.post("/api/v1/safeguard/reset", headers=bearer(["guardian"])), 403,
                     "mfa_required")
        assert services.safeguard.state == "open"
        r = await c.post("/api/v1/safeguard/reset", headers=bearer(["guardian"], aal="aal2"))
        assert r.status_code == 200 and r.json()["state"] == "closed"


async def test_a_quorum_of_distinct_guardians_closes_it(autojump_clock, nursery):
    services = await serve(nursery, safeguard_reset_quorum=2)
    services.safeguard.trip("overload", "test")
    alice, bob = bearer(["guardian"], subject="alice"), bearer(["guardian"], subject="bob")
    async with client(services) as c:
        for again in range(2):                      # the same guardian twice counts once
            r = await c.post("/api/v1/safeguard/reset", headers=alice)
            assert r.status_code == 202, r.text
            assert r.json() == {"state": "open", "approvals": 1, "needed": 2,
                                "expires_in_s": 60.0}
        await trio.sleep(61)                        # alice's approval no longer counts
        r = await c.post("/api/v1/safeguard/reset", headers=bob)
        assert r.status_code == 202 and r.json()["approvals"] == 1
        assert services.safeguard.state != "closed"
        r = await c.post("/api/v1/safeguard/reset", headers=alice)
        assert r.status_code == 200 and r.json()["state"] == "closed"
    await trio.sleep(0.5)
    [closing] = [e for e in await services.store.events("safeguard")
                 if e.payload["trigger"] == "reset"]
    key = derive_key(services.settings.secret_key, "audit-pseudonym")
    assert closing.role == "guardian" and closing.operator == pseudonym(key, "", "alice")
    assert closing.payload["guardians"] == [pseudonym(key, "", "alice"), pseudonym(key, "", "bob")]


async def test_two_api_processes_on_redis_count_one_quorum(nursery, redis_server):
    from .test_app import serving
    settings = make_settings(redis_url=redis_server.url, secret_key="s" * 40, api_port=0,
                             ws_port=0, safeguard_reset_quorum=2)
    with trio.fail_after(60):
        await serving(nursery, settings, role="engine")
        first = await serving(nursery, settings, role="api")
        second = await serving(nursery, settings, role="api")
        first.safeguard.trip("rate", "test")
        while second.safeguard.state != "open":
            await trio.sleep(0.02)
        alice, bob = bearer(["guardian"], subject="alice"), bearer(["guardian"], subject="bob")
        async with httpx.AsyncClient(base_url=first.api_url) as one, \
                httpx.AsyncClient(base_url=second.api_url) as two:
            assert (await one.post("/api/v1/safeguard/reset", headers=alice)).status_code == 202
            r = await two.post("/api/v1/safeguard/reset", headers=alice)   # elsewhere: still one
            assert r.status_code == 202 and r.json()["approvals"] == 1
            r = await two.post("/api/v1/safeguard/reset", headers=bob)
            assert r.status_code == 200 and r.json()["state"] == "closed"
        while first.safeguard.state != "closed":
            await trio.sleep(0.02)


# -- what a deployment starts with -----------------------------------------------------------------

async def run_atom(env: dict[str, str], until: bytes, *args: str) -> tuple[trio.Process, bytes]:
    proc = await trio.lowlevel.open_process([sys.executable, "-m", "atom_actors", "serve", *args],
                                            env=env, stderr=subprocess.PIPE)
    seen = b""
    with trio.fail_after(60):
        while until not in seen:
            chunk = await proc.stderr.receive_some()
            assert chunk, seen
            seen += chunk
        while b"\n" not in seen.split(until, 1)[1]:
            seen += await proc.stderr.receive_some()
    return proc, seen


async def test_atom_serve_alone_prints_an_operator_link_that_commands(tmp_path):
    env = atom_env(OPERATOR_JWT_SECRET="", API_HOST="127.0.0.1")
    proc, seen = await run_atom(env, b"#operator=")
    try:
        line = [ln for ln in seen.decode().splitlines() if "#operator=" in ln][0]
        url, tok = line.rsplit(": ", 1)[1].split("#operator=")
        assert url.startswith("http://127.0.0.1:") and url.endswith("/")
        async with httpx.AsyncClient(base_url=url) as http:
            assert_error(await http.post("/api/v1/swarm/regroup"), 401, "operator_token_required")
            r = await http.post("/api/v1/swarm/regroup", headers={"Authorization": f"Bearer {tok}"})
            assert r.status_code == 202
            r = await http.get("/api/v1/audit", headers={"Authorization": f"Bearer {tok}"})
            assert r.status_code == 200 and r.json()["records"][0]["role"] == "operator"
            # Tokens of anyone else (the tests' secret) are not this process's.
            assert_error(await http.post("/api/v1/swarm/regroup", headers=bearer()), 401,
                         "operator_token_invalid")
    finally:
        proc.kill()
        await proc.wait()


async def test_a_deployment_without_operator_settings_is_view_only(tmp_path, redis_server):
    env = atom_env(OPERATOR_JWT_SECRET="", REDIS_URL=redis_server.url)
    proc, seen = await run_atom(env, b"atom: serving: ")
    try:
        assert b"view-only" in seen and b"#operator=" not in seen
        api = seen.decode().split("api ", 1)[1].split(",")[0].split()[0]
        async with httpx.AsyncClient(base_url=api) as http:
            error = assert_error(await http.post("/api/v1/swarm/regroup", headers=bearer()), 401,
                                 "operator_token_invalid")
            assert "view-only" in error["detail"]
    finally:
        proc.kill()
        await proc.wait()


def test_operator_token_signs_with_the_shared_secret(tmp_path):
    base = atom_env(OPERATOR_ISSUER=ISSUER, OPERATOR_ROLES_CLAIM="app_metadata.roles")
    cmd = [sys.executable, "-m", "atom_actors", "operator-token"]
    done = subprocess.run([*cmd, "--role", "guardian,operator", "--ttl", "15m", "--subject",
                           "ops-script", "--aal", "aal2"], env=base, capture_output=True,
                          text=True, cwd=tmp_path, timeout=60)
    assert done.returncode == 0, done.stderr
    policy = Policy(ISSUER, AUDIENCE, ("app_metadata", "roles"), POLICY.pseudonym_key)
    caller = verify(done.stdout.strip(), SECRET_KEYS, time.time(), policy)
    assert caller.roles == {"operator", "guardian"} and caller.aal == "aal2"
    payload = jwt.decode(done.stdout.strip(), options={"verify_signature": False})
    assert 899 <= payload["exp"] - payload["iat"] <= 900
    missing = subprocess.run([*cmd, "--role", "operator"], env={**base, "OPERATOR_JWT_SECRET": ""},
                             capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert missing.returncode == 2 and "OPERATOR_JWT_SECRET is not set" in missing.stderr
    bad = subprocess.run([*cmd, "--role", "admin"], env=base, capture_output=True, text=True,
                         cwd=tmp_path, timeout=60)
    assert bad.returncode == 2 and "roles are operator, guardian" in bad.stderr


@pytest.mark.parametrize("env, setting", [
    ({"OPERATOR_JWT_SECRET": "short"}, "OPERATOR_JWT_SECRET"),
    ({"OPERATOR_JWKS_URL": "https://keys.example/jwks.json"}, "OPERATOR_JWKS_URL"),
    ({"OPERATOR_ISSUER": "i", "OPERATOR_JWKS_URL": "ftp://keys.example"}, "OPERATOR_JWKS_URL"),
    ({"SAFEGUARD_RESET_QUORUM": "0"}, "SAFEGUARD_RESET_QUORUM"),
    ({"SAFEGUARD_RESET_AAL": "aal3"}, "SAFEGUARD_RESET_AAL"),
    ({"OPERATOR_ROLES_CLAIM": "app_metadata..roles"}, "OPERATOR_ROLES_CLAIM"),
])
def test_a_bad_operator_setting_is_one_line_at_start(tmp_path, env, setting):
    done = subprocess.run([sys.executable, "-m", "atom_actors", "serve"],
                          env=atom_env(**env), capture_output=True, text=True, cwd=tmp_path,
                          timeout=60)
    assert done.returncode == 2
    assert done.stderr.startswith(f"atom: bad setting {setting}: ")
    assert len(done.stderr.strip().splitlines()) == 1 and "short" not in done.stderr


async def test_the_docs_page_says_who_may_call_each_endpoint(autojump_clock, nursery):
    services = await serve(nursery)
    async with client(services) as c:
        page = (await c.get("/docs")).text
    assert "<code>/api/v1/swarm/disperse</code> (O)" in page and "Role: operator" in page
    assert "<code>/api/v1/safeguard/reset</code> (O)" in page and "Role: guardian" in page
    assert "<code>/api/v1/swarm</code> (S)" in page
