"""The Brise-Circuit as operators see it: its state, and the reset that closes it."""

from __future__ import annotations

from typing import Any

from quart import Blueprint, jsonify
from quart_schema import document_response, tag

from ..schemas import SafeguardStatus
from ..web import api, idempotent, requires_session

bp = Blueprint("safeguard", __name__, url_prefix="/api/v1/safeguard")


@bp.get("")
@tag(["safeguard"])
@requires_session
@document_response(SafeguardStatus)
async def status() -> Any:
    """The Brise-Circuit's state (closed, open, half_open), why, and what it counts."""
    safeguard = api().safeguard
    await safeguard.refresh()   # shared by every API process: as it is now, not as last seen
    return jsonify(safeguard.status())


@bp.post("/reset")
@tag(["safeguard"])
@requires_session
@idempotent
@document_response(SafeguardStatus)
async def reset() -> Any:
    """Close the Brise-Circuit now; the command window starts empty."""
    return jsonify(api().safeguard.reset())
