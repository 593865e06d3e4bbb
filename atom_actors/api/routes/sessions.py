"""Sceau sessions (CONTRACT.md §2.1): open one with a long enough touch, revoke it."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

import trio
from quart import Blueprint, g, jsonify, request
from quart_schema import document_response, tag

from ...errors import RateLimited, SessionRequired
from ..schemas import ActivateBody, SessionBody
from ..web import SESSION_HEADER, api, document_errors, json_body, no_content, requires_session

bp = Blueprint("sceau", __name__, url_prefix="/api/v1/sceau")


def rate_limited(func: Callable[..., Any]) -> Callable[..., Any]:
    """One token per attempt from the client's address, before anything else is read."""
    document_errors(429)(func)

    @wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        wait = api().buckets.take(client_address(), trio.current_time())
        if wait > 0:
            raise RateLimited(wait)
        return await func(*args, **kwargs)

    return wrapper


def client_address() -> str:
    """The client's address: the peer's, or, when the peer is one of TRUSTED_PROXIES, the one
    the proxies forwarded (:class:`~atom_actors.peers.ClientAddresses`)."""
    forwarded = ", ".join(request.headers.getlist("X-Forwarded-For"))
    return api().addresses.client(request.remote_addr, forwarded)


@bp.post("/activate")
@tag(["sceau"])
@rate_limited
@json_body(ActivateBody)
@document_response(SessionBody, 201)
async def activate(body: ActivateBody) -> Any:
    """Open a Sceau session.

    The touch must last at least SCEAU_DURATION milliseconds (else 400 sceau_too_short). The token
    comes back in the body and in the X-Sceau-Session header; send it in that header to every (S)
    endpoint. Each address may open 10 sessions at once, then one every 6 s (else 429).
    """
    session = await api().sessions.activate(body.duration_ms)
    response = jsonify({"session": session.token, "expires_at": round(session.expires_at, 3),
                        "frequency": session.frequency})
    response.status_code = 201
    response.headers[SESSION_HEADER] = session.token
    return response


@bp.delete("/session")
@tag(["sceau"])
@requires_session
async def revoke() -> Any:
    """Revoke the presented session (204); it is refused everywhere from then on."""
    if g.session is None:   # an operator's token: there is no session here to revoke
        raise SessionRequired()
    await api().sessions.revoke(g.session.token)
    response = no_content()
    return response
