"""``scripts/chaos.py --mode short``: the split topology on its own throwaway Redis and
PostgreSQL, a leader killed, Redis restarted, PostgreSQL stopped, a session revoked and a ws
process killed, under commands and subscribers: no accepted command lost or applied twice.
(The full six-minute mode is a benchmark, run by hand.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .servers import need_pg_bin, need_redis_server

ROOT = Path(__file__).resolve().parent.parent


def test_the_short_chaos_run_loses_and_duplicates_no_command():
    need_redis_server()
    need_pg_bin()
    # The project's Node load client (scripts/test.sh makes sure Node is here): SDK clients on
    # the delta stream, reconnecting through the faults as a frontend would.
    subscribers = "10"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "chaos.py"), "--mode", "short",
                           "--subscribers", subscribers, "--rate", "4", "--json"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    table = done.stdout
    assert figures["accepted"] >= 20, table
    assert figures["lost"] == 0 and figures["duplicated"] == 0, table
    assert figures["applied_once"] == figures["accepted"] == figures["in_events_table"], table
    assert figures["refused_while_only_postgresql_down"] == 0, table
    faults = {f["fault"]: f for f in figures["faults"]}
    assert len(faults) == 5, table
    # Every fault was survived: the stream came back after the leader's death and Redis's
    # restart, and the revoked session's streams were closed 4401 on both ws processes. (How
    # fast is the full mode's business, a benchmark: this machine may be busy.)
    assert faults["a session revoked (4401 on both ws)"]["note"] == "2/2 closed 4401", table
    for name, fault in faults.items():
        if name.startswith(("engine leader kill", "Redis restarted")):
            assert fault["back_after_s"] is not None, table
    assert "Traceback" not in done.stderr, done.stderr


def test_the_short_sentinel_chaos_run_survives_two_primary_kills_and_loses_nothing():
    """The Sentinel scenario of issue 20: kill -9 of the Redis primary twice under commands,
    beside the other faults; the killed primary is started again on its append-only file and
    rejoins as a replica (never empty). No accepted command lost or doubled; the 503s were
    retried with their Idempotency-Key."""
    need_redis_server()
    need_pg_bin()
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "chaos.py"), "--mode", "short",
                           "--redis", "sentinel", "--subscribers", "0", "--rate", "4", "--json"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    table = done.stdout
    assert figures["accepted"] >= 20, table
    assert figures["lost"] == 0 and figures["duplicated"] == 0, table
    assert figures["applied_once"] == figures["accepted"] == figures["in_events_table"], table
    kills = [f for f in figures["faults"] if f["fault"].startswith("Redis primary kill -9")]
    assert len(kills) == 2, table
    for fault in kills:
        assert fault["note"].startswith("promoted after"), table
        assert fault["back_after_s"] is not None, table
    assert "rejoined as a replica" in kills[0]["note"], table
    assert figures["event_lag"]["batches"] > 0, table
    assert "Traceback" not in done.stderr, done.stderr
