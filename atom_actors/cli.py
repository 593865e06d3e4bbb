"""``atom``: the command line.

    atom serve      run everything in one process (engine, broadcaster, API)

Exit codes: 0 after a clean stop (SIGINT, SIGTERM), 1 when the engine escalates a crash loop,
2 for a bad setting or bad arguments.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

import trio

from . import app
from .config import Settings, load_settings
from .errors import ConfigError, SupervisorEscalation


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="atom", description="AT·OM real-time backend")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the engine and its servers in one process")
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"atom: bad setting {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if args.command == "serve":
        return _serve(settings)
    return 2


def _serve(settings: Settings) -> int:
    try:
        trio.run(_serve_until_signal, settings)
    except SupervisorEscalation as exc:
        app.announce(f"ENGINE STOPPED: {exc}")
        return 1
    return 0


async def _serve_until_signal(settings: Settings) -> None:
    settings, ephemeral = settings.with_ephemeral_key()
    if ephemeral:
        app.announce("SECRET_KEY is empty: using an ephemeral key; sessions end with this process")
    services = None
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        try:
            async with trio.open_nursery() as nursery:
                services = await nursery.start(app.serve, settings)
                app.announce(f"serving: {services.describe()}")

                async def stop_on_signal() -> None:
                    async for signum in signals:
                        app.announce(f"{signal.Signals(signum).name}: stopping")
                        nursery.cancel_scope.cancel()
                        return

                nursery.start_soon(stop_on_signal)
        except BaseExceptionGroup as group:
            # Surface an escalation as itself, not wrapped: the caller prints one loud line.
            escalation = group.split(SupervisorEscalation)[0]
            if escalation is not None:
                raise next(_leaves(escalation)) from None
            raise
    if services is not None and services.broadcaster is not None:
        app.announce(f"broadcaster: {services.broadcaster.stats.summary()}")
    app.announce("stopped")


def _leaves(group: BaseException):
    if isinstance(group, BaseExceptionGroup):
        for exc in group.exceptions:
            yield from _leaves(exc)
    else:
        yield group


if __name__ == "__main__":
    sys.exit(main())
