"""The alert rules (config/prometheus/) and a real Prometheus scraping a real ``atom serve``.

promtool checks the rules and runs their unit tests (config/prometheus/alerts_test.yml: each alert
firing and not firing). Then Debian's prometheus, on a free loopback port with its own storage in
a temporary directory, scrapes ``atom serve`` every second with the rules loaded, and the test
asks it through its HTTP API what it sees: the target up, frames composed at about 60 a second,
every rule loaded and healthy, and an alert firing for real once the Brise-Circuit opens.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import yaml

from tests.atom_process import running_atom
from tests.operators import bearer
from tests.servers import atom_env as servers_env
from tests.servers import free_port, skip

ROOT = Path(__file__).resolve().parent.parent
RULES_DIR = ROOT / "config" / "prometheus"
ALERTS = RULES_DIR / "alerts.yml"
# An escalation ends the engine process at once: no live process shows this counter, ever.
ONLY_AFTER_AN_ESCALATION = {"atom_supervisor_escalations_total"}
# Served by the processes of a Redis deployment only (their Redis parts'): checked there.
ONLY_WITH_REDIS = {"atom_redis_primary", "atom_redis_primary_changes_total"}


def tool(name: str) -> str:
    found = shutil.which(name)
    if not found:
        skip(f"{name} is not installed (.ci/run installs Debian's prometheus package)")
    return found


def alert_rules() -> dict[str, str]:
    """name → expression of every alert in alerts.yml."""
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"]}


def test_the_rules_pass_promtool_check() -> None:
    checked = subprocess.run([tool("promtool"), "check", "rules", str(ALERTS)],
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in checked.stdout


def test_the_rules_pass_their_unit_tests_each_firing_and_not() -> None:
    tests = yaml.safe_load((RULES_DIR / "alerts_test.yml").read_text())["tests"]
    tested = {case["alertname"] for test in tests for case in test["alert_rule_test"]}
    assert tested == set(alert_rules())
    for name in tested:   # every alert has a case where it fires and one where it does not
        outcomes = {bool(case["exp_alerts"]) for test in tests
                    for case in test["alert_rule_test"] if case["alertname"] == name}
        assert outcomes == {True, False}, name
    ran = subprocess.run([tool("promtool"), "test", "rules", "alerts_test.yml"], cwd=RULES_DIR,
                         capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "SUCCESS" in ran.stdout


def test_the_compose_prometheus_config_is_valid_and_loads_the_rules() -> None:
    checked = subprocess.run([tool("promtool"), "check", "config",
                              str(RULES_DIR / "prometheus.yml")],
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in checked.stdout


# --- a real Prometheus ---------------------------------------------------------------------------

@asynccontextmanager
async def running_prometheus(tmp_path: Path, targets: dict[str, list[str]]) -> AsyncIterator[str]:
    """Debian's prometheus scraping ``targets`` (job → host:port) every second with alerts.yml;
    yields its base URL. Its storage lives under ``tmp_path``; it is stopped after the block."""
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": hosts}]}
                           for job, hosts in targets.items()],
    }))
    port = free_port()
    process = await trio.lowlevel.open_process(
        [tool("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url) as http:
            with trio.fail_after(30):
                while True:
                    assert process.poll() is None, "prometheus exited at start"
                    try:
                        if (await http.get("/-/ready")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await trio.sleep(0.1)
        yield url
    finally:
        process.terminate()
        with trio.move_on_after(10):
            await process.wait()
        process.kill()


async def query(http: httpx.AsyncClient, promql: str) -> list[dict[str, Any]]:
    answer = (await http.get("/api/v1/query", params={"query": promql})).json()
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


async def until(what: str, check) -> Any:
    """Ask ``check`` again every 0.25 s until it returns something true (the caller bounds it)."""
    while not (found := await check()):
        await trio.sleep(0.25)
    return found


async def test_a_real_prometheus_scrapes_atom_serve_and_evaluates_the_rules(tmp_path: Path) -> None:
    with trio.fail_after(90):
        async with running_atom(tmp_path, SAFEGUARD_MAX_COMMANDS="1", SAFEGUARD_COOLDOWN_S="600",
                                API_HOST="127.0.0.1") as atom:
            target = atom.api_url.removeprefix("http://")
            async with running_prometheus(tmp_path, {"atom": [target]}) as url, \
                    httpx.AsyncClient(base_url=url) as http:
                async def targets_up():
                    active = (await http.get("/api/v1/targets")).json()["data"]["activeTargets"]
                    return [t for t in active if t["health"] == "up"] == active != [] and active
                (up,) = await until("the target is up", targets_up)
                assert (up["labels"]["job"], up["scrapeUrl"]) == ("atom", f"{atom.api_url}/metrics")

                # About 60 frames a second, as Prometheus measures it over 5 s of scrapes.
                async def frame_rate():
                    return await query(http, "rate(atom_frames_composed_total[5s])")
                await until("five seconds of scrapes", lambda: query(
                    http, "count_over_time(atom_frames_composed_total[10s]) >= 6"))
                (rate,) = await frame_rate()
                assert float(rate["value"][1]) == pytest.approx(60, rel=0.15)

                # Every rule loaded and evaluated without error; the metrics they read exist.
                async def rules():
                    groups = (await http.get("/api/v1/rules")).json()["data"]["groups"]
                    loaded = {r["name"]: r for g in groups for r in g["rules"]}
                    return all(r["lastEvaluation"] > "2000" for r in loaded.values()) and loaded
                loaded = await until("the rules evaluated", rules)
                assert set(loaded) == set(alert_rules())
                assert {name: rule["health"] for name, rule in loaded.items()} == \
                    dict.fromkeys(loaded, "ok")
                scraped = {r["metric"]["__name__"] for r in await query(
                    http, 'count by (__name__) ({__name__=~"atom_.+"})')}
                named = {name for expr in alert_rules().values()
                         for name in re.findall(r"\batom_\w+", expr)}
                assert named - ONLY_AFTER_AN_ESCALATION - ONLY_WITH_REDIS <= scraped, \
                    "an alert reads a metric " \
                    "no process serves"
                assert await query(http, "sum(atom_engine_leading)") != []
                assert float((await query(http, "sum(atom_engine_leading)"))[0]["value"][1]) == 1
                assert await query(http, 'ALERTS{alertstate="firing"}') == []

                # The Brise-Circuit opens (a second command within the window of one): its alert
                # fires at the next scrape and evaluation.
                async with httpx.AsyncClient(base_url=atom.api_url) as api:
                    opened = await api.post("/api/v1/sceau/activate", json={"duration_ms": 2000})
                    session = {"X-Sceau-Session": opened.json()["session"]}
                    assert (await api.post("/api/v1/swarm/regroup", headers=bearer())).status_code == 202
                    assert (await api.post("/api/v1/swarm/regroup", headers=bearer())).status_code == 423
                (firing,) = await until("the alert fires", lambda: query(
                    http, 'ALERTS{alertstate="firing"}'))
                assert firing["metric"]["alertname"] == "AtomBriseCircuitOpen"
                assert firing["metric"]["instance"] == target


async def test_prometheus_scrapes_every_role_and_sees_one_engine_lead_through_a_failover(
        tmp_path: Path, atom_processes, redis_server, pg_url: str) -> None:
    """The roles of a Redis deployment, each on its own API_PORT (CONTRACT §2.2), scraped as the
    compose profile does: two engines, a ws and an api process. One engine leads; once it is
    killed, the other does, and Prometheus sees that too."""
    ports = {key: free_port() for key in ("engine-1", "engine-2", "ws", "api")}
    roles = {"engine-1": "engine", "engine-2": "engine", "ws": "ws", "api": "api"}
    processes = {}
    for key, role in roles.items():
        env = servers_env(REDIS_URL=redis_server.url, DATABASE_URL=pg_url, API_HOST="127.0.0.1",
                          API_PORT=str(ports[key]))
        processes[key] = await atom_processes(["serve", "--role", role], env)
    with trio.fail_after(120):
        for process in processes.values():
            await process.wait_for("atom: serving: ")
        jobs = {"atom-engine": [f"127.0.0.1:{ports['engine-1']}", f"127.0.0.1:{ports['engine-2']}"],
                "atom-websocket": [f"127.0.0.1:{ports['ws']}"], "atom-api": [f"127.0.0.1:{ports['api']}"]}
        async with running_prometheus(tmp_path, jobs) as url, httpx.AsyncClient(base_url=url) as http:
            async def all_up():
                active = (await http.get("/api/v1/targets")).json()["data"]["activeTargets"]
                return len(active) == 4 and all(t["health"] == "up" for t in active) and active
            up = await until("every role up", all_up)
            assert sorted(t["labels"]["job"] for t in up) == [
                "atom-api", "atom-engine", "atom-engine", "atom-websocket"]

            async def leading() -> dict[str, float]:
                return {r["metric"]["instance"]: float(r["value"][1])
                        for r in await query(http, "atom_engine_leading")}
            first = await until("both engines scraped", lambda: _both(leading))
            assert sorted(first.values()) == [0.0, 1.0]      # one leads, one stands by
            leader = next(key for key in ("engine-1", "engine-2")
                          if first[f"127.0.0.1:{ports[key]}"] == 1.0)
            await until("frames counted", lambda: query(
                http, "count_over_time(atom_frames_composed_total[10s]) >= 6"))
            (rate,) = await query(http, "sum(rate(atom_frames_composed_total[5s]))")
            assert float(rate["value"][1]) == pytest.approx(60, rel=0.15)
            # Every role's Redis parts say which primary they are on: the same one, this Redis.
            primaries = await until("the primary of every part", lambda: query(
                http, "count by (address) (atom_redis_primary == 1) >= 8"))
            assert [p["metric"]["address"] for p in primaries] == [f"127.0.0.1:{redis_server.port}"]
            assert await query(http, "atom_redis_primary_changes_total > 0") == []

            processes[leader].kill()                          # kill -9
            standby = f"127.0.0.1:{ports[next(k for k in ('engine-1', 'engine-2') if k != leader)]}"
            await until("the standby leads", lambda: _is(leading, standby, 1.0))
            await until("the leader's target is down", lambda: query(
                http, f'up{{instance="127.0.0.1:{ports[leader]}"}} == 0'))
            assert await query(http, 'ALERTS{alertname="AtomNoEngineLeading", alertstate="firing"}') == []


async def _both(leading) -> dict[str, float] | None:
    found = await leading()
    return found if len(found) == 2 else None


async def _is(leading, instance: str, value: float) -> bool:
    return (await leading()).get(instance) == value
