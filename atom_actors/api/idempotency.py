"""``Idempotency-Key`` on the operators' POST and PUT endpoints (CONTRACT §2).

The same key from the same caller within IDEMPOTENCY_TTL_S gets the first answer again (same
status and body, with ``Idempotent-Replayed: true``), and the command is applied at most once,
on every API process and across a Redis failover:

* The key's record lives in the coordinator (Redis in a deployment: every API process sees it),
  under a hash of the caller's scope and the key: a key means nothing across callers, and no key
  is stored as the client sent it. The scope is the operator's pseudonym (``g.operator``, set
  by ``requires_role``), the audit's name for the person (:func:`caller_scope`).
* The record is made before the command is sent, holding the command id the command is sent
  with. With REDIS_MIN_ACKS the command's write is acknowledged by replicas (WAIT), and Redis
  replicates in order, so a replica that has the command has its key's record too.
* Only a success (2xx) is kept as the answer. An error releases the record: the command was not
  applied (422, 423 ...) or its outcome is unknown (503): the retry sends it again **with the
  same command id**, which the engine applies at most once (``cluster.Commander``).
* A request with the key of one still running answers 409 ``idempotency_key_in_use`` (a holder
  that died is given up after HOLD_S); the key with another method, path or body answers 409
  ``idempotency_key_reused``; a key that is not 1-128 printable characters answers 400.

Errors: the coordinator unreachable while looking the key up → 503 (nothing was run). Unreachable
when the answer is kept: the answer is given all the same (the command is accepted); a retry
then sends the command again under its first command id.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import re
from collections.abc import Callable
from functools import wraps
from typing import Any, Final, TypeVar

import trio
from quart import current_app, g, request

from ..coordinator import BUSY, MISMATCH, REPLAY, Coordinator
from ..engine import new_command_id
from ..errors import BackendUnavailable, IdempotencyKeyInUse, IdempotencyKeyInvalid, IdempotencyKeyReused

log = logging.getLogger("atom_actors.api")

HEADER: Final = "Idempotency-Key"
REPLAYED_HEADER: Final = "Idempotent-Replayed"
IDEMPOTENCY_TTL_S: Final = 600.0     # 10 minutes (CONTRACT §2)
HOLD_S: Final = 5.0                  # longer than any one command request takes (its calls are bounded)
RELEASE_S: Final = 1.0
_KEY = re.compile(r"[\x20-\x7e]{1,128}")
F = TypeVar("F", bound=Callable[..., Any])


def caller_scope() -> str:
    """Whose keys these are: the operator's pseudonym (every (O) route has one); a Sceau
    session's id, should a viewer's route ever take keys."""
    operator = getattr(g, "operator", None)
    if operator is not None:
        return f"operator:{operator.pseudonym}"
    session = getattr(g, "session", None)
    return f"session:{session.id}" if session is not None else "anonymous"


def record_id(scope: str, key: str) -> str:
    return hashlib.sha256(f"{scope}\n{key}".encode()).hexdigest()


def fingerprint(method: str, path: str, body: Any) -> str:
    """What makes a request the same request: method, path and the body as validated."""
    text = body.model_dump_json() if hasattr(body, "model_dump_json") else ""
    return hashlib.sha256(f"{method} {path}\n{text}".encode()).hexdigest()


def idempotent(keys: Callable[[], Coordinator]) -> Callable[[F], F]:
    """Honour ``Idempotency-Key`` on a route; ``keys()`` is where the records are (the API's
    coordinator). Put it below ``json_body`` (it reads ``body=``) and the caller check. A route
    that takes ``command_id`` is handed the command id to send its command with: a new one, or
    the one its key's record holds."""

    def decorator(func: F) -> F:
        takes_command_id = "command_id" in inspect.signature(func).parameters

        @wraps(func)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            if takes_command_id:
                kwargs["command_id"] = new_command_id()
            key = request.headers.get(HEADER)
            if key is None:
                return await func(*args, **kwargs)
            if not _KEY.fullmatch(key):
                raise IdempotencyKeyInvalid()
            coordinator = keys()
            record = record_id(caller_scope(), key)
            fp = fingerprint(request.method, request.path, kwargs.get("body"))
            claim = await coordinator.idempotency_claim(
                record, fp, kwargs.get("command_id", ""), IDEMPOTENCY_TTL_S, HOLD_S)
            if claim.state == REPLAY:
                return _replay(claim.status, claim.body)
            if claim.state == MISMATCH:
                raise IdempotencyKeyReused()
            if claim.state == BUSY:
                raise IdempotencyKeyInUse()
            if takes_command_id:
                kwargs["command_id"] = claim.command_id
            try:
                response = await current_app.make_response(await func(*args, **kwargs))
            except BaseException:
                await _release(coordinator, record)
                raise
            if not 200 <= response.status_code < 300:
                await _release(coordinator, record)
                return response
            body = await response.get_data()
            try:
                kept = await coordinator.idempotency_answer(record, fp, claim.command_id,
                                                            response.status_code, body,
                                                            IDEMPOTENCY_TTL_S)
            except BackendUnavailable as exc:
                log.warning("an Idempotency-Key's answer was not kept: %s", exc)
                return response
            if (kept.status, kept.body) != (response.status_code, body):
                return _replay(kept.status, kept.body)   # another request's answer came first
            return response

        return wrapper  # type: ignore[return-value]

    return decorator


def _replay(status: int, body: bytes) -> Any:
    response = current_app.response_class(body, status=status, content_type="application/json")
    response.headers[REPLAYED_HEADER] = "true"
    return response


async def _release(coordinator: Coordinator, record: str) -> None:
    """Let the key's next request run the command again (bounded, even when cancelled)."""
    with trio.CancelScope(shield=True), trio.move_on_after(RELEASE_S):
        try:
            await coordinator.idempotency_release(record)
        except BackendUnavailable:
            pass   # the hold lapses by itself after HOLD_S
