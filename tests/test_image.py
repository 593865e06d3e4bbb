"""The image, built and run for real with podman: every role of docker-compose.yml from it.

The project's Dockerfile is built (on a stand-in for python:3.11-slim, both kept while nothing
they are made of changes: tests/podman.py) and run on the host's loopback (``--network host``)
against a throwaway Redis and PostgreSQL: ``atom migrate``, two engine containers, a ws and an api
container, each with its compose command, and Debian's nginx with config/nginx.conf in front.
Containers for the bad-input cases start alongside. Every container is removed at the end,
whatever happened.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import shlex
import ssl
import struct
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio
import trustme
import yaml
from trio_websocket import open_websocket_url

from tests import podman
from tests.servers import PostgresServer, RedisServer, free_port, skip
from tests.operators import bearer
from tests.test_deploy import (COMPOSE, Nginx, client_tls, nginx_binary,  # noqa: F401 - fixtures
                               nginx_command, tls, wait_until_listening)

TEST_SECRET = "image-test-secret-" + "s" * 32
TAKEOVER_S = 3.0           # the failover target: README says about 2 s after a kill -9
START_TIMEOUT_S = 240      # creating a container copies the whole image (vfs): slow on a busy host
ROLES = {"engine-1": "atom-engine", "engine-2": "atom-engine", "ws": "atom-websocket",
         "api": "atom-api"}


@dataclass
class Container:
    name: str
    service: str
    env: dict[str, str]
    command: list[str]
    health: list[str] | None = None     # the compose service's check, replacing the image's


@dataclass
class Stack:
    image: str
    run: str                            # this run's label: every container carries it
    containers: dict[str, Container] = field(default_factory=dict)
    nginx: Nginx | None = None
    leader: str = ""
    standby: str = ""

    def name(self, key: str) -> str:
        return self.containers[key].name


def podman_run(image: str, run: str, container: Container) -> subprocess.Popen:
    """``podman run -d`` of ``container`` (returns at once: several are created side by side)."""
    args = ["run", "-d", "--name", container.name, "--label", f"atom-test={run}",
            "--network", "host", *podman.ULIMITS, "--stop-timeout", "10",
            # The checks are run by the test (`podman healthcheck run`), not on a timer.
            "--health-interval", "disable"]
    if container.health is not None:
        args += ["--health-cmd", json.dumps(container.health)]
    for key, value in container.env.items():
        args += ["-e", f"{key}={value}"]
    return subprocess.Popen(["podman", *podman.GLOBAL, *args, image, *container.command],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def start_all(stack: Stack, keys: list[str]) -> None:
    started = {key: podman_run(stack.image, stack.run, stack.containers[key]) for key in keys}
    for key, process in started.items():
        out, err = process.communicate(timeout=START_TIMEOUT_S)
        assert process.returncode == 0, f"podman run {key}: {out}{err}"


def logs(name: str) -> str:
    done = podman.podman("logs", name, check=False)
    return done.stdout + done.stderr


def state(name: str) -> tuple[str, int]:
    out = podman.podman("inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", name).stdout
    status, code = out.split()
    return status, int(code)


async def listening_within(seconds: float, *args) -> None:
    with trio.fail_after(seconds):
        await wait_until_listening(*args)


def first_log_with(names: list[str], text: str, timeout: float = 60) -> str:
    """The first of ``names`` whose log holds ``text``, read as podman writes it (``podman logs
    -f`` of each: no polling). Fails when every log has ended (their containers stopped) or after
    ``timeout``."""
    follows = {name: subprocess.Popen(["podman", *podman.GLOBAL, "logs", "-f", name],
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL) for name in names}
    seen = dict.fromkeys(names, b"")
    deadline = time.monotonic() + timeout
    try:
        with selectors.DefaultSelector() as selector:
            for name, follow in follows.items():
                selector.register(follow.stdout, selectors.EVENT_READ, name)
            while selector.get_map():
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"no {text!r} within {timeout} s in {names}"
                for key, _ in selector.select(remaining):
                    chunk = os.read(key.fd, 65536)
                    if not chunk:
                        selector.unregister(key.fileobj)
                        continue
                    seen[key.data] += chunk
                    if text.encode() in seen[key.data]:
                        return key.data
        raise AssertionError(f"{names} stopped before {text!r}:\n"
                             + "\n".join(f"{n} {state(n)}:\n{logs(n)}" for n in names))
    finally:
        for follow in follows.values():
            follow.kill()
            follow.wait()
            follow.stdout.close()


def wait_for_log(name: str, text: str, timeout: float = 60) -> None:
    first_log_with([name], text, timeout)


def wait_until_exited(name: str, timeout: float = 60) -> int:
    """The exit code of ``name`` once it has exited (``podman wait`` blocks until then)."""
    return int(podman.podman("wait", name, timeout=timeout).stdout.strip())


def compose_service(name: str) -> dict:
    return yaml.safe_load(COMPOSE.read_text())["services"][name]


def compose_health(service: str) -> list[str]:
    test = compose_service(service)["healthcheck"]["test"]
    assert test[0] == "CMD", test
    return test[1:]


@pytest.fixture(scope="module")
def image(request: pytest.FixtureRequest) -> str:
    missing = podman.missing_tools()
    if missing:
        skip(f"{', '.join(missing)} not installed (.ci/run installs podman, runc, debootstrap)")
    base_s = podman.ensure_base_image()
    name, build_s = podman.ensure_image()
    # Said in the run's output (past pytest's capture): the image's size, what making it cost.
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print(f"\n{name}: {podman.image_size(name) / 1e6:.0f} MB; made in {base_s:.0f} s (base)"
              f" + {build_s:.0f} s (image), 0 when kept", flush=True)
    return name


@pytest.fixture(scope="module")
def stack(image: str, tmp_path_factory: pytest.TempPathFactory, nginx_binary: str,  # noqa: F811
          tls: tuple[trustme.CA, Path, Path]):  # noqa: F811
    run = uuid.uuid4().hex[:8]
    stack = Stack(image, run)
    redis, postgres, nginx_process = RedisServer(), PostgresServer(), None
    try:
        redis.start()
        postgres.start()
        backends = {"REDIS_URL": redis.url, "DATABASE_URL": postgres.url, "SECRET_KEY": TEST_SECRET,
                    "API_HOST": "127.0.0.1", "SWARM_SEED": "7"}

        def add(key: str, service: str, env: dict[str, str | None],
                command: list[str] | None = None,
                health: list[str] | None = None) -> None:
            ports = {"API_PORT": str(free_port()), "WS_PORT": str(free_port())}
            settings = {k: v for k, v in {**backends, **ports, **env}.items() if v is not None}
            stack.containers[key] = Container(f"atom-test-{run}-{key}", service, settings,
                                              command or compose_service(service)["command"],
                                              health)

        add("migrate", "atom-migrate", {})
        # The bad-input cases: compose's API command, each with one thing wrong.
        add("no-secret", "atom-api", {"SECRET_KEY": None})
        add("bad-setting", "atom-api", {"ESSAIM_SIZE": "351"})
        add("no-redis", "atom-api", {"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
        start_all(stack, ["migrate", "no-secret", "bad-setting", "no-redis"])
        assert wait_until_exited(stack.name("migrate"), START_TIMEOUT_S) == 0, \
            logs(stack.name("migrate"))

        for key, service in ROLES.items():
            # The API keeps the image's own HEALTHCHECK; the others get their compose service's.
            add(key, service, {}, health=None if service == "atom-api" else compose_health(service))
        start_all(stack, list(ROLES))
        for key in ROLES:
            wait_for_log(stack.name(key), "atom: serving: ", START_TIMEOUT_S)
        leading = first_log_with([stack.name("engine-1"), stack.name("engine-2")],
                                 "engine leading", 60)
        stack.leader, stack.standby = (("engine-1", "engine-2") if leading == stack.name("engine-1")
                                       else ("engine-2", "engine-1"))

        api, ws = stack.containers["api"], stack.containers["ws"]
        stack.nginx = Nginx(tmp_path_factory.mktemp("nginx"))
        nginx_process = subprocess.Popen(
            nginx_command(nginx_binary, stack.nginx, tls, f"127.0.0.1:{api.env['API_PORT']}",
                          f"127.0.0.1:{ws.env['WS_PORT']}"), stdin=subprocess.DEVNULL)
        trio.run(partial(listening_within, 30, stack.nginx.https_port, nginx_process, "nginx"))
        yield stack
    finally:
        if nginx_process is not None:
            nginx_process.terminate()
            nginx_process.wait(timeout=10)
        names = podman.podman("ps", "-a", "--filter", f"label=atom-test={run}", "--format",
                              "{{.Names}}", check=False).stdout.split()
        # Side by side: removing one deletes a whole copy of the image (vfs), mostly disk time.
        removing = [subprocess.Popen(["podman", *podman.GLOBAL, "rm", "--force", "--time", "0",
                                      name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    for name in names]
        for process in removing:
            process.wait(timeout=300)
        redis.kill()
        postgres.destroy()


# --- the image and its containers ---------------------------------------------------------------

def test_every_container_runs_as_a_non_root_user(stack: Stack) -> None:
    for key in ROLES:
        top = podman.podman("top", stack.name(key), "huser", "user", "args").stdout.splitlines()
        processes = [line.split(None, 2) for line in top[1:]]
        assert processes and all(p[0] == "10001" and p[1] == "atom" for p in processes), top
        assert "atom serve --role" in top[1]


def test_each_healthcheck_passes_inside_its_container(stack: Stack) -> None:
    for key, service in ROLES.items():
        name = stack.name(key)
        configured = json.loads(podman.podman("inspect", "--format", "{{json .Config.Healthcheck}}",
                                              name).stdout)
        test = configured["Test"]
        if service == "atom-api":   # the Dockerfile's own HEALTHCHECK, kept by --format docker
            assert "/api/v1/health" in " ".join(test), test
        else:
            assert test[1:] == compose_health(service), test
        # As a container engine judges it: healthy unless `Retries` checks in a row fail (one run
        # can pass its timeout when the machine is busy; a broken check fails every time).
        for _ in range(configured.get("Retries") or 1):
            checked = podman.podman("healthcheck", "run", name, check=False)
            if checked.returncode == 0:
                break
        assert checked.returncode == 0, f"{key}: {checked.stdout}{checked.stderr}"


IMAGE_PROBE = r"""
import importlib.util, json, os, shutil, sys
import atom_actors
ours = ("pyproject.toml", "Dockerfile", "docker-compose.yml", "test_image.py", "test_deploy.py",
        "servers.py", "bench_engine.py", "spheres.toml")
