"""An operator for the scripts' own servers (the benchmarks, the soak, the chaos run).

Commands are operators' (CONTRACT §2.3): every server a script starts gets OPERATOR_JWT_SECRET
from :func:`operator_env`, and the script sends :func:`operator_headers`, a token with both roles
signed with it, as ``atom operator-token`` would print. Import it with the scripts' folder on
``sys.path`` (each script puts it there).
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from atom_actors.config import load_settings
from atom_actors.operators import ROLES, mint

SECRET = "scripts-operator-secret-" + "k" * 24
TTL_S = 24 * 3600.0


def operator_env() -> dict[str, str]:
    """The setting that makes a server accept the scripts' operator tokens."""
    return {"OPERATOR_JWT_SECRET": SECRET}


def operator_token(env: Mapping[str, str], *, subject: str = "bench-operator") -> str:
    """A token for a server started with ``env`` (its issuer, audience and roles claim)."""
    settings = load_settings({**env, **operator_env()}, env_file=None)
    return mint(SECRET, ROLES, now=time.time(), ttl_s=TTL_S, settings=settings, subject=subject)


def operator_headers(env: Mapping[str, str], **kw: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {operator_token(env, **kw)}"}
