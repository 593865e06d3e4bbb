"""Serving the API: Hypercorn's HTTP/1.1 protocol in the program's own ``trio.run``, behind the
connection bounds of :mod:`.hyperworker` (issue 13).

Every connection is bounded in time and number: ``Connection: close`` closes the socket right
after the response; an idle keep-alive connection, or one whose request head trickles in, is
closed after KEEP_ALIVE_S; a request body not received within BODY_TIMEOUT_S is answered 408;
a connection silent both ways for ``hyperworker.SILENCE_S`` is closed; and one process holds at
most MAX_CONNECTIONS (fewer if the descriptor limit is low), and one address at most
API_MAX_CONNECTIONS_PER_ADDRESS (or half that cap), answering 503 JSON beyond. HTTP/1.1 only.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Final

import trio
from hypercorn.config import Config

from ..netlimits import DescriptorShares
from ..peers import ClientAddresses
from . import hyperworker
from .app import create_app
from .web import ApiInput

# Hypercorn finishes requests in flight this long after the server is stopped.
GRACEFUL_TIMEOUT_S: Final = 1.0
# An idle connection, or a request head not whole by then: closed. Longer than the idle expiry of
# common clients (httpx 5 s, Node's undici 4 s, nginx's upstream here 4 s), so that the client lets
# go of an idle connection first: a request sent on a connection the server is closing at that
# instant fails, and no client retries a POST (a 20-minute soak at 5 s lost 13 commands so).
KEEP_ALIVE_S: Final = 7.0
BODY_TIMEOUT_S: Final = 10.0       # a request body not whole by then: 408
MAX_CONNECTIONS: Final = 1000      # per process; see netlimits.DescriptorShares


def hypercorn_config(host: str, port: int) -> Config:
    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None        # an access log names client addresses: never (ZERO_LOG)
    errorlog = logging.getLogger("atom_actors.api.server")
    # Hypercorn's "Running on ..." line repeats atom's own "serving:" line; keep its warnings.
    errorlog.setLevel(logging.WARNING)
    config.errorlog = errorlog
    config.graceful_timeout = GRACEFUL_TIMEOUT_S
    config.keep_alive_timeout = KEEP_ALIVE_S
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
    app.config["BODY_TIMEOUT"] = BODY_TIMEOUT_S
    config = hypercorn_config(parts.settings.api_host, parts.settings.api_port)
    settings = parts.settings
    share = DescriptorShares.now().api
    async with trio.open_nursery() as nursery:
        binds, _ = await nursery.start(partial(
            hyperworker.serve, app, config, max_connections=min(MAX_CONNECTIONS, share),
            # One address may hold no more than half of what the descriptor limit leaves the API.
            max_per_address=min(settings.api_max_connections_per_address, max(1, share // 2)),
            addresses=ClientAddresses(settings.trusted_proxy_hops, settings.trusted_proxies)))
        task_status.started(binds[0])
