"""``atom``: the command line.

    atom serve [--role all|engine|api|ws]   run everything in one process (all, the default), or
                                            one part of a Redis deployment
    atom migrate                            apply the pending database migrations (DATABASE_URL)
    atom operator-token --role R[,R] [--ttl 15m] [--subject NAME] [--aal aal1|aal2]
                                            print an operator's token signed with
                                            OPERATOR_JWT_SECRET (for scripts, shared-secret
                                            deployments)
    atom watch [URL]                        a live terminal view of a running swarm; --once: a
                                            health probe

Exit codes: 0 after a clean stop (SIGINT, SIGTERM), 1 when the engine escalates a crash loop or a
backend cannot be reached at start (``watch --once``: when the stream is below --min-fps or
unreachable), 2 for a bad setting or bad arguments.
"""

from __future__ import annotations

import argparse
import re
import signal
import sys
import time
from functools import partial
from urllib.parse import urlsplit

import trio

from . import aio, app, logs, netlimits
from . import watch as watch_
from .config import Settings, load_settings
from .errors import BackendUnavailable, ConfigError, SupervisorEscalation, find
from .operators import ROLES, local_operators, mint
from .protocol import ENCODINGS
from .store.postgres import CONNECT_DEADLINE_S, migrate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="atom", description="AT·OM real-time backend")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the engine and its servers")
    serve.add_argument("--role", choices=app.ROLES, default="all",
                       help="all (default): everything in one process; engine, api or ws: one "
                            "part, the processes meeting on Redis")
    commands.add_parser("migrate", help="apply the pending migrations to DATABASE_URL")
    token = commands.add_parser(
        "operator-token", help="print an operator's access token (OPERATOR_JWT_SECRET)",
        description="Sign an access token with OPERATOR_JWT_SECRET (HS256), with the issuer, "
                    "audience and roles claim of the settings, and print it.")
    token.add_argument("--role", required=True, type=_roles,
                       help=f"one or more of {', '.join(ROLES)}, comma-separated")
    token.add_argument("--ttl", type=_duration, default=15 * 60.0,
                       help="lifetime: 90s, 15m (default), 8h, 7d")
    token.add_argument("--subject", help="who it is for (its sub; default: a new random one)")
    token.add_argument("--aal", choices=("aal1", "aal2"), default="aal1",
                       help="assurance level: aal2 for a guardian who signed in with a second factor")
    watch = commands.add_parser(
        "watch", help="watch a running swarm live (fps, latency, agents, Brise-Circuit)",
        description="Subscribe like a frontend and show the stream live. URL is the API "
                    "(default http://API_HOST:API_PORT); the WebSocket is ws://<its host>:WS_PORT"
                    "/ws/swarm, or <same origin>/ws/swarm when URL has no port, unless --ws.")
    watch.add_argument("url", nargs="?",
                       help="the API's base URL, or the stream's (ws://host:WS_PORT/ws/swarm)")
    watch.add_argument("--ws", help="the WebSocket URL (ws://host:port/ws/swarm)")
    watch.add_argument("--once", action="store_true",
                       help="sample the stream, print one line, exit 1 if below --min-fps")
    watch.add_argument("--min-fps", type=float, default=55.0, help="healthy at or above (55)")
    watch.add_argument("--seconds", type=float, default=3.0, help="how long --once samples (3)")
    watch.add_argument("--encoding", choices=ENCODINGS, default="delta",
                       help="the stream to subscribe to (delta)")
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"atom: bad setting {exc}", file=sys.stderr)
        return 2
    logs.configure(settings)
    aio.configure()
    if args.command == "serve":
        return _serve(settings, args.role)
    if args.command == "migrate":
        return _migrate(settings)
    if args.command == "operator-token":
        return _operator_token(settings, args)
    if args.command == "watch":
        return trio.run(_watch_until_signal, settings, args)
    return 2


def _roles(text: str) -> tuple[str, ...]:
    roles = tuple(r.strip() for r in text.split(",") if r.strip())
    unknown = [r for r in roles if r not in ROLES]
    if not roles or unknown:
        raise argparse.ArgumentTypeError(f"roles are {', '.join(ROLES)}")
    return roles


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(text: str) -> float:
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([smhd]?)\s*", text)
    if not match or float(match[1]) <= 0:
        raise argparse.ArgumentTypeError("a positive duration: 90s, 15m, 8h, 7d")
    return float(match[1]) * _UNITS[match[2] or "s"]


def _operator_token(settings: Settings, args: argparse.Namespace) -> int:
    if not settings.operator_jwt_secret:
        print("atom: OPERATOR_JWT_SECRET is not set: there is no key to sign an operator token "
              "with", file=sys.stderr)
        return 2
    print(mint(settings.operator_jwt_secret, args.role, now=time.time(), ttl_s=args.ttl,
               settings=settings, subject=args.subject, aal=args.aal))
    return 0


def _migrate(settings: Settings) -> int:
    if not settings.database_url:
        print("atom: bad setting DATABASE_URL: `atom migrate` needs a postgresql:// URL", file=sys.stderr)
        return 2
    try:
        applied = trio.run(migrate, settings.database_url)
    except BackendUnavailable as exc:
        app.announce(str(exc))
        return 1
    app.announce(f"applied migrations {', '.join(map(str, applied))}" if applied
                 else "the database is up to date")
    return 0


