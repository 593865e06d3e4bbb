"""The coordinator's contract, on both implementations: the memory one and Redis (the shared
server, a namespace per test). Real time, each test bounded by ``trio.fail_after``; the
failover logic over the memory one runs on virtual time in ``test_cluster``."""

from __future__ import annotations

import os
import signal
import time

import pytest
import redis
import trio

from atom_actors.coordinator import RESYNC, Coordinator, MemoryCoordinator
from atom_actors.coordinator.redis import RedisCoordinator
from atom_actors.errors import BackendUnavailable
from atom_actors.redislink import POOL_MAX
from atom_actors.store import SessionRecord

from .servers import SHARED_REDIS, RedisServer, free_port


@pytest.fixture(params=["memory", "redis"])
async def pair(request, nursery) -> tuple[Coordinator, Coordinator]:
    """Two processes' coordinators of one deployment."""
    if request.param == "memory":
        first = MemoryCoordinator()
        return first, MemoryCoordinator(first.shared)
    namespace = request.getfixturevalue("redis_namespace")
    pair = [await nursery.start(RedisCoordinator(SHARED_REDIS, namespace=namespace).run)
            for _ in range(2)]
    for coordinator in pair:
        if not coordinator.up:
            with trio.fail_after(5):
                await coordinator.subscribed.wait()
    return pair[0], pair[1]


async def test_commands_are_redelivered_until_a_checkpoint_acknowledges_them(pair):
    a, b = pair
    heard: list[bytes] = []
    b.summary_listeners.append(heard.append)
    with trio.fail_after(10):
        await a.add_command({"kind": "regroup", "command_id": "c-before-any-engine"})
        await a.ensure_group()
        await a.add_command({"kind": "retune", "agent": 1, "frequency": 500.0, "command_id": "c2"})
        first = await a.read_commands("engine-a", block_s=0.1)
        assert [c["command_id"] for _, c in first] == ["c-before-any-engine", "c2"]
        assert await a.read_commands("engine-a", block_s=0.1) == []
        # engine-a dies without a checkpoint: engine-b, the new leader, claims both.
        epoch = await b.lease_acquire("engine-b", 5.0)
        assert epoch == 1
        claimed = await b.claim_commands("engine-b")
        assert [e for e, _ in claimed] == [e for e, _ in first]
        assert await b.checkpoint("engine-b", b"state", b"summary", 1000,
                                  [(first[0][0], "c-before-any-engine"), (first[1][0], "c2")], 5.0,
                                  epoch=epoch)
        assert await b.claim_commands("engine-c") == []
        assert await a.applied(["c2", "c9"]) == {"c2"}
        assert await a.applied_log() == ["c-before-any-engine", "c2"]
        assert await a.load_checkpoint() == b"state"
        assert await a.load_summary() == b"summary"
        while heard != [b"summary"]:      # every process hears of each summary
            await trio.sleep(0.01)


async def test_a_checkpoint_without_the_lease_writes_nothing(pair):
    a, b = pair
    with trio.fail_after(10):
        await a.ensure_group()
        entry = await a.add_command({"kind": "regroup", "command_id": "c1"})
        await a.read_commands("old-leader", block_s=0.1)
        assert await b.lease_acquire("new-leader", 5.0)
        assert not await a.checkpoint("old-leader", b"stale", b"stale", 1000, [(entry, "c1")], 5.0,
                                      epoch=1)
        assert await a.load_checkpoint() is None
        assert [e for e, _ in await b.claim_commands("new-leader")] == [entry]


async def test_the_lease_has_one_holder(pair):
    a, b = pair
    with trio.fail_after(10):
        epoch = await a.lease_acquire("a", 5.0)
        assert epoch == 1
        assert not await b.lease_acquire("b", 5.0)
        assert await a.lease_renew("a", 5.0, epoch) == 1
        assert await b.lease_renew("b", 5.0, epoch) == 0
        await b.lease_release("b")                 # not b's: nothing happens
        assert await b.lease_holder() == "a"
        await a.lease_release("a")
        assert await b.lease_holder() is None
        assert await a.lease_renew("a", 5.0, epoch) == 2  # vanished (a Redis restart): taken back
        assert await b.lease_holder() == "a"


