"""The Quart-Trio application: routes, CORS, and the one error boundary.

Every error leaves as ``{"error": code, "detail": sentence}`` JSON (CONTRACT.md §2):

* an :class:`~atom_actors.errors.AtomError` by its ``code`` and ``status`` (422 adds ``fields``;
  423 and 429 add ``Retry-After``; an operator's 401 adds ``WWW-Authenticate: Bearer``);
* an HTTP error of the framework (404 unknown route, 405 wrong method, 413 body too large) by
  its status;
* anything else as 500 ``internal_error``, logged here, with no traceback to the client.

The API serves no WebSocket: an upgrade sent to its port is answered 404 JSON before Quart
routes it (``hyperworker.http_only``), so no handler ever runs outside a request context
(issue 24).
"""

from __future__ import annotations

import json
import logging
import math
import re
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from quart import Response, current_app, has_request_context, jsonify, request
from quart_schema import Info, OpenAPIProvider, QuartSchema, hide
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from ..errors import (AtomError, CommandError, HostNotAllowed, IdempotencyKeyInUse, OperatorError,
                      OperatorTokenInvalid, OriginRefused, RateLimited, RequestInvalid,
                      SafeguardOpen)
from ..logs import client_text
from ..peers import ClientAddresses
from ..origins import OriginPolicy
from .cors import CorsPolicy
from .docs import render_docs
from .ratelimit import SessionLimits
from .routes import BLUEPRINTS
from .routes.swarm import catalog_blueprint
from .web import BEARER_SCHEME, SCEAU_SCHEME, SESSION_HEADER, Api, ApiInput, api, no_content

log = logging.getLogger("atom_actors.api")

MAX_BODY_BYTES = 64 * 1024
DESCRIPTION = ("The operators' REST API of AT·OM's swarm, L'Essaim: Sceau sessions, the swarm and "
               "its spheres, dispersal behind the Brise-Circuit.")


def create_app(parts: ApiInput) -> QuartTrio:
    """The API of a running AT·OM over ``parts``: the swarm, sessions, the Brise-Circuit, ..."""
    app = QuartTrio("atom_actors.api", static_folder=None)
    # Werkzeug's routing answers "//" and a missing trailing slash with a redirect built from the
    # Host header: never (issue 13). Such a path is a 404 like any unknown one.
    app.url_map.merge_slashes = False
    app.url_map.strict_slashes = False
    app.config.update(MAX_CONTENT_LENGTH=MAX_BODY_BYTES, PROPAGATE_EXCEPTIONS=False)
    settings = parts.settings
    app.extensions["atom"] = Api(
        parts, cors=CorsPolicy(OriginPolicy(settings.cors_origins, settings.allowed_hosts)),
        buckets=SessionLimits(settings.session_global_burst, settings.session_global_per_s),
        addresses=ClientAddresses(settings.trusted_proxy_hops, settings.trusted_proxies),
        **({"keys": parts.coordinator} if parts.coordinator is not None else {}))
    QuartSchema(app, info=Info(title="AT·OM swarm API", version=_version(),
                               description=DESCRIPTION),
                openapi_provider_class=ContractOpenAPI, openapi_path=None, swagger_ui_path=None,
                redoc_ui_path=None, scalar_ui_path=None,
                security_schemes={
                    # A viewer's Sceau session (POST /sceau/activate).
                    SCEAU_SCHEME: {"type": "apiKey", "in_": "header", "name": SESSION_HEADER},
                    # An operator's access token from the deployment's identity provider (§2.3).
                    BEARER_SCHEME: {"type": "http", "scheme": "bearer", "bearer_format": "JWT"}})
    for blueprint in (*BLUEPRINTS, catalog_blueprint(settings.catalog, settings.frequency)):
        app.register_blueprint(blueprint)
    app.add_url_rule("/openapi.json", "openapi", _openapi, methods=["GET"])
    app.before_request(_cors_gate)
    app.after_request(_cors_headers)
    app.register_error_handler(AtomError, _atom_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)
    return app


# -- CORS -------------------------------------------------------------------------------------------

async def _cors_gate() -> Response | None:
    """Refuse Hosts not on ALLOWED_HOSTS and foreign origins; answer preflights of listed ones."""
    cors = api().cors
    if not cors.host_allowed(request.headers.get("Host")):
        raise HostNotAllowed(request.headers.get("Host") or "")
    origin = request.headers.get("Origin")
    if not cors.acceptable(origin, request.host):
        raise OriginRefused(origin or "")
    if request.method == "OPTIONS" and origin is not None \
            and "Access-Control-Request-Method" in request.headers:
        response = no_content()
        response.headers.update(cors.preflight_headers(origin))
        return response
    return None


async def _cors_headers(response: Response) -> Response:
    origin = request.headers.get("Origin")
    response.headers.update(api().cors.headers(origin))
    response.vary.add("Origin")
    if request.path.startswith("/api/"):
        # Answers carry session tokens and live state: no cache may keep them.
        response.headers.setdefault("Cache-Control", "no-store")
    return response


# -- the error boundary -----------------------------------------------------------------------------

def error_response(status: int, code: str, detail: str, **extra: Any) -> Response:
    response = jsonify({"error": code, "detail": detail, **extra})
    response.status_code = status
    return response


