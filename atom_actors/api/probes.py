"""What a process of the ``engine`` or ``ws`` role serves on API_PORT (CONTRACT §2.2): only
``GET /metrics``, ``GET /api/v1/health`` and ``GET /api/v1/health/ready``, so that every process
of a deployment is scraped and health-checked the same way as the API.

A plain ASGI application (no framework: three routes), on Hypercorn's Trio worker like the API.
Any other path is a JSON 404, any other method a JSON 405, as the API answers them.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Final

import trio
from prometheus_client import CONTENT_TYPE_LATEST

from . import hyperworker
from .health import readiness
from .server import hypercorn_config

Checks = Callable[[], Awaitable[dict[str, str]]]


PROBE_CONNECTIONS: Final = 64   # health checks and scrapes: a few at a time


class ProbesApp:
    """The ASGI application: ``health()`` gives the liveness body's extra fields, ``checks()`` the
    readiness checks, ``render()`` the Prometheus text."""

    def __init__(self, role: str, render: Callable[[], bytes], checks: Checks,
                 health: Callable[[], dict[str, Any]]) -> None:
        self.role = role
        self.render = render
        self.checks = checks
        self.health = health

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        routes = {"/metrics", "/api/v1/health", "/api/v1/health/ready"}
        if path not in routes:
            detail = f"there is no {path[:200]} on this {self.role} process"
            await _json(send, 404, {"error": "not_found", "detail": detail})
        elif method not in ("GET", "HEAD"):
            await _json(send, 405, {"error": "method_not_allowed",
                                    "detail": f"{method[:20]} is not allowed on {path}"},
                        [(b"allow", b"GET, HEAD")])
        elif path == "/metrics":
            await _answer(send, 200, self.render(), CONTENT_TYPE_LATEST.encode())
        elif path == "/api/v1/health":
            await _json(send, 200, {"status": "ok", "role": self.role, **self.health()})
        else:
            await _json(send, *readiness(await self.checks()))


async def _json(send: Callable, status: int, body: dict,
                headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await _answer(send, status, json.dumps(body).encode(), b"application/json", headers)


async def _answer(send: Callable, status: int, body: bytes, content_type: bytes,
                  headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type), (b"cache-control", b"no-store"),
                            (b"content-length", str(len(body)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


async def serve_probes(app: ProbesApp, host: str, port: int, *,
                       task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve ``app`` on ``host:port`` until cancelled; ``started`` with the bound URL.

    Errors: a port that cannot be bound raises OSError before ``started``."""
    async with trio.open_nursery() as nursery:
        # The API's connection bounds (HTTP/1.1 only, CL+TE, caps): a probe port is a port too.
        binds, _ = await nursery.start(partial(hyperworker.serve, app, hypercorn_config(host, port),
                                               max_connections=PROBE_CONNECTIONS))
        task_status.started(binds[0])
