"""The Redis bus against real Redis: the shared server (a namespace per test) and, for restarts,
a throwaway one. Real time, each test bounded by ``trio.fail_after``."""

from __future__ import annotations

import numpy as np
import pytest
import trio

from atom_actors.bus.redis import RedisBus
from atom_actors.errors import BackendUnavailable
from atom_actors.protocol import Frame

from .servers import SHARED_REDIS, free_port


def frame(seq: int) -> Frame:
    positions = np.full((350, 3), seq % 1000, np.float32)
    return Frame.compose(seq, 1_700_000_000.0 + seq / 60, positions)


async def start_bus(nursery: trio.Nursery, url: str = SHARED_REDIS, **kwargs) -> RedisBus:
    bus = await nursery.start(RedisBus(url, **kwargs).run)
    return bus


async def subscribed(bus: RedisBus) -> None:
    if not bus.up:
        await bus.subscribed.wait()


async def publisher_and_reader(nursery: trio.Nursery, namespace: str) -> tuple[RedisBus, RedisBus]:
    """An engine-side bus (publishes only) and a broadcaster-side one, subscribed."""
    engine_side = await start_bus(nursery, namespace=namespace, frames=False, events=False)
    reader = await start_bus(nursery, namespace=namespace)
    await subscribed(reader)
    return engine_side, reader


async def test_frames_cross_as_the_bytes_the_engine_encoded(nursery, redis_namespace):
    with trio.fail_after(10):
        engine_side, reader = await publisher_and_reader(nursery, redis_namespace)
        sub = reader.subscribe_frames()
        sent = frame(41)
        engine_side.publish_frame(sent)
        received = await sub.receive()
        assert received.f32 == sent.f32 and (received.seq, received.t) == (41, sent.t)
        assert received.encoded("q16") == sent.encoded("q16")   # the other encodings still work


async def test_events_cross_as_they_were_emitted(nursery, redis_namespace):
    with trio.fail_after(10):
        engine_side, reader = await publisher_and_reader(nursery, redis_namespace)
        with reader.subscribe_events() as events:
            sent = {"type": "event", "event": "swarm.dispersal", "level": "partial", "sphere": None,
                    "count": 70, "command_id": "abc"}
            engine_side.publish_event(sent)
            assert await events.receive() == sent


async def test_a_burst_of_350_events_in_one_tick_arrives_within_a_tick_of_its_frame(
        nursery, redis_namespace):
    """A total dispersal's 350 agent.status events, emitted in the tick of a frame, reach a
    subscriber less than a tick (1/60 s) after that frame: they go out together, beside it, not
    one awaited call each (which took 350 round trips, tens of milliseconds)."""
    with trio.fail_after(10):
        engine_side, reader = await publisher_and_reader(nursery, redis_namespace)
        with reader.subscribe_events() as events:
            await trio.sleep(0.05)
            engine_side.publish_frame(frame(7))      # one tick: no checkpoint in between
            for agent in range(350):
                engine_side.publish_event({"type": "event", "event": "agent.status",
                                           "agent": agent, "status": "dispersed"})
            received = [await events.receive() for _ in range(350)]
        # When each reached the reading process (its handlers), not when a task woke up: a
        # loaded machine delays the wake-up, not the arrival.
        arrived = {"frame": reader.frame_arrived_at, "events": reader.events_arrived_at}
        assert [e["agent"] for e in received] == list(range(350))
        assert engine_side.events_dropped == 0
        assert 0 <= arrived["events"] - arrived["frame"] < 1 / 60   # the frame came first
        # One batch, whose lag (from its oldest event's emission) the reader measured.
        assert sum(reader.event_lag.counts) == 1 and 0 <= reader.event_lag.max < 0.1


async def test_publishing_never_blocks_and_the_newest_frame_wins(nursery, redis_namespace):
    with trio.fail_after(10):
        engine_side, reader = await publisher_and_reader(nursery, redis_namespace)
        sub = reader.subscribe_frames()
        for seq in range(1000):            # no checkpoint between: the pump cannot run
            engine_side.publish_frame(frame(seq))
        assert engine_side.frames_dropped == 999
        assert (await sub.receive()).seq == 999


async def test_a_call_while_redis_is_down_fails_at_once():
    async with trio.open_nursery() as nursery:
        bus = await start_bus(nursery, f"redis://127.0.0.1:{free_port()}/0", frames=False, events=False)
        start = trio.current_time()
        with trio.fail_after(5):
            with pytest.raises(BackendUnavailable) as caught:
                await bus.ping()
        assert caught.value.status == 503 and caught.value.backend == "redis"
        assert trio.current_time() - start < 0.5
        # Publishing while down neither blocks nor raises.
        bus.publish_frame(frame(1))
        bus.publish_event({"type": "event", "event": "agent.status"})
        nursery.cancel_scope.cancel()


async def test_frames_flow_again_within_two_seconds_of_a_redis_restart(nursery, redis_server):
    """The broadcaster side keeps its subscription object; only the connection comes and goes."""
    with trio.fail_after(30):
        engine_side = await start_bus(nursery, redis_server.url, frames=False, events=False)
        reader = await start_bus(nursery, redis_server.url)
        await subscribed(reader)
        sub = reader.subscribe_frames()

        async def compose() -> None:
            seq = 0
            while True:
                engine_side.publish_frame(frame(seq))
                seq += 1
                await trio.sleep(1 / 60)

        nursery.start_soon(compose)
        await sub.receive()
        await redis_server.astop()
        await trio.sleep(0.5)
        await redis_server.astart()
        back = trio.current_time()
        latest = reader.latest_frame.seq
        while (again := await sub.receive()).seq <= latest:
            pass
        assert trio.current_time() - back < 2.0
        # The composer was never held up by the outage: it went on at 60 fps meanwhile.
        assert again.seq - latest >= 25


async def test_unreadable_messages_are_counted_not_fatal(nursery, redis_namespace):
    with trio.fail_after(10):
        reader = await start_bus(nursery, namespace=redis_namespace)
        other = await start_bus(nursery, namespace=redis_namespace, frames=False, events=False)
        await subscribed(reader)
        from atom_actors.bus import redis as redis_bus
        await other.link.call(redis_bus._aio_publish, reader.keys.frames, b"garbage")
        await other.link.call(redis_bus._aio_publish, reader.keys.events, b"{not json")
        sub = reader.subscribe_frames()
        other.publish_frame(frame(5))
        assert (await sub.receive()).seq == 5
        assert reader.bad_messages == 2
