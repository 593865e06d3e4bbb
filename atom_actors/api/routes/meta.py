"""Everything around the API proper: liveness and readiness, /metrics, the docs page, and the
viewer page at ``/`` (when ``atom_actors/viewer/index.html`` exists), with the JavaScript client
SDK it imports under ``/viewer/sdk/``."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import CONTENT_TYPE_LATEST
from quart import Blueprint, current_app, jsonify, send_from_directory
from quart_schema import document_response, hide, tag
from werkzeug.exceptions import NotFound

from ..health import OK, answers, ping, readiness
from ..schemas import Health, NotReady, Ready
from ..web import api

bp = Blueprint("meta", __name__)

VIEWER_DIR = Path(__file__).resolve().parent.parent.parent / "viewer"
# The SDK's modules (clients/js/src): the wheel carries them as atom_actors/_sdk/, a source
# checkout has them where they live. One copy of the decoder for the SDK and the page alike.
SDK_DIRS = (VIEWER_DIR.parent / "_sdk", VIEWER_DIR.parent.parent / "clients" / "js" / "src")


@bp.get("/api/v1/health")
@tag(["health"])
@document_response(Health)
async def health() -> Any:
    """Liveness: 200 while the process answers."""
    a = api()
    ws_url = a.input.ws_url
    ws_port = urlsplit(ws_url).port if ws_url else None
    return jsonify({"status": "ok", "ticking": a.control.ticking, "ws_port": ws_port,
                    "sceau_duration_ms": a.settings.sceau_duration})


@bp.get("/api/v1/health/ready")
@tag(["health"])
@document_response(Ready)
@document_response(NotReady, 503)
async def ready() -> Any:
    """Readiness: 200 only when the engine ticks, a command can be written (the coordinator
    takes a write, not merely answers PING) and every other configured backend answers, else
    503."""
    a = api()
    checks = {"engine": OK if a.control.ticking else "not ticking"}
    for name, part in (("store", a.store), ("bus", a.input.bus)):
        if part is not None:
            checks[name] = await ping(part)
    if a.input.coordinator is not None:
        checks["commands"] = await answers(a.input.coordinator.probe_write)
    status, body = readiness(checks)
    return jsonify(body), status


@bp.get("/metrics")
@tag(["health"])
async def metrics() -> Any:
    """Prometheus metrics, in the text exposition format."""
    metrics = api().input.metrics
    body = metrics.render() if metrics is not None else b""
    return current_app.response_class(body, content_type=CONTENT_TYPE_LATEST)


@bp.get("/docs")
@hide
async def docs() -> Any:
    page = current_app.extensions["QUART_SCHEMA"].openapi_provider.docs_page()
    return current_app.response_class(page, content_type="text/html; charset=utf-8")


@bp.get("/")
@hide
async def index() -> Any:
    if (VIEWER_DIR / "index.html").is_file():
        return await send_from_directory(VIEWER_DIR, "index.html")
    return jsonify({"name": "atom_actors", "api": "/api/v1", "docs": "/docs",
                    "openapi": "/openapi.json", "viewer": "not installed"})


@bp.get("/viewer/sdk/<path:path>")
@hide
async def viewer_sdk(path: str) -> Any:
    """A module of the SDK; any other path is a 404, as under /viewer/ (issue 24)."""
    for directory in SDK_DIRS:
        if directory.is_dir():
            if path not in viewer_files(directory):
                break
            return await send_from_directory(directory, path)
    raise NotFound()


@bp.get("/viewer/<path:path>")
@hide
async def viewer(path: str) -> Any:
    """A file of the viewer; any other path, whatever its length or bytes, is a 404 (never a
    look-up on disk of what a client typed)."""
    if path not in viewer_files(VIEWER_DIR):
        raise NotFound()
    return await send_from_directory(VIEWER_DIR, path)


@cache
def viewer_files(directory: Path) -> frozenset[str]:
    """The viewer's files, as paths relative to ``directory`` (read once, at the first request)."""
    if not directory.is_dir():
        return frozenset()
    return frozenset(p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file())
