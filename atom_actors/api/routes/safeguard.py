"""The Brise-Circuit as operators see it: its state (anyone watching), and the reset that closes
it — a guardian's act (CONTRACT §2.3), apart from the trip, which stays automatic."""

from __future__ import annotations

from typing import Any

from quart import Blueprint, jsonify
from quart_schema import document_response, tag

from ...errors import MfaRequired
from ...operators import GUARDIAN
from ..schemas import ResetPending, SafeguardStatus
from ..web import api, caller, idempotent, requires_role, requires_session

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
@requires_role(GUARDIAN)
@idempotent
@document_response(ResetPending, 202)
@document_response(SafeguardStatus)
async def reset() -> Any:
    """Close the Brise-Circuit; the command window starts empty. Role: guardian. A guardian's act: with
    SAFEGUARD_RESET_AAL=aal2 their token must come from a multi-factor sign-in, and with
    SAFEGUARD_RESET_QUORUM = n it closes once n distinct guardians have asked within 60 s
    (202 with the approvals so far until then)."""
    a = api()
    guardian = caller()
    assert guardian is not None
    if a.settings.safeguard_reset_aal == "aal2" and guardian.aal != "aal2":
        raise MfaRequired("aal2")
    approval = await a.safeguard.request_reset(guardian.pseudonym)
    if not approval.granted:
        return jsonify({"state": a.safeguard.state, "approvals": approval.approvals,
                        "needed": approval.needed,
                        "expires_in_s": round(approval.expires_in_s, 3)}), 202
    return jsonify(a.safeguard.status())
