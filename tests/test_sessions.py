from __future__ import annotations

import pytest
import trio

from atom_actors.coordinator import MemoryCoordinator
from atom_actors.errors import BackendUnavailable, SceauTooShort, SessionInvalid, SessionRequired
from atom_actors.sessions import SessionService, token_hash
from atom_actors.store import MemoryStore


def service(coordinator=None, key="k" * 40, ttl=60.0, store=None) -> SessionService:
    return SessionService(coordinator or MemoryCoordinator(), key, store=store,
                          sceau_duration_ms=2000, ttl_s=ttl, frequency=999.0)


async def test_activate_and_verify(autojump_clock):
    sessions = service()
    session = await sessions.activate(2000)
    assert (await sessions.verify(session.token)).id == session.id
    assert session.frequency == 999.0


async def test_token_has_at_least_128_bits_of_randomness_and_only_its_hash_is_kept(
        autojump_clock, nursery):
    coordinator, store = MemoryCoordinator(), MemoryStore()
    sessions = await nursery.start(service(coordinator, store=store).run)
    tokens = {(await sessions.activate(2500)).token for _ in range(50)}
    assert len(tokens) == 50
    nonce = next(iter(tokens)).split(".")[1]
    assert len(nonce) * 6 >= 256
    while sessions.durable_pending:
        await trio.sleep(0.01)
    for token in tokens:
        for keeper in (coordinator, store):
            record = await keeper.get_session(token_hash(token))
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
    coordinator = MemoryCoordinator()
    token = (await service(coordinator, key="a" * 40).activate(2000)).token
    with pytest.raises(SessionInvalid):
        await service(coordinator, key="b" * 40).verify(token)


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


async def test_a_session_the_coordinator_lost_is_recalled_from_the_store(autojump_clock, nursery):
    """Redis restarted empty: the durable record answers, and the session is live again there."""
    store = MemoryStore()
    first = await nursery.start(service(store=store).run)
    kept, revoked = (await first.activate(2000)).token, (await first.activate(2000)).token
    await first.revoke(revoked)
    while first.durable_pending:
        await trio.sleep(0.01)
    fresh = MemoryCoordinator()
    second = service(fresh, store=store)
    assert (await second.verify(kept)).id == token_hash(kept)
    assert await fresh.get_session(token_hash(kept)) is not None
    with pytest.raises(SessionInvalid, match="revoked"):
        await second.verify(revoked)


async def test_sessions_work_while_the_store_is_down_and_are_recorded_when_it_returns(
        autojump_clock, nursery):
    store = DownStore()
    sessions = await nursery.start(service(store=store).run)
    token = (await sessions.activate(2000)).token
    await sessions.verify(token)                  # no store round trip: it is down
    await sessions.revoke(token)
    await trio.sleep(5.0)
    assert sessions.durable_pending == 2 and await MemoryStore.get_session(store, token_hash(token)) is None
    store.down = False
    while sessions.durable_pending:
        await trio.sleep(0.1)
    assert (await store.get_session(token_hash(token))).revoked


class DownStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.down = True

    async def save_session(self, record) -> None:
        self._check()
        await super().save_session(record)

    async def revoke_session(self, session_id: str) -> bool:
        self._check()
        return await super().revoke_session(session_id)

    def _check(self) -> None:
        if self.down:
            raise BackendUnavailable("postgresql", "down for the test")
