"""The Redis link on a Sentinel deployment (tests/sentinel.py): the primary found through the
sentinels, followed across a failover (kill -9, and a graceful one that leaves the old primary
up as a replica), every call bounded. Real servers, real time, each test bounded."""

from __future__ import annotations

import pytest
import trio
from redis.asyncio import BlockingConnectionPool
from redis.asyncio.sentinel import SentinelConnectionPool

from atom_actors.bus.redis import RedisBus
from atom_actors.coordinator.redis import RedisCoordinator
from atom_actors.errors import BackendUnavailable
from atom_actors.redislink import _BlockingSentinelPool

from .test_bus_redis import frame


def test_the_sentinel_pool_combines_redis_pys_two_pools_as_assumed():
    """_BlockingSentinelPool's docstring names what it relies on; an upgrade of redis-py that
    breaks it fails here, loudly."""
    shared = set(vars(SentinelConnectionPool)) & set(vars(BlockingConnectionPool))
    assert shared <= {"__abstractmethods__", "__doc__", "__init__", "__module__", "_abc_impl"}
    mro = _BlockingSentinelPool.__mro__
    assert mro.index(SentinelConnectionPool) < mro.index(BlockingConnectionPool)
    assert _BlockingSentinelPool.get_connection is BlockingConnectionPool.get_connection
    assert _BlockingSentinelPool.get_master_address is SentinelConnectionPool.get_master_address


async def until(check, timeout_s: float = 20.0, every_s: float = 0.1):
    """``await check()`` until it returns without BackendUnavailable; its result."""
    with trio.fail_after(timeout_s):
        while True:
            try:
                return await check()
            except BackendUnavailable:
                await trio.sleep(every_s)


async def test_the_coordinator_follows_a_killed_primary_and_reloads_its_scripts(
        nursery, sentinel_cluster):
    cluster = sentinel_cluster
    coordinator = await nursery.start(RedisCoordinator(cluster.url, summaries=False,
                                                       revocations=False).run)
    with trio.fail_after(10):
        epoch = await coordinator.lease_acquire("a", 30.0)
        assert epoch
        assert await coordinator.lease_renew("a", 30.0, epoch) == 1   # a script, loaded on the primary
    with cluster.primary.client() as c:
        assert c.execute_command("WAIT", 2, 2000) == 2
    old = cluster.primary
    await cluster.akill(old)
    new = await cluster.afailover(old)
    with new.client() as c:   # the promoted replica never saw the script loaded: NOSCRIPT first
        assert c.script_exists(coordinator.link.scripts["renew"].sha) == [False]
    assert await until(lambda: coordinator.lease_renew("a", 30.0, epoch)) == 1
    assert await coordinator.lease_holder() == "a"
    with new.client() as c:
        assert c.script_exists(coordinator.link.scripts["renew"].sha) == [True]
        assert c.get(coordinator.keys.lease) == b"a"


async def test_a_graceful_failover_moves_writes_to_the_new_primary(nursery, sentinel_cluster):
    """The old primary stays up as a replica: a connection still open to it gets READONLY (or is
    closed by the sentinels), and the next call writes on the new primary, never on the old."""
    cluster = sentinel_cluster
    coordinator = await nursery.start(RedisCoordinator(cluster.url, summaries=False,
                                                       revocations=False).run)
    with trio.fail_after(10):
        await coordinator.set_subscribers("p", 1, 60.0)
    old = cluster.primary
    with cluster.sentinels[0].client() as c:
        c.execute_command("SENTINEL", "FAILOVER", cluster.master)
    new = await cluster.afailover(old)
    # Until the old primary is told to replicate, it still takes writes (and loses them when it
    # resyncs): Redis's own window, which WAIT (REDIS_MIN_ACKS) narrows for commands.
    await cluster.await_demoted(old)
    await until(lambda: coordinator.set_subscribers("p", 2, 60.0))
    with new.client() as c:
        assert c.get(coordinator.keys.subscribers + "p") == b"2"
    assert old.running


async def test_the_subscription_comes_back_on_the_new_primary(nursery, sentinel_cluster):
    cluster = sentinel_cluster
    publisher = await nursery.start(RedisBus(cluster.url, frames=False, events=False).run)
    reader = await nursery.start(RedisBus(cluster.url).run)
    frames = reader.subscribe_frames()
    with trio.fail_after(10):
        await reader.subscribed.wait()
        publisher.publish_frame(frame(1))
        assert (await frames.receive()).seq == 1
    resubscribed = reader.subscribed
    old = cluster.primary
    await cluster.akill(old)
    await cluster.afailover(old)
    with trio.fail_after(20):
        await resubscribed.wait()
        seq = 2
        while True:   # frames are news: published again until one arrives
            publisher.publish_frame(frame(seq))
            with trio.move_on_after(0.2):
                if (await frames.receive()).seq >= 2:
                    break
            seq += 1


async def test_a_hung_primary_costs_each_call_its_bound_and_the_subscription_gives_up(
        nursery, sentinel_cluster):
    """SIGSTOP: sockets stay open and nothing answers. Each call fails within 2 × timeout_s (not
    redis-py's tens of seconds), and the silent subscription is abandoned and made again."""
    cluster = sentinel_cluster
    coordinator = await nursery.start(RedisCoordinator(cluster.url, revocations=False,
                                                       timeout_s=0.5).run)
    with trio.fail_after(10):
        await coordinator.subscribed.wait()
        await coordinator.ping()
    again = coordinator.subscribed
    old = cluster.primary
    old.pause()
    try:
        for _ in range(3):
            started = trio.current_time()
            with pytest.raises(BackendUnavailable):
                await coordinator.ping()
            assert trio.current_time() - started <= 1.0 + 0.3
            if cluster.primary_port() != old.port:
                break
        await cluster.afailover(old)
        with trio.fail_after(20):
            await again.wait()          # made again, on the new primary
        await until(coordinator.ping)
    finally:
        old.resume()