async def test_an_old_leaders_writes_are_refused_once_a_newer_epoch_exists(pair):
    """Fencing: the old leader's lease key is gone (expired, or lost in a failover) and a new
    leader took epoch 2, whose key is gone too: the old one (epoch 1) may neither renew, nor
    checkpoint (state, acknowledgements, applied ids, events), though no key says it is not the
    holder; the newer leader may."""
    a, b = pair
    announced: list[list[dict]] = []
    if isinstance(a, MemoryCoordinator):
        a.shared.announce = announced.append
    with trio.fail_after(10):
        await a.ensure_group()
        entry = await a.add_command({"kind": "regroup", "command_id": "c1"})
        await a.read_commands("old", block_s=0.1)
        old = await a.lease_acquire("old", 5.0)
        await a.lease_release("old")                  # as the key lost in a failover
        new = await b.lease_acquire("new", 5.0)
        assert (old, new) == (1, 2)
        await b.lease_release("new")
        assert await a.lease_renew("old", 5.0, old) == 0
        assert not await a.checkpoint("old", b"stale", b"stale", 1000, [(entry, "c1")], 5.0,
                                      epoch=old, events=[{"event": "swarm.regroup",
                                                          "command_id": "c1"}])
        assert await a.load_checkpoint() is None and await a.applied(["c1"]) == set()
        assert await a.lease_holder() is None and announced == []
        assert await b.checkpoint("new", b"state", b"summary", 1000, [(entry, "c1")], 5.0,
                                  epoch=new)
        assert await a.applied(["c1"]) == {"c1"}


async def test_the_epoch_only_grows_even_where_the_counter_was_lost(pair):
    """Each acquisition is one above the last handed out, the last checkpoint's and the
    caller's own: a Redis that came back without the counter, or with a checkpoint only, never
    hands an epoch out twice."""
    a, b = pair
    with trio.fail_after(10):
        assert await a.lease_acquire("a", 5.0) == 1
        assert await a.checkpoint("a", b"s", b"s", 1000, [], 5.0, epoch=1)
        await a.lease_release("a")
        assert await b.lease_acquire("b", 5.0, known_epoch=7) == 8
        await b.lease_release("b")
        assert await a.epoch() == 8
        # The counter lost (a primary that came back empty but for the checkpoint's epoch).
        if isinstance(a, MemoryCoordinator):
            a.shared.epoch = 0
        else:
            with redis.Redis.from_url(SHARED_REDIS) as raw:
                raw.delete(a.keys.epoch)
        assert await a.lease_acquire("a", 5.0) == 2           # above the checkpoint's 1
        await a.lease_release("a")
        assert await b.lease_acquire("b", 5.0, known_epoch=8) == 9   # above b's own 8


async def test_sessions_are_shared_and_a_revocation_reaches_every_process(pair):
    a, b = pair
    record = SessionRecord(id="ab" * 32, created_at=1e9, expires_at=4e9, frequency=999.0)
    with trio.fail_after(5), b.subscribe_revocations() as revocations:
        await a.save_session(record)
        assert await b.get_session(record.id) == record
        assert await b.get_session("cd" * 32) is None
        assert await b.revoke_session("cd" * 32) is False
        assert await a.revoke_session(record.id) is True
        assert (await b.get_session(record.id)).revoked
        assert await revocations.receive() == record.id


async def test_a_session_is_forgotten_when_it_expires(nursery, redis_namespace):
    """Redis keeps a session's hash until its expiry, no longer (PEXPIREAT)."""
    coordinator = await nursery.start(RedisCoordinator(SHARED_REDIS, namespace=redis_namespace).run)
    with trio.fail_after(10):
        soon = SessionRecord(id="ef" * 32, created_at=time.time(), expires_at=time.time() + 0.3,
                             frequency=999.0)
        await coordinator.save_session(soon)
        assert await coordinator.get_session(soon.id) == soon
        await trio.sleep(0.5)
        assert await coordinator.get_session(soon.id) is None