found = []
for root, dirs, files in os.walk("/"):
    if root in ("/proc", "/sys", "/dev"):
        dirs[:] = []
        continue
    for name in dirs + files:
        path = os.path.join(root, name)
        if name == "atom_actors" and "-packages" not in root:
            found.append(path)
        if name in ours and "atom_actors/_config" not in path:
            found.append(path)
print(json.dumps({
    "package": os.path.dirname(atom_actors.__file__),
    "ours": found,
    "places": [p for p in ("/src", "/wheels") if os.path.exists(p)],
    "tools": [t for t in ("gcc", "cc", "g++", "make", "git", "hatch") if shutil.which(t)],
    "build_backends": [m for m in ("hatchling", "setuptools_scm") if importlib.util.find_spec(m)],
}))
"""


def test_the_image_carries_no_sources_tests_or_build_tools(stack: Stack) -> None:
    probe = podman.podman("exec", stack.name("api"), "python", "-c", IMAGE_PROBE)
    seen = json.loads(probe.stdout)
    assert re.fullmatch(r"/usr/(local/)?lib/python3\.11/(site|dist)-packages/atom_actors",
                        seen["package"]), seen
    assert seen["ours"] == [] and seen["places"] == [], seen
    assert seen["tools"] == [] and seen["build_backends"] == [], seen


async def open_session(http: httpx.AsyncClient) -> str:
    opened = await http.post("/api/v1/sceau/activate", json={"duration_ms": 2000})
    assert opened.status_code == 201, opened.text
    return opened.json()["session"]


def stream_url(stack: Stack, token: str) -> str:
    return f"wss://127.0.0.1:{stack.nginx.https_port}/ws/swarm?session={token}"


async def test_through_nginx_a_command_is_applied_and_frames_stream(
        stack: Stack, client_tls: ssl.SSLContext) -> None:  # noqa: F811
    with trio.fail_after(60):
        async with httpx.AsyncClient(base_url=stack.nginx.https, verify=client_tls) as http:
            token = await open_session(http)
            session = {"X-Sceau-Session": token}
            async with open_websocket_url(stream_url(stack, token),
                                          ssl_context=client_tls) as subscriber:
                hello = json.loads(await subscriber.get_message())
                assert (hello["type"], hello["agents"]) == ("hello", 350)
                seqs = await frame_seqs(subscriber, 10)
                assert seqs == sorted(seqs) and len(set(seqs)) == 10

                dispersed = await http.post("/api/v1/swarm/disperse", json={"level": "partial"},
                                            headers=bearer())
                assert dispersed.status_code == 202, dispersed.text
                assert dispersed.json()["dispersed"] == 70
                # Applied by the engine container, seen by the API container through Redis.
                while True:
                    swarm = (await http.get("/api/v1/swarm", headers=session)).json()
                    if swarm["by_status"]["dispersed"] >= 70:
                        break
                    await trio.sleep(0.25)


async def frame_seqs(subscriber, count: int) -> list[int]:
    seqs = []
    while len(seqs) < count:
        message = await subscriber.get_message()
        if isinstance(message, bytes):
            seqs.append(struct.unpack_from("<I", message, 4)[0])
    return seqs


async def test_killing_the_leader_engine_moves_the_stream_to_the_other(
        stack: Stack, client_tls: ssl.SSLContext) -> None:  # noqa: F811
    with trio.fail_after(90):
        async with httpx.AsyncClient(base_url=stack.nginx.https, verify=client_tls) as http:
            token = await open_session(http)
        async with open_websocket_url(stream_url(stack, token), ssl_context=client_tls) as subscriber:
            await frame_seqs(subscriber, 5)
            arrivals: list[float] = []
            killed = trio.Event()

            async def kill_the_leader() -> None:
                await trio.run_process(["podman", *podman.GLOBAL, "kill", "--signal", "KILL",
                                        stack.name(stack.leader)], capture_stdout=True)
                killed.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(kill_the_leader)
                # Frames on, through the kill, until 60 more have come after it.
                after = 0
                while after < 60:
                    await frame_seqs(subscriber, 1)
                    arrivals.append(trio.current_time())
                    after += killed.is_set()
        gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
        assert max(gaps) < TAKEOVER_S, f"the stream stopped for {max(gaps):.2f} s"
        assert max(gaps) > 0.5, "no failover seen: did the leader die?"
    assert state(stack.name(stack.leader)) == ("exited", 137)
    assert "engine leading" in logs(stack.name(stack.standby))


def test_podman_stop_ends_each_container_with_exit_0_within_its_grace_period(stack: Stack) -> None:
    grace = compose_service("atom-api")["stop_grace_period"]
    grace_s = float(grace.removesuffix("s"))
    running = [key for key in ROLES if state(stack.name(key))[0] == "running"]
    assert set(ROLES) - set(running) <= {stack.leader}
    started = time.monotonic()
    stopping = {key: subprocess.Popen(["podman", *podman.GLOBAL, "stop", "--time", str(int(grace_s)),
                                       stack.name(key)], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True)
                for key in running}
    for key, process in stopping.items():
        process.communicate(timeout=grace_s + 60)
        took = time.monotonic() - started
        assert state(stack.name(key)) == ("exited", 0), f"{key}:\n{logs(stack.name(key))}"
        assert took < grace_s + 5, f"{key} took {took:.1f} s"   # podman's own bookkeeping
        output = logs(stack.name(key))
        assert "atom: SIGTERM: stopping" in output and "atom: stopped" in output
        assert "Traceback" not in output


# --- bad input ----------------------------------------------------------------------------------

@pytest.mark.parametrize("key, code, says", [
    ("no-secret", 2, "atom: bad setting SECRET_KEY: "),
    ("bad-setting", 2, "atom: bad setting ESSAIM_SIZE: "),
    ("no-redis", 1, "atom: redis is unavailable: "),
])
def test_a_container_with_bad_input_exits_with_one_line(stack: Stack, key: str, code: int,
                                                        says: str) -> None:
    name = stack.name(key)
    assert wait_until_exited(name, START_TIMEOUT_S) == code, logs(name)
    lines = logs(name).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(says), lines
    assert TEST_SECRET not in lines[0]
    command = podman.podman("inspect", "--format", "{{json .Config.Cmd}}", name).stdout
    assert shlex.join(json.loads(command)) == "atom serve --role api"
