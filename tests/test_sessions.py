from __future__ import annotations

import pytest
import trio

from atom_actors.errors import SceauTooShort, SessionInvalid, SessionRequired
from atom_actors.sessions import SessionService, token_hash
from atom_actors.store import MemoryStore


def service(store=None, key="k" * 40, ttl=60.0) -> SessionService:
    return SessionService(store or MemoryStore(), key, sceau_duration_ms=2000, ttl_s=ttl,
                          frequency=999.0)


async def test_activate_and_verify(autojump_clock):
    sessions = service()
    session = await sessions.activate(2000)
    assert (await sessions.verify(session.token)).id == session.id
    assert session.frequency == 999.0


async def test_token_has_at_least_128_bits_of_randomness_and_only_its_hash_is_stored(autojump_clock):
    store = MemoryStore()
    sessions = service(store)
    tokens = {(await sessions.activate(2500)).token for _ in range(50)}
    assert len(tokens) == 50
    nonce = next(iter(tokens)).split(".")[1]
    assert len(nonce) * 6 >= 256
    for token in tokens:
        record = await store.get_session(token_hash(token))
        assert record is not None and token not in repr(record)


async def test_too_short_a_touch_is_refused(autojump_clock):
    with pytest.raises(SceauTooShort):
        await service().activate(1999)


@pytest.mark.parametrize("token", [None, "", "   "])
async def test_missing_token(autojump_clock, token):
    with pytest.raises(SessionRequired):
        await service().verify(token)


async def test_tampered_token_is_invalid(autojump_clock):
    sessions = service()
    token = (await sessions.activate(2000)).token
    prefix, nonce, mac = token.split(".")
    flipped = nonce[:-1] + ("A" if nonce[-1] != "A" else "B")
    for bad in (f"{prefix}.{flipped}.{mac}", token + "x", "v2" + token[2:], "garbage"):
        with pytest.raises(SessionInvalid):
            await sessions.verify(bad)


async def test_token_signed_with_another_key_is_invalid(autojump_clock):
    store = MemoryStore()
    token = (await service(store, key="a" * 40).activate(2000)).token
    with pytest.raises(SessionInvalid):
        await service(store, key="b" * 40).verify(token)


async def test_session_expires_after_its_ttl(autojump_clock):
    sessions = service(ttl=60.0)
    token = (await sessions.activate(2000)).token
    await trio.sleep(59.0)
    await sessions.verify(token)
    await trio.sleep(1.0)
    with pytest.raises(SessionInvalid, match="expired"):
        await sessions.verify(token)


async def test_revoked_session_is_invalid(autojump_clock):
    sessions = service()
    token = (await sessions.activate(2000)).token
    await sessions.revoke(token)
    with pytest.raises(SessionInvalid, match="revoked"):
        await sessions.verify(token)