async def test_the_breaker_state_is_swapped_only_over_the_version_read(pair):
    a, b = pair
    with trio.fail_after(10):
        assert await a.load_breaker() == (0, None)
        assert await a.swap_breaker(0, b"one")
        assert not await b.swap_breaker(0, b"two")       # b read version 0 too late
        assert await b.load_breaker() == (1, b"one")
        assert await b.swap_breaker(1, b"two")
        assert await a.load_breaker() == (2, b"two")


async def test_the_audit_head_only_moves_forward(pair):
    """Two processes report their records' links out of order: the newest record's stays."""
    a, b = pair
    with trio.fail_after(10):
        assert await a.audit_head() is None
        await a.advance_audit_head(7, b"\x07" * 32)
        await b.advance_audit_head(9, b"\x09" * 32)
        await a.advance_audit_head(8, b"\x08" * 32)     # reported after 9's: left behind
        assert await a.audit_head() == await b.audit_head() == (9, b"\x09" * 32)


async def test_subscribers_are_summed_over_the_processes_that_still_speak(pair):
    a, b = pair
    with trio.fail_after(10):
        await a.set_subscribers("ws-1", 3, 5.0)
        await b.set_subscribers("ws-2", 4, 0.2)
        assert await a.total_subscribers() == 7
        await trio.sleep(0.3)
        assert await a.total_subscribers() == 3


async def test_a_call_while_redis_is_down_fails_at_once():
    async with trio.open_nursery() as nursery:
        coordinator = await nursery.start(
            RedisCoordinator(f"redis://127.0.0.1:{free_port()}/0").run)
        start = trio.current_time()
        with trio.fail_after(5):
            with pytest.raises(BackendUnavailable) as caught:
                await coordinator.add_command({"kind": "regroup", "command_id": "x"})
        assert caught.value.status == 503 and caught.value.backend == "redis"
        assert trio.current_time() - start < 0.5
        nursery.cancel_scope.cancel()


async def test_a_reconnected_subscription_asks_the_readers_to_resync(nursery, redis_server):
    """Revocations published while a process was cut off from Redis never reach it: once it
    subscribes again, its readers hear RESYNC and check every session they hold."""
    coordinator = await nursery.start(RedisCoordinator(redis_server.url).run)
    with trio.fail_after(30), coordinator.subscribe_revocations() as revocations:
        if not coordinator.up:
            await coordinator.subscribed.wait()
        await redis_server.astop()
        await redis_server.astart()
        assert await revocations.receive() == RESYNC


async def test_a_burst_of_calls_waits_for_a_few_connections_and_every_one_is_answered(
        nursery, redis_server):
    """A ws process checks a burst of handshakes' sessions at once while Redis is slow: the calls
    share the client's few connections, waiting for a free one, and every one is answered once
    Redis is. (redis-py's default pool opened a connection per concurrent call: a hundred at once,
    which on a loaded machine timed out, and beyond 100 "Too many connections" at once: a 503 for
    a good client.)"""
    coordinator = await nursery.start(
        RedisCoordinator(redis_server.url, summaries=False, revocations=False).run)
    record = SessionRecord(id="ab" * 32, created_at=1e9, expires_at=4e9, frequency=999.0)
    with trio.fail_after(10):
        await coordinator.save_session(record)
        answers = []

        async def check() -> None:
            answers.append(await coordinator.get_session(record.id))

        os.kill(redis_server.proc.pid, signal.SIGSTOP)      # slow for real: it answers later
        try:
            async with trio.open_nursery() as calls:
                for _ in range(150):
                    calls.start_soon(check)
                await trio.sleep(0.3)
                os.kill(redis_server.proc.pid, signal.SIGCONT)
        finally:
            os.kill(redis_server.proc.pid, signal.SIGCONT)
        assert answers == [record] * 150
        info = await trio.to_thread.run_sync(
            lambda: redis.Redis.from_url(redis_server.url).info("clients"))
        assert info["connected_clients"] <= POOL_MAX + 1      # + the one asking


