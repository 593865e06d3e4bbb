"""The operators' REST API (CONTRACT.md §2): Quart-Trio, served by Hypercorn's Trio worker.

Layout::

    app.py        create_app(parts): routes, CORS, the one error boundary, OpenAPI
    routes/       one blueprint per concern: meta (health, metrics, docs, viewer), sessions,
                  swarm (agents, spheres, commands), safeguard
    web.py        ApiInput (every handle the API uses, named); what the routes share: the Api
                  context, session checks, body and query parsing
    schemas.py    request and response models (pydantic)
    cors.py       the CORS policy (pure)
    ratelimit.py  token buckets for session creation (pure)
    docs.py       the /docs page, rendered from the OpenAPI document
    server.py     serve_api(parts): Hypercorn's Trio worker, in the program's trio.run

The API reaches the engine only through ``SwarmControl``.
"""

from .app import create_app
from .server import serve_api
from .web import ApiInput

__all__ = ["ApiInput", "create_app", "serve_api"]
