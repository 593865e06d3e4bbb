"""The API's request and response shapes (CONTRACT.md §2), as pydantic models.

Request models validate strictly (a string is not a number, ``true`` is not an integer) and drive
the 422 errors; response models only document what the routes return, in ``/openapi.json``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, create_model

from ..catalog import Catalog
from ..config import MIN_HZ
from ..swarm import STATUS_NAMES

Level = Literal["partial", "sectoral", "total"]
Status = Literal[STATUS_NAMES]  # type: ignore[valid-type]
SafeguardState = Literal["closed", "open", "half_open"]


def _integral(value: Any) -> Any:
    # JSON has one number type: 2000.0 is an integer to JSON Schema, so accept it as 2000.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


JsonInt = Annotated[int, BeforeValidator(_integral)]


class _Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


# -- requests ---------------------------------------------------------------------------------------

class ActivateBody(_Request):
    """A Sceau touch: how long the finger stayed on the seal."""

    duration_ms: JsonInt = Field(description="milliseconds of touch; below SCEAU_DURATION is refused (400)")


def _sphere_name(catalog: Catalog) -> Any:
    """A sphere's name: one of this deployment's catalog."""
    return Optional[Literal[tuple(s.name for s in catalog.spheres)]]  # noqa: UP007 - built at run time


def disperse_body(catalog: Catalog) -> type[_Request]:
    """The dispersal body, whose sphere is one of ``catalog``'s."""
    return create_model(
        "DisperseBody", __base__=_Request, __doc__="A dispersal: of the whole swarm, or of one sphere.",
        level=(Level, Field(description="partial = 20 %, sectoral = 50 %, total = 100 %")),
        sphere=(_sphere_name(catalog), Field(None, description="disperse only this sphere's agents")),
    )


def agent_filter(catalog: Catalog) -> type[_Request]:
    """The agent list's query, whose sphere is one of ``catalog``'s."""
    return create_model(
        "AgentFilter", __base__=_Request, __doc__="Optional filters of the agent list.",
        sphere=(_sphere_name(catalog), None), status=(Optional[Status], None),  # noqa: UP007
    )


def retune_body(max_hz: float) -> type[_Request]:
    """The retune body, bounded by this deployment's FREQUENCY."""
    return create_model(
        "RetuneBody", __base__=_Request, __doc__="A new frequency for one agent.",
        frequency=(float, Field(ge=MIN_HZ, le=max_hz, allow_inf_nan=False,
                                description=f"Hz, in [{MIN_HZ:g}, {max_hz:g}]")),
    )


# -- responses --------------------------------------------------------------------------------------

class ErrorBody(BaseModel):
    """An error: a stable code and a sentence for people."""

    error: str
    detail: str


class ValidationErrorBody(ErrorBody):
    """A request with bad fields: each field's dotted name and what is wrong with it."""

    fields: dict[str, str]


class Position(BaseModel):
    x: float
    y: float
    z: float


class Agent(BaseModel):
    """One agent of the swarm."""

    id: int
    sphere: str
    name: str
    function: str
    frequency: float
    status: Status
    position: Position


class SessionBody(BaseModel):
    """A new Sceau session; the token is also in the X-Sceau-Session header."""

    session: str
    expires_at: float = Field(description="Unix seconds")
    frequency: float


class Dispersal(BaseModel):
    """A dispersal was sent to the sphere actors."""

    level: Level
    sphere: str | None
    dispersed: int
    command_id: str


class Regroup(BaseModel):
    """Every dispersed agent was called home."""

    regrouped: int
    command_id: str


class FrequencyStats(BaseModel):
    """The swarm's frequencies, in Hz."""

    canon: float
    min: float
    max: float
    mean: float


class Sphere(BaseModel):
    """A sphere of the catalog."""

    name: str
    index: int
    count: int
    color: str
    first_agent: int
    functions: list[str]


class SphereDetail(Sphere):
    """A sphere, its agents and how many are in each status."""

    by_status: dict[str, int]
    agents: list[Agent]


class SafeguardWindow(BaseModel):
    commands: int
    total_dispersals: int


class SafeguardLimits(BaseModel):
    max_commands: int
    max_total: int
    window_s: float
    cooldown_s: float


class SafeguardStatus(BaseModel):
    """The Brise-Circuit: its state, why, and what it counts."""

    state: SafeguardState
    reason: str | None
    since: float | None = Field(description="Unix seconds of the last change")
    retry_after_s: float | None
    trips: int
    window: SafeguardWindow
    limits: SafeguardLimits


class ResetPending(BaseModel):
    """A reset that waits for more guardians (SAFEGUARD_RESET_QUORUM)."""

    state: SafeguardState
    approvals: int = Field(description="distinct guardians who asked within the last 60 s")
    needed: int = Field(description="SAFEGUARD_RESET_QUORUM")
    expires_in_s: float = Field(description="seconds until the oldest approval no longer counts")


class AuditChain(BaseModel):
    """The keyed hash chain over the listed records (CONTRACT §2.4)."""

    records: int
    verified: bool
    first_broken: int | None = Field(description="the id of the first record whose link fails")


class AuditRecord(BaseModel):
    """A command or Brise-Circuit record; its other fields are what it is about (sizes, states)."""

    model_config = ConfigDict(extra="allow")

    id: int
    at: float = Field(description="Unix seconds")
    kind: Literal["dispersal", "regroup", "retune", "safeguard"]
    command_id: str | None
    role: Literal["operator", "guardian"] | None
    operator: str | None = Field(description="the operator's pseudonym; null: the server itself")


class AuditPage(BaseModel):
    """The newest audit records, newest first, and the chain's state."""

    records: list[AuditRecord]
    chain: AuditChain


class SwarmSummary(BaseModel):
    """The swarm at a glance."""

    agents: int
    by_status: dict[str, int]
    by_sphere: dict[str, int]
    tick_hz: int
    ticking: bool
    subscribers: int
    safeguard: SafeguardState


class Health(BaseModel):
    """The process is alive."""

    status: Literal["ok"]
    ticking: bool
    ws_port: int | None = None       # where this deployment's WebSocket server listens, for the viewer
    sceau_duration_ms: int           # how long the Sceau must be held


class Ready(BaseModel):
    """Every part answers."""

    status: Literal["ready"]
    checks: dict[str, str]


class NotReady(ErrorBody):
    """A part does not answer: ``checks`` says which."""

    checks: dict[str, str]