async def _replicating(primary: RedisServer, replica: RedisServer) -> None:
    with redis.Redis(port=replica.port) as raw:
        while raw.info("replication").get("master_link_status") != "up":
            await trio.sleep(0.05)
    with redis.Redis(port=primary.port) as raw:
        while raw.info("replication").get("connected_slaves", 0) < 1:
            await trio.sleep(0.05)


async def test_a_promoted_replica_never_hands_out_an_epoch_already_used(nursery):
    """The epoch is confirmed by the replica (WAIT) before its holder may lead: after kill -9 of
    the primary and the replica's promotion, the next epoch is above it. A replica that does
    not confirm (stopped) makes the acquisition give the lease back."""
    primary = RedisServer().start()
    replica = RedisServer(args=("--replicaof", "127.0.0.1", str(primary.port))).start()
    try:
        with trio.fail_after(20):
            await _replicating(primary, replica)
            old = await nursery.start(RedisCoordinator(primary.url, summaries=False,
                                                       revocations=False).run)
            assert await old.lease_acquire("old", 5.0) == 1
            # An API's readiness: a write acknowledged by REDIS_MIN_ACKS replicas.
            api = await nursery.start(RedisCoordinator(primary.url, summaries=False,
                                                       revocations=False, min_acks=1).run)
            await api.probe_write()
            os.kill(replica.proc.pid, signal.SIGSTOP)
            try:
                with pytest.raises(BackendUnavailable, match="0 of 1 replicas"):
                    await api.probe_write()
                start = time.monotonic()
                assert await old.lease_acquire("other", 5.0) == 0    # held by "old"
                await old.lease_release("old")
                assert await old.lease_acquire("unconfirmed", 5.0) == 0
                assert time.monotonic() - start < 2.0              # WAIT is bounded
                assert await old.lease_holder() is None            # given back
            finally:
                os.kill(replica.proc.pid, signal.SIGCONT)
            primary.kill()
            with redis.Redis(port=replica.port) as raw:
                raw.replicaof("NO", "ONE")
            new = await nursery.start(RedisCoordinator(replica.url, summaries=False,
                                                       revocations=False).run)
            # Above the confirmed 1: 2 was handed out unconfirmed (and never led), so the
            # replica may or may not have had it when the primary died.
            assert await new.lease_acquire("new", 5.0) in (2, 3)
    finally:
        replica.kill()
        primary.kill()


async def test_an_idempotency_key_runs_once_then_replays_its_first_answer(pair):
    from atom_actors.coordinator import BUSY, MISMATCH, REPLAY, RUN, Claim

    first, second = pair
    with trio.fail_after(10):
        assert await first.idempotency_claim("r1", "fp", "cmd-a", 600, 5) == Claim(RUN, "cmd-a")
        # Another process, while the first runs it: busy, nothing run twice.
        busy = await second.idempotency_claim("r1", "fp", "cmd-b", 600, 5)
        assert (busy.state, busy.command_id) == (BUSY, "cmd-a")
        assert (await second.idempotency_claim("r1", "other", "cmd-b", 600, 5)).state == MISMATCH
        kept = await first.idempotency_answer("r1", "fp", "cmd-a", 202, b'{"n":1}', 600)
        assert (kept.state, kept.status, kept.body) == (REPLAY, 202, b'{"n":1}')
        # A second answer (a concurrent retry finishing later) never replaces the first.
        again = await second.idempotency_answer("r1", "fp", "cmd-a", 202, b'{"n":2}', 600)
        assert (again.status, again.body) == (202, b'{"n":1}')
        replay = await second.idempotency_claim("r1", "fp", "cmd-c", 600, 5)
        assert replay == Claim(REPLAY, "cmd-a", 202, b'{"n":1}')
        # Scopes are the records' ids: another record is another key.
        assert (await second.idempotency_claim("r2", "fp", "cmd-d", 600, 5)).state == RUN


