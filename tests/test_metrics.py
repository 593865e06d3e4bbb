"""Prometheus metrics of a running server, read as a scraper reads them (on virtual time).

The scrape of ``/metrics`` over HTTP, while a real client scenario runs, is in
``tests/test_zero_log.py``.
"""

from __future__ import annotations

import httpx
import redis
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from atom_actors import app
from atom_actors.errors import BackendUnavailable, FrequencyOutOfRange, SafeguardOpen, UnknownLevel
from atom_actors.metrics import Metrics
from tests.atom_process import running_atom, scenario
from tests.conftest import make_settings
from tests.servers import free_port

FREE_PORTS = {"api_port": 0, "ws_port": 0}   # app.serve binds the API and WebSocket servers


def scrape(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return parse(metrics.render().decode())


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition, keyed by (name, sorted labels)."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


@pytest.fixture
async def services(nursery, autojump_clock):
    return await nursery.start(app.serve, make_settings(dispersal_dwell_s=2, **FREE_PORTS))


async def test_frames_and_tick_lateness_move_with_the_compositor(services, autojump_clock):
    await trio.sleep(1.0)
    first = scrape(services.metrics)
    await trio.sleep(2.0)
    second = scrape(services.metrics)
    frames = value(second, "atom_frames_composed_total")
    assert 59 <= value(first, "atom_frames_composed_total") <= 61
    assert frames - value(first, "atom_frames_composed_total") == pytest.approx(120, abs=1)
    # Every frame is one observation of the lateness histogram; buckets are cumulative.
    assert value(second, "atom_tick_lateness_seconds_count") == frames
    assert value(second, "atom_tick_lateness_seconds_bucket", le="+Inf") == frames
    bounds = sorted((float(dict(labels)["le"]), v) for (name, labels), v in second.items()
                    if name == "atom_tick_lateness_seconds_bucket")
    assert [v for _, v in bounds] == sorted(v for _, v in bounds)
    assert value(second, "atom_engine_ticking") == 1.0
    assert value(second, "atom_engine_leading") == 1.0   # the one engine of a single process
    assert value(second, "atom_tick_interval_seconds") == pytest.approx(1 / 60)
    assert value(second, "atom_agents", status="active") == 350
    assert ("process_resident_memory_bytes", ()) in second


async def test_restarts_and_crashes_counted_per_actor(services, autojump_clock):
    before = scrape(services.metrics)
    assert value(before, "atom_actor_restarts_total", actor="sphere/transport") == 0
    services.engine.inject_crash("transport")
    await trio.sleep(0.1)
    after = scrape(services.metrics)
    assert value(after, "atom_actor_restarts_total", actor="sphere/transport") == 1
    assert value(after, "atom_actor_crashes_total", actor="sphere/transport") == 1
    assert value(after, "atom_actor_restarts_total", actor="sphere/privacy") == 0


async def test_commands_by_level_and_result(services, autojump_clock):
    metrics, engine = services.metrics, services.engine
    with metrics.counted("disperse", "partial", "c1") as counted:
        counted.size = (await engine.disperse("partial"))["dispersed"]
    with metrics.counted("disperse", "sectoral", "c2"):
        await engine.disperse("sectoral", sphere="transport")
    with pytest.raises(UnknownLevel), metrics.counted("disperse", "huge"):
        await engine.disperse("huge")
    with pytest.raises(FrequencyOutOfRange), metrics.counted("retune"):
        await engine.retune(3, 10_000.0)
    with pytest.raises(SafeguardOpen), metrics.counted("disperse", "total"):
        raise SafeguardOpen("too many total dispersals", 30)
    with pytest.raises(BackendUnavailable), metrics.counted("regroup"):
        raise BackendUnavailable("redis", "connection refused")
    with trio.CancelScope() as scope, metrics.counted("regroup"):
        scope.cancel()
        await trio.sleep(1)   # a cancelled command is no result: counted nowhere
    await trio.sleep(0.1)     # the agents' tasks carry the dispersals out
    samples = scrape(metrics)

    def commands(command: str, level: str, result: str) -> float:
        return value(samples, "atom_commands_total", command=command, level=level, result=result)

    assert commands("disperse", "partial", "accepted") == 1
    assert commands("disperse", "sectoral", "accepted") == 1
    assert commands("disperse", "other", "invalid") == 1   # the label set stays closed
    assert commands("retune", "", "invalid") == 1
    assert commands("disperse", "total", "blocked") == 1
    assert commands("regroup", "", "unavailable") == 1
    assert sum(v for (name, _), v in samples.items() if name == "atom_commands_total") == 6
    assert 70 < value(samples, "atom_agents", status="dispersed") <= 70 + 25


async def test_the_alerts_bounds_the_tick_and_the_subscriber_limit(nursery, autojump_clock):
    """What the lateness and subscriber alerts compare with follows the settings."""
    services = await nursery.start(app.serve, make_settings(ws_max_connections=40, tick_hz=50,
                                                            **FREE_PORTS))
    samples = scrape(services.metrics)
    assert value(samples, "atom_ws_max_connections") == 40
    assert value(samples, "atom_tick_interval_seconds") == pytest.approx(0.02)


async def test_backend_errors_are_the_backends_own_counts(services, autojump_clock):
    """The store and the bus count the calls that found them unavailable; /metrics shows it."""
    assert value(scrape(services.metrics), "atom_backend_errors_total", backend="memory") == 0
    services.store.failures = 3   # as PostgresStore / RedisBus count their outages
    assert value(scrape(services.metrics), "atom_backend_errors_total", backend="memory") == 3


async def test_each_redis_part_says_which_primary_it_is_connected_to(nursery, redis_server):
    """atom_redis_primary{part, address}: the server each part's link found is the primary
    (``ROLE``); none while it is a replica (the primary moved); a change is counted."""
    from atom_actors.bus.redis import RedisBus
    from atom_actors.coordinator.redis import RedisCoordinator

    with trio.fail_after(10):
        bus = await nursery.start(RedisBus(redis_server.url, frames=False, events=False).run)
        coordinator = await nursery.start(RedisCoordinator(redis_server.url, summaries=False,
                                                           revocations=False).run)
        metrics = Metrics()
        metrics.read_backends(bus, coordinator)
        while bus.primary is None or coordinator.primary is None:
            await trio.sleep(0.05)
        address = f"127.0.0.1:{redis_server.port}"
        samples = scrape(metrics)
        for part in ("bus", "coordinator"):
            assert value(samples, "atom_redis_primary", part=part, address=address) == 1
            assert value(samples, "atom_redis_primary_changes_total", part=part) == 0
        # Made a replica of another server: no longer a primary to write to.
        with redis.Redis(port=redis_server.port) as raw:
            raw.replicaof("127.0.0.1", str(free_port()))
        try:
            while bus.primary is not None:
                await trio.sleep(0.05)
            assert not [k for k in scrape(metrics) if k[0] == "atom_redis_primary"]
        finally:
            with redis.Redis(port=redis_server.port) as raw:
                raw.replicaof("NO", "ONE")


async def test_two_servers_in_one_process_keep_their_own_registries(nursery, autojump_clock):
    one = await nursery.start(app.serve, make_settings(**FREE_PORTS))
    two = await nursery.start(app.serve, make_settings(**FREE_PORTS))
    one.engine.inject_crash("privacy")
    await trio.sleep(0.5)
    assert value(scrape(one.metrics), "atom_actor_restarts_total", actor="sphere/privacy") == 1
    assert value(scrape(two.metrics), "atom_actor_restarts_total", actor="sphere/privacy") == 0


async def test_metrics_move_as_a_session_runs(tmp_path):
    """/metrics of a real ``atom serve``, before, during and after a client's session."""
    with trio.fail_after(120):
        async with running_atom(tmp_path) as atom:
            async with httpx.AsyncClient(base_url=atom.api_url, timeout=10) as http:
                response = await http.get("/metrics")
                assert response.headers["content-type"].startswith("text/plain")
                before = parse(response.text)
                seen = await scenario(atom.api_url, atom.ws_url)
                after = parse((await http.get("/metrics")).text)
    during = parse(seen.metrics_during)
    frames = [value(s, "atom_frames_composed_total") for s in (before, during, after)]
    assert frames == sorted(frames) and frames[2] - frames[0] > 60
    lateness = [value(s, "atom_tick_lateness_seconds_count") for s in (before, during)]
    assert lateness[1] > lateness[0]
    assert value(before, "atom_subscribers") == 0
    assert value(during, "atom_subscribers") == 2
    assert value(after, "atom_subscribers") == 0
    assert value(after, "atom_frames_sent_total") > 60
    assert value(after, "atom_ws_handshakes_refused_total", status="401") == 1

    def commands(samples, command: str, level: str, result: str) -> float:
        return samples.get(("atom_commands_total", tuple(sorted(
            {"command": command, "level": level, "result": result}.items()))), 0.0)

    assert commands(before, "disperse", "partial", "accepted") == 0
    assert commands(during, "disperse", "partial", "accepted") == 1
    assert commands(during, "disperse", "sectoral", "accepted") == 1
    assert commands(during, "retune", "", "accepted") == 1
    assert commands(during, "regroup", "", "accepted") == 0
    assert commands(after, "regroup", "", "accepted") == 1
    assert value(during, "atom_agents", status="dispersed") > 0
    assert value(after, "atom_safeguard_state", state="closed") == 1
    assert value(after, "atom_actor_restarts_total", actor="sphere/transport") == 0
