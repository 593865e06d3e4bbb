"""Serving the API: Hypercorn's Trio worker in the program's own ``trio.run``."""

from __future__ import annotations

import logging

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from .app import create_app
from .web import ApiInput

# Hypercorn finishes requests in flight this long after the server is stopped.
GRACEFUL_TIMEOUT_S = 1.0


def hypercorn_config(host: str, port: int) -> Config:
    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None        # an access log names client addresses: never (ZERO_LOG)
    errorlog = logging.getLogger("atom_actors.api.server")
    # Hypercorn's "Running on ..." line repeats atom's own "serving:" line; keep its warnings.
    errorlog.setLevel(logging.WARNING)
    config.errorlog = errorlog
    config.graceful_timeout = GRACEFUL_TIMEOUT_S
    config.include_server_header = False
    return config


async def serve_api(parts: ApiInput, *,
                    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the REST API on API_HOST:API_PORT until cancelled; ``started`` with the bound URL
    (API_PORT=0 binds a free port).

    Cancellation: stops accepting, then gives requests in flight GRACEFUL_TIMEOUT_S. Errors: a
    port that cannot be bound raises OSError before ``started``; a failing request is answered
    500 by the app's error boundary and never stops the server.
    """
    app = create_app(parts)
    config = hypercorn_config(parts.settings.api_host, parts.settings.api_port)
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(serve, app, config)
        task_status.started(binds[0])