def _serve(settings: Settings, role: str = "all") -> int:
    try:
        app.check_role(settings, role)
        # Each connection holds a descriptor: the soft limit (often 1024) is a relic of select().
        netlimits.raise_file_limit()
        if settings.redis_url:
            _reach_redis(settings.redis_url, CONNECT_DEADLINE_S)
        app.announce(netlimits.DescriptorShares.now().line())   # what each kind of client may hold
        trio.run(_serve_until_signal, settings, role)
    except ConfigError as exc:
        print(f"atom: bad setting {exc}", file=sys.stderr)
        return 2
    except BackendUnavailable as exc:
        app.announce(str(exc))
        return 1
    except SupervisorEscalation as exc:
        app.announce(f"ENGINE STOPPED: {exc}")
        return 1
    return 0


def _reach_redis(url: str, deadline_s: float) -> None:
    """Raise BackendUnavailable unless Redis answers a PING within ``deadline_s``.

    At start only, as PostgreSQL is given CONNECT_DEADLINE_S: a REDIS_URL that points nowhere (a
    wrong host, port or password) is a deployment error, said in one line with exit code 1, not a
    process that stands by forever. An outage once running is retried instead (the bus's own).
    With sentinels, the primary they name answers (no sentinel answering, or none naming a
    primary, is the same deployment error).
    """
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry
    from redis.sentinel import Sentinel

    from .config import parse_redis_url

    address = parse_redis_url(url)
    bounds = dict(socket_timeout=1.0, socket_connect_timeout=1.0, retry=Retry(NoBackoff(), 0))
    if address.sentinels:
        client = Sentinel(list(address.sentinels), sentinel_kwargs=bounds).master_for(
            address.master, db=address.db, username=address.username, password=address.password,
            **bounds)
    else:
        client = redis.Redis.from_url(url, **bounds)
    deadline = time.monotonic() + deadline_s
    try:
        while True:
            try:
                client.ping()
                return
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
                if time.monotonic() >= deadline:
                    raise BackendUnavailable("redis", f"{type(exc).__name__}: {exc}") from None
            except redis.exceptions.ResponseError as exc:   # AUTH refused, and the like
                raise BackendUnavailable("redis", str(exc)) from None
            time.sleep(0.2)
    finally:
        client.close()


async def _serve_until_signal(settings: Settings, role: str = "all") -> None:
    settings, ephemeral = settings.with_ephemeral_key()
    if ephemeral:
        app.announce("SECRET_KEY is empty: using an ephemeral key; sessions end with this process")
    link_token = None
    if not settings.operators_configured and role in ("all", "api"):
        if role == "all" and not settings.database_url and not settings.redis_url:
            settings, link_token = local_operators(settings)
        else:
            app.announce("operators: neither OPERATOR_ISSUER nor OPERATOR_JWT_SECRET is set: this "
                         "deployment is view-only (no one can command the swarm)")
    services = None
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        try:
            async with trio.open_nursery() as nursery:
                services = await nursery.start(partial(app.serve, settings, role=role))
                app.announce(f"serving: {services.describe()}")
                if link_token is not None and services.api_url is not None:
                    # In the fragment: a browser never sends it to a server or its logs.
                    app.announce("operator link (both roles, for this process only): "
                                 f"{_local(services.api_url)}/#operator={link_token}")

                async def stop_on_signal() -> None:
                    async for signum in signals:
                        app.announce(f"{signal.Signals(signum).name}: stopping")
                        nursery.cancel_scope.cancel()
                        return

                nursery.start_soon(stop_on_signal)
        except BaseExceptionGroup as group:
            # Surface an escalation or an unreachable backend as itself, not wrapped: the caller
            # prints one line.
            for kind in (SupervisorEscalation, BackendUnavailable):
                found = find(group, kind)
                if found is not None:
                    raise found from None
            raise
    if services is not None and services.broadcaster is not None:
        app.announce(f"broadcaster: {services.broadcaster.stats.summary()}")
    app.announce("stopped")


def _local(url: str) -> str:
    """``url`` with a wildcard bind address (0.0.0.0, ::) replaced by one a browser can open."""
    parts = urlsplit(url)
    if parts.hostname in ("0.0.0.0", "::"):
        return f"{parts.scheme}://127.0.0.1:{parts.port}"
    return url


async def _watch_until_signal(settings: Settings, args: argparse.Namespace) -> int:
    where = watch_.endpoints(args.url, args.ws, api_host=settings.api_host,
                             api_port=settings.api_port, ws_port=settings.ws_port)
    code = 0
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            async def stop_on_signal() -> None:
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    return

            async def run() -> None:
                nonlocal code
                code = await watch_.watch(where, once=args.once, seconds=args.seconds,
                                          min_fps=args.min_fps, sceau_ms=settings.sceau_duration,
                                          encoding=args.encoding)
                nursery.cancel_scope.cancel()

            nursery.start_soon(stop_on_signal)
            nursery.start_soon(run)
    return code


if __name__ == "__main__":
    sys.exit(main())
