"""Prometheus metrics of a running server, read as a scraper reads them (on virtual time).

The scrape of ``/metrics`` over HTTP, while a real client scenario runs, is in
``tests/test_zero_log.py``.
"""

from __future__ import annotations

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from atom_actors import app
from atom_actors.errors import BackendUnavailable
from atom_actors.metrics import CountedControl, Metrics
from tests.conftest import make_settings


def scrape(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition, keyed by (name, sorted labels)."""
    samples = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


@pytest.fixture
async def services(nursery, autojump_clock):
    return await nursery.start(app.serve, make_settings(dispersal_dwell_s=2))


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
    control = CountedControl(services.engine, services.metrics)
    await control.disperse("partial")
    await control.disperse("sectoral", sphere="transport")
    with pytest.raises(Exception):
        await control.disperse("huge")
    with pytest.raises(Exception):
        await control.retune(3, 10_000.0)
    await control.regroup()
    await trio.sleep(0.1)
    samples = scrape(services.metrics)

    def commands(command: str, level: str, result: str) -> float:
        return value(samples, "atom_commands_total", command=command, level=level, result=result)

    assert commands("disperse", "partial", "accepted") == 1
    assert commands("disperse", "sectoral", "accepted") == 1
    assert commands("disperse", "other", "invalid") == 1   # the label set stays closed
    assert commands("retune", "", "invalid") == 1
    assert commands("regroup", "", "accepted") == 1
    assert value(samples, "atom_agents", status="dispersed") + \
        value(samples, "atom_agents", status="regrouping") > 0
    # Queries pass straight through the wrapper.
    assert control.agent(3)["id"] == 3


async def test_backend_errors_counted_by_backend(services, autojump_clock):
    class DownControl:
        async def regroup(self, command_id=None):
            raise BackendUnavailable("redis", "connection refused")

    control = CountedControl(DownControl(), services.metrics)
    with pytest.raises(BackendUnavailable):
        await control.regroup()
    samples = scrape(services.metrics)
    assert value(samples, "atom_backend_errors_total", backend="redis") == 1
    assert value(samples, "atom_commands_total", command="regroup", level="",
                 result="unavailable") == 1


async def test_two_servers_in_one_process_keep_their_own_registries(nursery, autojump_clock):
    one = await nursery.start(app.serve, make_settings())
    two = await nursery.start(app.serve, make_settings())
    one.engine.inject_crash("privacy")
    await trio.sleep(0.5)
    assert value(scrape(one.metrics), "atom_actor_restarts_total", actor="sphere/privacy") == 1
    assert value(scrape(two.metrics), "atom_actor_restarts_total", actor="sphere/privacy") == 0
