"""The audit's pure core: pseudonyms and the keyed hash chain, without a database."""

from __future__ import annotations

import dataclasses
import hashlib
from datetime import datetime, timezone

from atom_actors.audit import (GENESIS, ChainRow, ChainState, canonical_json, content, derive_key,
                               link, micros, micros_of, pseudonym, walk)

KEY = derive_key("s" * 40, "audit-chain")


def chain(n: int, key: bytes = KEY, start: bytes = GENESIS) -> list[ChainRow]:
    """``n`` records linked under ``key``, ids 10, 20, ... (ids may have gaps: a sequence does)."""
    rows, prev = [], start
    for i in range(1, n + 1):
        row = ChainRow(10 * i, 1_700_000_000_000_000 + i, "dispersal", "operator", "0123456789abcdef",
                       {"command_id": f"c{i}", "dispersed": 70, "level": "partial"}, None)
        prev = link(key, prev, content(row))
        rows.append(dataclasses.replace(row, link=prev))
    return rows


def relinked(rows: list[ChainRow], key: bytes, prev: bytes = GENESIS, *, plain: bool = False
             ) -> list[ChainRow]:
    """``rows`` with every link recomputed, under ``key``, or as a plain SHA-256 chain."""
    out = []
    for row in rows:
        prev = (hashlib.sha256(prev + content(row)).digest() if plain
                else link(key, prev, content(row)))
        out.append(dataclasses.replace(row, link=prev))
    return out


def test_pseudonyms_are_stable_per_person_and_distinct_between_people():
    key = derive_key("s" * 40, "audit-pseudonym")
    alice = pseudonym(key, "https://idp.example/auth/v1", "alice")
    assert alice == pseudonym(key, "https://idp.example/auth/v1", "alice")
    assert len(alice) == 16 and int(alice, 16) >= 0
    assert alice != pseudonym(key, "https://idp.example/auth/v1", "bob")
    assert alice != pseudonym(key, "https://other.example", "alice")
    # Another deployment's SECRET_KEY names the same person differently.
    assert alice != pseudonym(derive_key("t" * 40, "audit-pseudonym"), "https://idp.example/auth/v1",
                              "alice")
    # No concatenation ambiguity between iss and sub.
    assert pseudonym(key, "ab", "c") != pseudonym(key, "a", "bc")


def test_keys_differ_by_purpose():
    assert derive_key("s" * 40, "audit-chain") != derive_key("s" * 40, "audit-pseudonym")
    assert len(KEY) == 32


def test_a_whole_chain_verifies():
    assert walk(chain(5), KEY) == ChainState(5, True, None)
    assert walk([], KEY) == ChainState(0, True, None)


def test_the_content_is_canonical():
    row = chain(1)[0]
    shuffled = dataclasses.replace(row, payload=dict(reversed(list(row.payload.items()))))
    assert content(shuffled) == content(row)
    assert canonical_json({"b": 1, "a": "é"}) == '{"a":"é","b":1}'
    # Each field counts.
    for change in ({"id": 11}, {"at_us": row.at_us + 1}, {"kind": "regroup"},
                   {"role": "guardian"}, {"operator": None}, {"payload": {"dispersed": 71}}):
        assert content(dataclasses.replace(row, **change)) != content(row), change


def test_time_in_exact_microseconds():
    moment = datetime(2026, 12, 2, 18, 0, 0, 123457, tzinfo=timezone.utc)
    assert micros_of(moment) == 1_796_234_400_123_457
    assert micros(1_796_234_400.123457) == 1_796_234_400_123_457


def test_a_changed_record_is_found_and_only_it():
    rows = chain(5)
    rows[2] = dataclasses.replace(rows[2], payload={**rows[2].payload, "dispersed": 350})
    assert walk(rows, KEY) == ChainState(5, False, 30)


def test_a_removed_record_breaks_the_next_one():
    rows = chain(5)
    del rows[1]
    assert walk(rows, KEY) == ChainState(4, False, 30)
    assert walk(chain(5)[1:], KEY) == ChainState(4, False, 20)   # the first one removed


def test_an_inserted_record_is_found():
    rows = chain(3)
    forged = dataclasses.replace(rows[1], id=25, link=hashlib.sha256(b"forged").digest())
    assert walk(rows[:2] + [forged] + rows[2:], KEY).first_broken == 25
    unlinked = dataclasses.replace(forged, link=None)   # a plain INSERT, no link at all
    assert walk(rows[:2] + [unlinked] + rows[2:], KEY) == ChainState(4, False, 25)


def test_links_recomputed_without_the_key_do_not_hold():
    """A tamperer who rewrites every link after a change, as a plain hash chain would allow, or
    under a key of their own, is found at the change; only SECRET_KEY's key makes it hold."""
    rows = chain(4)
    rows[1] = dataclasses.replace(rows[1], payload={"dispersed": 0})
    tail = relinked(rows[1:], KEY, rows[0].link, plain=True)
    assert walk(rows[:1] + tail, KEY) == ChainState(4, False, 20)
    other = derive_key("attacker's own key......................", "audit-chain")
    assert walk(rows[:1] + relinked(rows[1:], other, rows[0].link), KEY).first_broken == 20
    # The same recomputation with the right key holds: what breaks it above is the key alone.
    assert walk(rows[:1] + relinked(rows[1:], KEY, rows[0].link), KEY).verified


def test_records_older_than_the_chain_are_not_counted_but_a_later_unlinked_one_breaks_it():
    legacy = [dataclasses.replace(r, id=r.id - 5, link=None) for r in chain(2)]
    assert walk(legacy + chain(3), KEY) == ChainState(3, True, None)
    # Links erased from the first records: the chain now starts at one that does not follow GENESIS.
    rows = chain(3)
    rows[0] = dataclasses.replace(rows[0], link=None)
    assert walk(rows, KEY) == ChainState(2, False, 20)


def test_a_window_is_checked_from_the_link_before_it():
    rows = chain(6)
    assert walk(rows[3:], KEY, prev=rows[2].link) == ChainState(3, True, None)
    assert walk(rows[3:], KEY, prev=rows[1].link).first_broken == 40
    assert walk(rows[3:], KEY).first_broken == 40      # not the chain's beginning


def test_the_newest_records_cut_off_are_found_with_the_head():
    rows = chain(5)
    head = (rows[-1].id, rows[-1].link)
    assert walk(rows, KEY, head=head) == ChainState(5, True, None)
    assert walk(rows[:3], KEY) == ChainState(3, True, None)   # without the head: not seen
    assert walk(rows[:3], KEY, head=head) == ChainState(3, False, 50)
    # A head older than the newest (Redis missed the last ones) still holds.
    assert walk(rows, KEY, head=(rows[2].id, rows[2].link)).verified
    # The head's record with another link (replaced, links recomputed): found.
    assert walk(rows, KEY, head=(rows[-1].id, GENESIS)).first_broken == 50
    # A break before the head is the first one.
    rows[1] = dataclasses.replace(rows[1], kind="regroup")
    assert walk(rows[:3], KEY, head=head).first_broken == 20
