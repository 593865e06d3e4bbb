"""The service stack: in order up, in reverse order down, each service within a deadline."""

from __future__ import annotations

import logging

import trio

from atom_actors.stack import open_service_stack


def service(name: str, events: list[tuple[str, str, float]], cleanup_s: float = 0.0):
    async def run(*, task_status=trio.TASK_STATUS_IGNORED) -> None:
        events.append((name, "up", trio.current_time()))
        task_status.started(name)
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await trio.sleep(cleanup_s)
            events.append((name, "down", trio.current_time()))

    return run


async def test_services_stop_in_reverse_order_each_awaited(autojump_clock):
    events: list[tuple[str, str, float]] = []
    with trio.move_on_after(1.0):
        async with open_service_stack() as stack:
            for name in ("store", "bus", "engine"):
                assert await stack.start(service(name, events, cleanup_s=0.5), name=name) == name
            await trio.sleep_forever()
    assert [(n, what) for n, what, _ in events] == [
        ("store", "up"), ("bus", "up"), ("engine", "up"),
        ("engine", "down"), ("bus", "down"), ("store", "down")]
    downs = [t for _, what, t in events if what == "down"]
    assert downs == [1.5, 2.0, 2.5]     # one at a time: the next waits for the previous


async def test_a_hung_service_is_named_and_the_others_stop_on_time(autojump_clock, caplog):
    events: list[tuple[str, str, float]] = []
    with trio.move_on_after(1.0):
        async with open_service_stack() as stack:
            await stack.start(service("store", events), name="store")
            await stack.start(service("api", events, cleanup_s=60.0), name="api",
                              stop_timeout_s=2.0)
            await trio.sleep_forever()
    down = {n: t for n, what, t in events if what == "down"}
    assert down["store"] == 3.0          # stopped 2 s after the hung API was cancelled, not 60
    assert down["api"] == 61.0           # Trio cannot kill it: the stack ends when it does
    assert stack.hung == ["api"]
    hung = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(hung) == 1 and "service api did not stop within 2 s" in hung[0].getMessage()
