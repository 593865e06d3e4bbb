"""The audit (CONTRACT §2.4): the newest command and Brise-Circuit records, for guardians."""

from __future__ import annotations

from typing import Any

import pydantic
from quart import Blueprint, jsonify
from quart_schema import document_response, tag

from ...operators import GUARDIAN
from ...store import AuditEntry
from ..schemas import AuditPage
from ..web import api, query, requires_role

bp = Blueprint("audit", __name__, url_prefix="/api/v1")
MAX_LIMIT = 500


class AuditQuery(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")

    limit: int = pydantic.Field(100, ge=1, le=MAX_LIMIT)


def record_json(entry: AuditEntry) -> dict[str, Any]:
    """A record as §2.4 lists it: id, at, kind, command_id, role, operator, then what it is about."""
    record = entry.record
    return {**record.payload, "id": entry.id, "at": round(record.t, 6), "kind": record.kind,
            "command_id": record.payload.get("command_id"), "role": record.role,
            "operator": record.operator}


@bp.get("/audit")
@tag(["audit"])
@requires_role(GUARDIAN)
@query(AuditQuery)
@document_response(AuditPage)
async def audit(query: AuditQuery) -> Any:
    """The newest records, newest first (``limit`` ≤ 500): every swarm-changing command and every
    Brise-Circuit change, with the role that allowed it and the operator's pseudonym; ``chain``
    says whether the records' keyed hash chain holds. Role: guardian."""
    entries, chain = await api().store.audit(query.limit)
    return jsonify({"records": [record_json(e) for e in entries],
                    "chain": {"records": chain.records, "verified": chain.verified,
                              "first_broken": chain.first_broken}})
