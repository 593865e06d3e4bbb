"""The routes of CONTRACT.md §2, one blueprint per concern; ``BLUEPRINTS`` in registration order."""

from . import audit, meta, safeguard, sessions, swarm

BLUEPRINTS = (meta.bp, sessions.bp, swarm.bp, safeguard.bp, audit.bp)
