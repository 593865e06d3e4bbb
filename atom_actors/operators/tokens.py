"""Operators' access tokens (CONTRACT §2.3), checked by a pure function.

:func:`verify` takes a token, the keys, the time and the :class:`Policy`, and returns who the
caller is (an :class:`Operator`: a pseudonym, roles, an assurance level) or raises a typed refusal.
It does no I/O: the keys come from the shell (:mod:`atom_actors.operators.keys`), and a token
signed with a key it does not know raises :class:`UnknownKey` for the shell to fetch again, so the
whole policy is tested here without a network or a clock.

What is accepted:

* the algorithm is the key's own: ES256, RS256 or EdDSA for the issuer's public keys, picked by the
  token's ``kid`` (a JWKS key whose ``alg`` or curve says another one does not verify it), or HS256
  with OPERATOR_JWT_SECRET. Never ``none``, never HMAC with a public key (HS256 is tried with the
  shared secret only, and only when one is set);
* ``exp`` in the future, ``nbf`` and ``iat`` not in the future, each with LEEWAY_S of clock skew;
  ``exp`` and ``sub`` are required;
* ``iss`` equal to OPERATOR_ISSUER when it is set, ``aud`` (a string or a list) containing
  OPERATOR_AUDIENCE;
* roles from the claim at OPERATOR_ROLES_CLAIM (a dotted path; a string or a list of strings):
  only ``operator`` and ``guardian`` mean anything here. A token without them is still a person the
  issuer vouches for: it may watch, not command.

Nothing of a token but the pseudonym leaves :func:`verify`: refusals say what is wrong in words of
our own, never a claim's value.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt
from jwt.exceptions import InvalidKeyError, PyJWKError, PyJWTError

from ..audit import derive_key, pseudonym
from ..config import Settings
from ..errors import OperatorTokenInvalid

OPERATOR, GUARDIAN = "operator", "guardian"
ROLES = (OPERATOR, GUARDIAN)
LEEWAY_S = 30.0
# The public-key algorithms a JWKS key may carry (CONTRACT §2.3), and the shared secret's.
PUBLIC_ALGORITHMS = frozenset({"ES256", "RS256", "EdDSA"})
SECRET_ALGORITHM = "HS256"
# Longer than any access token an identity provider issues (Supabase's are ~1 kB): a bigger one is
# refused before anything is decoded.
MAX_TOKEN_CHARS = 8192
DEFAULT_AAL = "aal1"


@dataclass(frozen=True, slots=True)
class Operator:
    """A verified caller: the audit's ``pseudonym`` for them, the ``roles`` this deployment knows
    that the token carries, and ``aal`` (``aal2``: signed in with a second factor)."""

    pseudonym: str
    roles: frozenset[str]
    aal: str = DEFAULT_AAL

    def has(self, role: str) -> bool:
        return role in self.roles


@dataclass(frozen=True, slots=True)
class Policy:
    """What a token must say, from the settings: ``issuer`` ("" = not pinned), ``audience``, the
    path of the roles claim, and the key that turns (iss, sub) into a pseudonym."""

    issuer: str
    audience: str
    roles_claim: tuple[str, ...]
    pseudonym_key: bytes = field(repr=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        return cls(settings.operator_issuer, settings.operator_audience,
                   tuple(settings.operator_roles_claim.split(".")),
                   derive_key(settings.secret_key, "audit-pseudonym"))


@dataclass(frozen=True, slots=True)
class Keys:
    """The keys tokens are checked with: the issuer's public keys by ``kid``, and the shared
    secret (None: HS256 is not accepted)."""

    public: Mapping[str, jwt.PyJWK] = field(default_factory=dict)
    secret: bytes | None = field(default=None, repr=False)


class UnknownKey(Exception):
    """Raised by :func:`verify` when a token names a ``kid`` the keys do not hold: the issuer may
    have rotated its keys since they were fetched."""


def verify(token: str, keys: Keys, now: float, policy: Policy) -> Operator:
    """Who the bearer of ``token`` is, at Unix time ``now``.

    Raises OperatorTokenInvalid (saying why) for a token that is malformed, signed with a wrong
    key or algorithm, out of its time, for another issuer or audience, or without a subject;
    UnknownKey when it names a public key that ``keys`` do not hold.
    """
    if len(token) > MAX_TOKEN_CHARS:
        raise OperatorTokenInvalid("it is longer than any access token")
    try:
        header = jwt.get_unverified_header(token)
    except PyJWTError:
        raise OperatorTokenInvalid("it is not a signed JWT") from None
    alg = header.get("alg")
    if alg == SECRET_ALGORITHM:
        if keys.secret is None:
            raise OperatorTokenInvalid("HS256 tokens are not accepted here")
        key: Any = keys.secret
    elif alg in PUBLIC_ALGORITHMS:
        key = _public_key(header, keys.public, alg)
    else:
        raise OperatorTokenInvalid("its algorithm is not one this server accepts")
    try:
        claims = jwt.decode(token, key, algorithms=[alg], options={
            "verify_signature": True, "verify_exp": False, "verify_nbf": False,
            "verify_iat": False, "verify_aud": False, "verify_iss": False, "verify_sub": False,
            "verify_jti": False})
    except jwt.InvalidSignatureError:
        raise OperatorTokenInvalid("its signature does not verify") from None
    except (PyJWTError, InvalidKeyError, ValueError, TypeError):
        raise OperatorTokenInvalid("it cannot be decoded") from None
    _check_time(claims, now)
    issuer = claims.get("iss")
    if policy.issuer and issuer != policy.issuer:
        raise OperatorTokenInvalid("it comes from another issuer")
    audience = claims.get("aud")
    audiences = [audience] if isinstance(audience, str) else audience
    if not isinstance(audiences, list) or policy.audience not in audiences:
        raise OperatorTokenInvalid("it is meant for another audience")
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise OperatorTokenInvalid("it names no subject")
    aal = claims.get("aal", DEFAULT_AAL)
    return Operator(pseudonym(policy.pseudonym_key, issuer if isinstance(issuer, str) else "",
                              subject),
                    roles_of(claims, policy.roles_claim),
                    aal if isinstance(aal, str) else DEFAULT_AAL)


def _public_key(header: Mapping[str, Any], public: Mapping[str, jwt.PyJWK], alg: str) -> Any:
    kid = header.get("kid")
    if kid is None and len(public) == 1:
        found = next(iter(public.values()))   # an issuer with one key may leave kid out
    elif not isinstance(kid, str):
        raise OperatorTokenInvalid("it names no key (kid)")
    elif kid not in public:
        raise UnknownKey(kid)
    else:
        found = public[kid]
    if found.algorithm_name != alg:
        raise OperatorTokenInvalid("its algorithm is not the one its key allows")
    return found.key


def _check_time(claims: Mapping[str, Any], now: float) -> None:
    exp = _number(claims, "exp")
    if exp is None:
        raise OperatorTokenInvalid("it has no expiry (exp)")
    if exp + LEEWAY_S <= now:
        raise OperatorTokenInvalid("it has expired")
    for name in ("nbf", "iat"):
        value = _number(claims, name)
        if value is not None and value - LEEWAY_S > now:
            raise OperatorTokenInvalid(f"it is not valid yet ({name})")


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise OperatorTokenInvalid(f"its {name} is not a time")
    return float(value)


def roles_of(claims: Mapping[str, Any], path: tuple[str, ...]) -> frozenset[str]:
    """The roles this server knows among those at ``path`` in ``claims`` (a string or a list of
    strings); none when the claim is absent or of another shape."""
    value: Any = claims
    for part in path:
        if not isinstance(value, Mapping) or part not in value:
            return frozenset()
        value = value[part]
    names: Iterable[Any] = [value] if isinstance(value, str) else \
        value if isinstance(value, list) else []
    return frozenset(name for name in names if name in ROLES)


def parse_jwks(body: bytes) -> dict[str, jwt.PyJWK]:
    """The signing keys of a JWKS document, by ``kid``: public EC, RSA and OKP keys whose
    algorithm is one of PUBLIC_ALGORITHMS. Keys without a kid, symmetric keys, encryption keys and
    keys this server cannot use are left out. Raises ValueError when ``body`` is not a JWKS."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise ValueError("not JSON") from None
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ValueError("no keys list")
    found: dict[str, jwt.PyJWK] = {}
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str):
            continue
        if entry.get("kty") not in ("EC", "RSA", "OKP") or entry.get("use", "sig") != "sig" \
                or "d" in entry:   # a private key published by mistake is not trusted either
            continue
        try:
            key = jwt.PyJWK(entry)
        except (PyJWKError, InvalidKeyError, ValueError, TypeError, KeyError):
            continue
        if key.algorithm_name in PUBLIC_ALGORITHMS:
            found[entry["kid"]] = key
    return found


def mint(secret: str, roles: Iterable[str], *, now: float, ttl_s: float,
         settings: Settings, subject: str | None = None, aal: str = DEFAULT_AAL) -> str:
    """An HS256 token signed with ``secret`` that :func:`verify` accepts under ``settings``: for
    ``atom operator-token``, the embedded default's link, and tests. ``subject`` defaults to a
    fresh random one (a new person each time)."""
    claims: dict[str, Any] = {"sub": subject or f"local-{uuid.uuid4()}",
                              "aud": settings.operator_audience, "iat": int(now),
                              "exp": int(now + ttl_s), "aal": aal}
    if settings.operator_issuer:
        claims["iss"] = settings.operator_issuer
    path = settings.operator_roles_claim.split(".")
    holder = claims
    for part in path[:-1]:
        holder = holder.setdefault(part, {})
    holder[path[-1]] = sorted(set(roles))
    return jwt.encode(claims, secret, algorithm=SECRET_ALGORITHM)