async def test_a_released_or_abandoned_key_runs_again_with_its_first_command_id(pair):
    """A command whose outcome is unknown (503) is released: the retry gets the same command id,
    which the engine applies at most once. A holder that died is given up after ``hold_s``."""
    from atom_actors.coordinator import BUSY, RUN, Claim

    first, second = pair
    with trio.fail_after(10):
        assert (await first.idempotency_claim("r", "fp", "cmd-a", 600, 5)).state == RUN
        await first.idempotency_release("r")
        assert await second.idempotency_claim("r", "fp", "cmd-b", 600, 0.2) == Claim(RUN, "cmd-a")
        assert (await first.idempotency_claim("r", "fp", "cmd-c", 600, 0.2)).state == BUSY
        await trio.sleep(0.3)    # the holder (second) went silent: its hold lapses (Redis's clock)
        assert await first.idempotency_claim("r", "fp", "cmd-c", 600, 5) == Claim(RUN, "cmd-a")


async def test_an_idempotency_record_expires_after_its_ttl(pair):
    from atom_actors.coordinator import RUN, Claim

    first, _ = pair
    with trio.fail_after(10):
        await first.idempotency_claim("r", "fp", "cmd-a", 0.2, 5)
        await first.idempotency_answer("r", "fp", "cmd-a", 202, b"{}", 0.2)
        await trio.sleep(0.3)
        assert await first.idempotency_claim("r", "fp", "cmd-b", 600, 5) == Claim(RUN, "cmd-b")


# -- REDIS_MIN_ACKS: a command's entry acknowledged by replicas (a Sentinel deployment) ----------

async def stream_length(node, key: str) -> int:
    return await trio.to_thread.run_sync(lambda: node.client().xlen(key))


async def test_a_command_returns_once_a_replica_has_its_entry(nursery, sentinel_cluster):
    coordinator = await nursery.start(RedisCoordinator(
        sentinel_cluster.url, summaries=False, revocations=False, min_acks=2).run)
    with trio.fail_after(10):
        entry = await coordinator.add_command({"kind": "regroup", "command_id": "c1"})
    for replica in sentinel_cluster.replicas:     # both have it, the moment add_command returned
        with replica.client() as c:
            assert [e[0].decode() for e in c.xrange(coordinator.keys.commands)] == [entry]


async def test_a_replica_that_stops_acknowledging_makes_commands_unconfirmed_within_the_bound(
        nursery, sentinel_cluster):
    """REDIS_MIN_ACKS=2 and one replica hung (SIGSTOP): every command is CommandUnconfirmed (503,
    outcome unknown) within WAIT's bound; none returns as if accepted. The entries are in the
    primary's stream all the same (WAIT does not undo a write): hence "unknown"."""
    from atom_actors.errors import CommandUnconfirmed

    coordinator = await nursery.start(RedisCoordinator(
        sentinel_cluster.url, summaries=False, revocations=False, min_acks=2).run)
    with trio.fail_after(10):
        await coordinator.ping()
    hung = sentinel_cluster.replicas[0]
    hung.pause()
    try:
        for i in range(5):
            started = trio.current_time()
            with pytest.raises(CommandUnconfirmed) as caught:
                await coordinator.add_command({"kind": "regroup", "command_id": f"u{i}"})
            took = trio.current_time() - started
            assert coordinator.ack_timeout_s <= took < coordinator.ack_timeout_s + 0.5
            assert caught.value.status == 503 and caught.value.code == "backend_unavailable"
            assert "outcome is unknown" in caught.value.detail
            assert "Idempotency-Key" in caught.value.detail
    finally:
        hung.resume()
    assert await stream_length(sentinel_cluster.primary, coordinator.keys.commands) == 5
    with trio.fail_after(10):   # acknowledged again once the replica catches up
        await coordinator.add_command({"kind": "regroup", "command_id": "ok"})


async def test_a_command_while_redis_is_unreachable_is_unconfirmed(nursery):
    from atom_actors.errors import CommandUnconfirmed

    coordinator = await nursery.start(RedisCoordinator(
        f"redis://127.0.0.1:{free_port()}/0", summaries=False, revocations=False).run)
    with trio.fail_after(5), pytest.raises(CommandUnconfirmed):
        await coordinator.add_command({"kind": "regroup", "command_id": "x"})
