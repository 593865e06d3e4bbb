"""The swarm (CONTRACT.md §2): what it is doing, and the commands that change it.

Every swarm-changing command (disperse, regroup, retune) is an operator's (CONTRACT §2.3: a bearer
token with the role ``operator``), passes the Brise-Circuit first and, once the engine has carried
it out, is recorded in the store with its command_id, sizes, the role that allowed it and the
operator's pseudonym (§2.4). Reading the swarm is anyone's with a Sceau session or a token.
"""

from __future__ import annotations

from typing import Any

from quart import Blueprint, current_app, jsonify
from quart_schema import document_response, tag

from ...catalog import Catalog
from ...persistence import dispersal_record, regroup_record, retune_record
from ..schemas import (Agent, Dispersal, FrequencyStats, Regroup, Sphere, SphereDetail,
                       SwarmSummary, agent_filter, disperse_body, retune_body)
from ...operators import OPERATOR
from ..web import (agent_id, api, attribution, document_errors, idempotent, json_body,
                   path_segment, query, requires_role, requires_session)

bp = Blueprint("swarm", __name__, url_prefix="/api/v1")
COMMAND_ERRORS = (423,)


def _sphere(sphere: Any) -> dict[str, Any]:
    return {"name": sphere.name, "index": sphere.index, "count": sphere.count,
            "color": sphere.color, "first_agent": sphere.first, "functions": list(sphere.functions)}


@bp.get("/swarm")
@tag(["swarm"])
@requires_session
@document_response(SwarmSummary)
async def summary() -> Any:
    """The swarm at a glance: agents, counts by status and by sphere, tick rate, subscribers and the
    Brise-Circuit's state."""
    a = api()
    counts = a.control.counts()
    return jsonify({"agents": sum(counts["by_sphere"].values()), "by_status": counts["by_status"],
                    "by_sphere": counts["by_sphere"], "tick_hz": a.settings.tick_hz,
                    "ticking": a.control.ticking, "subscribers": a.subscribers(),
                    "safeguard": a.safeguard.state})


@bp.get("/swarm/agents/<agent>")
@tag(["swarm"])
@requires_session
@document_errors(404)
@document_response(Agent)
async def agent(agent: str) -> Any:
    """One agent; an unknown id is a 404 agent_not_found."""
    with path_segment():
        return jsonify(api().control.agent(agent_id(agent)))


@bp.post("/swarm/regroup")
@tag(["swarm"])
@requires_role(OPERATOR)
@idempotent
@document_errors(*COMMAND_ERRORS)
@document_response(Regroup, 202)
async def regroup(command_id: str) -> Any:
    """Call every dispersed agent home. Role: operator."""
    a = api()
    with a.counted("regroup", "", command_id) as counted:
        async with a.safeguard.command():
            result = await a.control.regroup(command_id=command_id, by=attribution())
        counted.size = result["regrouped"]
    await a.command_done(regroup_record(result["command_id"], result["regrouped"]))
    return jsonify(result), 202


@bp.get("/frequency")
@tag(["swarm"])
@requires_session
@document_response(FrequencyStats)
async def frequency() -> Any:
    """The canonical frequency and the swarm's lowest, highest and mean, in Hz."""
    return jsonify(api().control.frequency_stats())


@bp.get("/spheres")
@tag(["spheres"])
@requires_session
@document_response(list[Sphere])
async def spheres() -> Any:
    """The 15 spheres, in agent-id order."""
    return jsonify([_sphere(s) for s in api().settings.catalog.spheres])


@bp.get("/spheres/<name>")
@tag(["spheres"])
@requires_session
@document_errors(404)
@document_response(SphereDetail)
async def sphere(name: str) -> Any:
    """One sphere with its agents; an unknown name is a 404 sphere_not_found."""
    with path_segment():
        members = api().control.agents(sphere=name)
    by_status: dict[str, int] = {}
    for member in members:
        by_status[member["status"]] = by_status.get(member["status"], 0) + 1
    sphere = api().settings.catalog.by_name[name]
    return jsonify({**_sphere(sphere), "by_status": by_status, "agents": members})


def catalog_blueprint(catalog: Catalog, max_hz: float) -> Blueprint:
    """The routes whose requests name this deployment's spheres or are bounded by its FREQUENCY
    (so made per app): the agent list, dispersal and retune."""
    catalog_bp = Blueprint("swarm_commands", __name__, url_prefix="/api/v1")
    agent_query, disperse_model = agent_filter(catalog), disperse_body(catalog)

    @catalog_bp.get("/swarm/agents")
    @tag(["swarm"])
    @requires_session
    @query(agent_query)
    @document_response(list[Agent])
    async def agents(query: Any) -> Any:
        """Every agent, in id order; ``sphere`` and ``status`` filter the list."""
        body = api().agents_json(query.sphere, query.status)
        return current_app.response_class(body, content_type="application/json")

    @catalog_bp.post("/swarm/disperse")
    @tag(["swarm"])
    @requires_role(OPERATOR)
    @json_body(disperse_model)
    @idempotent
    @document_errors(*COMMAND_ERRORS)
    @document_response(Dispersal, 202)
    async def disperse(body: Any, command_id: str) -> Any:
        """Disperse part of the swarm, or of one sphere: partial 20 %, sectoral 50 %, total 100 %.
        Role: operator.

        Refused with 423 brise_circuit_open while the Brise-Circuit is open; a flood of commands
        or of total dispersals opens it.
        """
        a = api()
        with a.counted("disperse", body.level, command_id) as counted:
            async with a.safeguard.command(total=body.level == "total"):
                result = await a.control.disperse(body.level, body.sphere, command_id=command_id,
                                                  by=attribution())
            counted.size = result["dispersed"]
        await a.command_done(dispersal_record(result["command_id"], result["level"],
                                              result["sphere"], result["dispersed"]))
        return jsonify(result), 202

    @catalog_bp.put("/swarm/agents/<agent>/frequency")
    @tag(["swarm"])
    @requires_role(OPERATOR)
    @document_errors(404, *COMMAND_ERRORS)
    @json_body(retune_body(max_hz))
    @idempotent
    @document_response(Agent)
    async def retune(agent: str, body: Any, command_id: str) -> Any:
        """Retune one agent to a frequency in [432, FREQUENCY] Hz; returns the agent once applied.
        Role: operator."""
        a = api()
        ident = agent_id(agent)
        with path_segment():
            a.control.agent(ident)   # an unknown agent is a 404 before it counts as a command
        with a.counted("retune", "", command_id) as counted:
            async with a.safeguard.command():
                result = await a.control.retune(ident, body.frequency, command_id=command_id,
                                                by=attribution())
            counted.size = 1
        await a.command_done(retune_record(command_id, ident, result["frequency"]))
        return jsonify(result)

    return catalog_bp
