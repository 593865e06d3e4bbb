"""The Sentinel fixture itself (``tests/sentinel.py``): what the failover tests rely on."""

from __future__ import annotations

import trio

from tests.sentinel import SentinelCluster


async def test_a_killed_primary_is_replaced_by_a_replica_with_its_data(sentinel_cluster):
    cluster: SentinelCluster = sentinel_cluster
    old = cluster.primary
    assert old is cluster.nodes[0] and len(cluster.replicas) == 2
    with old.client() as c:
        c.set("k", "v")
        assert c.execute_command("WAIT", 2, 2000) == 2
    started = trio.current_time()
    await cluster.akill(old)
    new = await cluster.afailover(old)
    took = trio.current_time() - started
    assert new is not old and new.running
    with new.client() as c:
        assert c.get("k") == b"v"
        assert c.info("replication")["role"] == "master"
    assert took < 15, f"failover took {took:.1f} s"
    assert cluster.url.startswith("redis+sentinel://127.0.0.1:")
    assert cluster.url.endswith("/atom") and cluster.url.count(",") == 2


async def test_a_paused_node_answers_nothing_until_resumed(sentinel_cluster):
    replica = sentinel_cluster.replicas[0]
    replica.pause()
    try:
        with replica.client(0.3) as c:
            try:
                c.ping()
            except Exception as exc:  # noqa: BLE001 - any failure to answer is the point
                assert "Timeout" in type(exc).__name__
            else:
                raise AssertionError("a paused node answered")
    finally:
        replica.resume()
    with replica.client() as c:
        assert c.ping()