async def _atom_error(exc: AtomError) -> Response:
    extra: dict[str, Any] = {}
    if isinstance(exc, RequestInvalid):
        extra["fields"] = exc.fields
    elif isinstance(exc, CommandError) and exc.status == 422:
        extra["fields"] = {exc.field: exc.detail}
    response = error_response(exc.status, exc.code, exc.detail, **extra)
    if isinstance(exc, SafeguardOpen | RateLimited | IdempotencyKeyInUse):
        response.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
    if isinstance(exc, OperatorError) and exc.status == 401:
        # RFC 6750 §3: a 401 names the scheme; a token that was sent and refused is invalid_token.
        response.headers["WWW-Authenticate"] = (
            'Bearer realm="atom", error="invalid_token"' if isinstance(exc, OperatorTokenInvalid)
            else 'Bearer realm="atom"')
    if exc.status >= 500:
        # str(exc): the whole story (a backend's address, its driver's message), for the log only.
        log.error("%s %s answered %d %s: %s", client_text(request.method), _rule(), exc.status,
                  exc.code, exc)
    return response


async def _http_error(exc: HTTPException) -> Response:
    status = exc.code or 500
    if status < 400:
        # A routing redirect (RequestRedirect) would name the Host header: answer it as unknown.
        status, exc = 404, NotFound()
    if status >= 500:
        return await _unexpected(getattr(exc, "original_exception", None) or exc)
    if status == 404:
        detail = f"there is no {request.path[:200]}"
    elif isinstance(exc, MethodNotAllowed):
        detail = f"{request.method} is not allowed on {request.path[:200]}"
    else:
        detail = exc.description or exc.name
    response = error_response(status, _snake(exc.name), detail)
    if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
        response.headers["Allow"] = ", ".join(exc.valid_methods)
    return response


async def _unexpected(exc: BaseException) -> Response:
    log.error("%s %s failed", client_text(request.method) if has_request_context() else "-",
              _rule(), exc_info=exc)
    return error_response(500, "internal_error",
                          "the server failed to answer this request; the failure is logged")


def _rule() -> str:
    # The route pattern, not the path: a path may carry what a client typed.
    if not has_request_context():
        return "(no request)"
    return request.url_rule.rule if request.url_rule is not None else "(no route)"


def _snake(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def _version() -> str:
    try:
        return version("atom_actors")
    except PackageNotFoundError:
        return "0"


# -- OpenAPI ----------------------------------------------------------------------------------------

RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying",
                               "schema": {"type": "integer", "minimum": 1}}}


@hide
async def _openapi() -> Response:
    provider: ContractOpenAPI = current_app.extensions["QUART_SCHEMA"].openapi_provider
    return current_app.response_class(provider.document(), content_type="application/json")


IDEMPOTENCY_PARAMETER = {
    "name": "Idempotency-Key", "in": "header", "required": False,
    "description": "the same key from the same caller within 10 minutes gets the first answer "
                   "again and the command is applied at most once",
    "schema": {"type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[ -~]+$"}}


class ContractOpenAPI(OpenAPIProvider):
    """quart-schema's document, completed with what its decorators cannot say: response headers
    (Retry-After, X-Sceau-Session), the 204 of a revocation, bodies that are required, and SCEAU_DURATION as the least
    ``duration_ms`` (a shorter touch is answered 400 sceau_too_short, as §2 says, not 422).

    Built once, on first use (19 ms of CPU each time it is built: issue 24), and served from
    memory: the routes do not change once the app serves."""

    _built: dict[str, Any] | None = None
    _document: bytes | None = None
    _docs_page: str | None = None

    def schema(self) -> dict[str, Any]:
        if self._built is None:
            self._built = self._build()
        return self._built

    def document(self) -> bytes:
        """The document as the JSON of ``/openapi.json``."""
        if self._document is None:
            self._document = json.dumps(self.schema(), separators=(",", ":")).encode()
        return self._document

    def docs_page(self) -> str:
        """The /docs page (:func:`~.docs.render_docs`) of the document."""
        if self._docs_page is None:
            self._docs_page = render_docs(self.schema())
        return self._docs_page

    def _build(self) -> dict[str, Any]:
        schema = super().schema()
        activate = schema["paths"]["/api/v1/sceau/activate"]["post"]["requestBody"]
        activate["content"]["application/json"]["schema"]["properties"]["duration_ms"]["minimum"] = \
            self._app.extensions["atom"].settings.sceau_duration
        for path, operations in schema["paths"].items():
            for method, op in operations.items():
                responses = op["responses"]
                if "requestBody" in op:
                    op["requestBody"]["required"] = True
                for status in ("409", "423", "429", 409, 423, 429):
                    if status in responses:
                        responses[status]["headers"] = RETRY_AFTER
                if 409 in responses or "409" in responses:   # the idempotent routes (web.idempotent)
                    op.setdefault("parameters", []).append(IDEMPOTENCY_PARAMETER)
                if path.endswith("/sceau/activate") and 201 in responses:
                    responses[201]["headers"] = {SESSION_HEADER: {
                        "description": "the session token", "schema": {"type": "string"}}}
                if path.endswith("/sceau/session") and method == "delete":
                    responses[204] = {"description": "the session is revoked"}
                if not any(str(code).startswith("2") for code in responses):
                    responses[200] = {"description": "success"}
        return schema
