"""Operators' tokens for the tests (CONTRACT §2.3): minted here, with keys the tests make.

Every test deployment (``conftest.make_settings``, ``servers.atom_env``) accepts HS256 tokens
signed with OPERATOR_SECRET, so a test that commands the swarm sends :func:`bearer`. The token
tests mint ES256/RS256/EdDSA tokens with :func:`new_key` and serve the public keys from a real
HTTP server on loopback (:func:`serve_jwks`).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

OPERATOR_SECRET = "operator-secret-of-the-tests-0123456789abcdef"
AUDIENCE = "authenticated"
BOTH = ("operator", "guardian")
DAY_S = 86400.0


def claims(roles: Iterable[str] | str | None = ("operator",), *, subject: str = "op-1",
           ttl_s: float = DAY_S, now: float | None = None, roles_claim: str = "user_role",
           **extra: Any) -> dict[str, Any]:
    """Claims as Supabase Auth writes them: sub, aud, iat, exp, aal, email, phone, session_id,
    and the roles at ``roles_claim`` (None: no roles claim at all)."""
    now = time.time() if now is None else now
    found: dict[str, Any] = {"sub": subject, "aud": AUDIENCE, "iat": int(now),
                             "exp": int(now + ttl_s), "aal": "aal1", "role": "authenticated",
                             "email": f"{subject}@example.org", "phone": "+15555550123",
                             "session_id": str(uuid.uuid4())}
    if roles is not None:
        holder = found
        path = roles_claim.split(".")
        for part in path[:-1]:
            holder = holder.setdefault(part, {})
        holder[path[-1]] = roles if isinstance(roles, str) else list(roles)
    found.update(extra)
    return found


def token(roles: Iterable[str] | str | None = ("operator",), *, secret: str = OPERATOR_SECRET,
          **kw: Any) -> str:
    """An HS256 token signed with the tests' OPERATOR_JWT_SECRET."""
    return jwt.encode(claims(roles, **kw), secret, algorithm="HS256")


def bearer(roles: Iterable[str] | str | None = BOTH, **kw: Any) -> dict[str, str]:
    """The Authorization header of an operator (both roles unless said)."""
    return {"Authorization": f"Bearer {token(roles, **kw)}"}


# -- public keys, and a JWKS served on loopback --------------------------------------------------

@dataclass
class Key:
    """A signing key pair: ``private`` signs, ``jwk`` is its public half as a JWKS lists it."""

    kid: str
    alg: str
    private: Any
    jwk: dict[str, Any]

    def sign(self, payload: dict[str, Any], **headers: Any) -> str:
        return jwt.encode(payload, self.private, algorithm=self.alg,
                          headers={"kid": self.kid, **headers})


def new_key(alg: str = "ES256", kid: str | None = None) -> Key:
    if alg == "ES256":
        private: Any = ec.generate_private_key(ec.SECP256R1())
        algorithm: Any = jwt.algorithms.ECAlgorithm
    elif alg == "RS256":
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        algorithm = jwt.algorithms.RSAAlgorithm
    elif alg == "EdDSA":
        private = ed25519.Ed25519PrivateKey.generate()
        algorithm = jwt.algorithms.OKPAlgorithm
    else:
        raise ValueError(alg)
    kid = kid or f"{alg.lower()}-{uuid.uuid4().hex[:8]}"
    public = json.loads(algorithm.to_jwk(private.public_key()))
    return Key(kid, alg, private, {**public, "kid": kid, "alg": alg, "use": "sig"})


@dataclass
class Jwks:
    """A JWKS server's state: what it serves and how, and the requests it saw."""

    keys: list[Key] = field(default_factory=list)
    requests: int = 0
    status: int = 200
    delay_s: float = 0.0
    body: bytes | None = None      # served instead of the keys (a hostile or broken issuer)
    url: str = ""

    def document(self) -> bytes:
        return self.body if self.body is not None else \
            json.dumps({"keys": [k.jwk for k in self.keys]}).encode()


@contextmanager
def serve_jwks(jwks: Jwks) -> Iterator[Jwks]:
    """Serve ``jwks`` at http://127.0.0.1:<free port>/.well-known/jwks.json until the block ends."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:   # noqa: N802 (http.server's name)
            jwks.requests += 1
            if jwks.delay_s:
                time.sleep(jwks.delay_s)
            body = jwks.document()
            try:
                self.send_response(jwks.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass   # the client gave up (a bounded fetch): as a real issuer would see it

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    jwks.url = f"http://127.0.0.1:{server.server_address[1]}/.well-known/jwks.json"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield jwks
    finally:
        server.shutdown()
        server.server_close()
