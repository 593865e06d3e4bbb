"""The audit's names for people and its keyed hash chain (CONTRACT §2.4), pure.

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
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

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


# -- the keyed hash chain of the records ---------------------------------------------------------
#
# Each record's link is HMAC-SHA256, under derive_key(SECRET_KEY, "audit-chain") (never stored),
# of the link before it and of the record's canonical content. Someone who can write the database
# but does not hold SECRET_KEY can change, insert or remove a record, but cannot make the links
# after it hold again: a plain hash chain they could simply recompute (as CloudTrail signs its
# digest files, the key is what makes the chain evidence).

CHAIN_PURPOSE = "audit-chain"
LINK_BYTES = 32
# The link "before" the first record of the chain: a constant, so that a chain whose first
# records were removed does not start from it any more and is found broken.
GENESIS = bytes(LINK_BYTES)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True, slots=True)
class ChainRow:
    """A record as the chain sees it: exactly the values that read back from the store (the time
    in integer microseconds, as a timestamptz holds it; the payload as jsonb gives it back), and
    its stored ``link`` (None: written before the chain began, or by someone without the key)."""

    id: int
    at_us: int
    kind: str
    role: str | None
    operator: str | None
    payload: dict[str, Any]
    link: bytes | None


@dataclass(frozen=True, slots=True)
class ChainState:
    """What a walk of the audit's keyed hash chain found (CONTRACT §2.4): ``records`` walked,
    whether every link holds, and the first record whose link does not (None if all hold)."""

    records: int
    verified: bool
    first_broken: int | None = None


def micros(t: float) -> int:
    """Unix seconds as the integer microseconds a timestamptz keeps (for the memory store)."""
    return round(t * 1_000_000)


def micros_of(moment: datetime) -> int:
    """A timestamptz as read back (an aware datetime) in integer microseconds since the epoch:
    exact, where ``timestamp()`` goes through a float."""
    return (moment - _EPOCH) // timedelta(microseconds=1)


def canonical_json(value: object) -> str:
    """One text for one value: sorted keys, no spaces, UTF-8 as is, no NaN."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)


def content(row: ChainRow) -> bytes:
    """The canonical content of a record: its id (so it cannot be moved), time, kind, role,
    operator and payload, as canonical JSON."""
    return canonical_json({"id": row.id, "at_us": row.at_us, "kind": row.kind, "role": row.role,
                           "operator": row.operator, "payload": row.payload}).encode()


def link(key: bytes, prev_link: bytes, record_content: bytes) -> bytes:
    """The link of a record whose content is ``record_content``, after ``prev_link``.

    ``prev_link`` has a fixed length, so (prev, content) pairs cannot collide by concatenation."""
    return hmac.new(key, prev_link + record_content, hashlib.sha256).digest()


def walk(rows: Iterable[ChainRow], key: bytes, *, prev: bytes | None = None,
         head: tuple[int, bytes] | None = None) -> ChainState:
    """Check the links of ``rows`` (oldest first) under ``key``.

    ``prev`` is the stored link of the record just before ``rows`` (a window of the newest
    records); None walks from the chain's beginning: from :data:`GENESIS`, the records before the
    first linked one being older than the chain (written before its migration) and not counted.
    Once the chain has begun, a record without a link is broken too.

    Each record is checked against the stored link of the one before it, so a record changed is
    the one found, and a record inserted or removed breaks the one it precedes (or follows):
    ``first_broken`` names the first. ``head`` is the newest link as kept elsewhere (Redis):
    ``(id, link)`` must be among ``rows`` with that link, else the records from it on were cut
    off (or it was changed) and ``first_broken`` is that id, if nothing broke before.
    """
    expected = GENESIS if prev is None else prev
    started = prev is not None
    walked = 0
    first_broken: int | None = None
    head_found = head is None
    for row in rows:
        if row.link is None and not started:
            continue   # older than the chain
        started = True
        walked += 1
        if row.link is None or not hmac.compare_digest(
                row.link, link(key, expected, content(row))):
            if first_broken is None:
                first_broken = row.id
        if head is not None and row.id == head[0]:
            head_found = row.link is not None and hmac.compare_digest(row.link, head[1])
        expected = row.link if row.link is not None else expected
    if not head_found and first_broken is None:
        first_broken = head[0] if head is not None else None
    return ChainState(walked, first_broken is None, first_broken)
