"""The audit's names for people (CONTRACT §2.4), pure.

An operator is recorded under a **pseudonym**: the first 16 hex digits of HMAC-SHA256 over the
token's ``iss`` and ``sub``, under a key derived from SECRET_KEY. The same person gets the same
pseudonym on every process of a deployment; telling who it is takes SECRET_KEY and the identity
provider's user list. No claim of a token is kept: only this.

Every key used here is derived from SECRET_KEY for its one purpose (:func:`derive_key`), so the
session signatures, the pseudonyms and the audit chain never share a key.
"""

from __future__ import annotations

import hashlib
import hmac

PSEUDONYM_HEX_DIGITS = 16


def derive_key(secret_key: str, purpose: str) -> bytes:
    """A 32-byte key for ``purpose`` (``"audit-pseudonym"``, ``"audit-chain"``) from SECRET_KEY."""
    return hmac.new(secret_key.encode(), b"atom_actors/" + purpose.encode(), hashlib.sha256).digest()


def pseudonym(key: bytes, issuer: str, subject: str) -> str:
    """The audit's name for the person ``subject`` of ``issuer``: 16 hex digits.

    ``iss`` and ``sub`` are joined by a NUL, which neither can hold, so no two pairs collide by
    concatenation."""
    digest = hmac.new(key, f"{issuer}\0{subject}".encode(), hashlib.sha256).hexdigest()
    return digest[:PSEUDONYM_HEX_DIGITS]


# Who asked for a command, as it travels with it to the engine and into its record:
# {"role": "operator" | "guardian" | None, "operator": a pseudonym | None}.
By = dict[str, str | None]
_ROLE_NAMES = ("operator", "guardian")


def checked_by(value: object) -> By | None:
    """``value`` as a :data:`By` if it is one (a role this server knows, a pseudonym of 16 hex
    digits), else None: what another process wrote in the command stream is not trusted blindly,
    and nothing else can ride along into a record."""
    if not isinstance(value, dict):
        return None
    role, operator = value.get("role"), value.get("operator")
    if role is not None and role not in _ROLE_NAMES:
        return None
    if operator is not None and not (isinstance(operator, str)
                                     and len(operator) == PSEUDONYM_HEX_DIGITS
                                     and all(c in "0123456789abcdef" for c in operator)):
        return None
    return {"role": role, "operator": operator}
