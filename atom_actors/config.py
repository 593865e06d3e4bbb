"""Settings (CONTRACT.md §1): flat, typed, with their units in their names.

Read from the environment and a ``.env`` file in the working directory; the environment wins.
:func:`load_settings` validates everything at start and raises :class:`~atom_actors.errors.ConfigError`
naming the first bad setting, so that ``atom serve`` stops with one line instead of a traceback.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pydantic
from dotenv import dotenv_values
from pydantic import BaseModel, ConfigDict, Field, InstanceOf, field_validator, model_validator

from .catalog import Catalog
from .errors import ConfigError
from .origins import ANY_HOST, split_host
from .peers import parse_networks

CANON_HZ = 999.0
MIN_HZ = 432.0
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
MIN_SECRET_KEY_CHARS = 32
AAL_LEVELS = ("aal1", "aal2")


class Settings(BaseModel):
    """Every setting of CONTRACT.md §1. Field names are the lower-case environment names.

    ``catalog`` is the sphere catalog (``config/spheres.toml``), read when the settings are made
    (unless one is given) and checked against ESSAIM_SIZE: the parts take it from here.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    catalog: InstanceOf[Catalog] = Field(exclude=True, repr=False)

    api_host: str = "127.0.0.1"
    api_port: int = Field(8000, ge=0, le=65535)
    ws_port: int = Field(8001, ge=0, le=65535)
    database_url: str = ""
    redis_url: str = ""
    # Replicas that must acknowledge (WAIT) a command's write before it is accepted; None: 1 with
    # redis+sentinel://, else 0 (``min_acks`` says which).
    redis_min_acks: int | None = Field(None, ge=0, le=16)
    frequency: float = Field(CANON_HZ, gt=MIN_HZ, le=20_000)
    essaim_size: int = Field(ge=1)    # default: the catalog's size
    sceau_duration: int = Field(2000, ge=0, description="milliseconds of touch that open a session")
    zero_log: bool = True
    secret_key: str = ""
    cors_origins: tuple[str, ...] = ("https://atom-interface.vercel.app",)
    # Hosts a request's Host header may name (REST and WebSocket); "*" allows any (origins.py).
    allowed_hosts: tuple[str, ...] = ("localhost", "127.0.0.1", "[::1]")
    tick_hz: int = Field(60, ge=1, le=240)
    ws_max_connections: int = Field(500, ge=1)
    ws_require_session: bool = True
    session_ttl_s: float = Field(3600, gt=0)
    swarm_seed: int | None = None
    dispersal_dwell_s: float = Field(5.0, ge=0)
    ws_stall_timeout_s: float = Field(10.0, gt=0)
    # Brise-Circuit: at most SAFEGUARD_MAX_COMMANDS swarm-changing commands and at most
    # SAFEGUARD_MAX_TOTAL total dispersals per SAFEGUARD_WINDOW_S; once tripped it stays open for
    # SAFEGUARD_COOLDOWN_S before it lets one command through (half-open).
    safeguard_max_commands: int = Field(30, ge=1)
    safeguard_max_total: int = Field(3, ge=1)
    safeguard_window_s: float = Field(60.0, gt=0)
    safeguard_cooldown_s: float = Field(30.0, gt=0)
    log_level: str = "INFO"
    # Behind a reverse proxy (nginx) every client has the proxy's address: with N > 0 the API takes
    # the client's address from the N-th X-Forwarded-For entry from the right, which the proxies
    # set. Only ever used to key the session rate limit, never written anywhere.
    trusted_proxy_hops: int = Field(0, ge=0, le=8)
    # Operators (CONTRACT §2.3): who vouches for them, and how their tokens are checked.
    operator_issuer: str = ""
    operator_jwks_url: str = ""       # default: <OPERATOR_ISSUER>/.well-known/jwks.json
    operator_audience: str = "authenticated"
    operator_jwt_secret: str = Field("", repr=False)
    operator_roles_claim: str = "user_role"
    # A reset of the Brise-Circuit: how many distinct guardians within RESET_QUORUM_WINDOW_S, and
    # whether their tokens must come from a multi-factor sign-in.
    safeguard_reset_quorum: int = Field(1, ge=1, le=16)
    safeguard_reset_aal: str = "aal1"
    # The proxies whose X-Forwarded-For is believed (addresses or CIDRs); empty: loopback, when
    # TRUSTED_PROXY_HOPS > 0. A peer not on the list is its own address, whatever it sends (peers.py).
    trusted_proxies: tuple[str, ...] = ()
    # Fair shares (issue 24), so that one client cannot take every slot: subscribers per Sceau
    # session and per client address, API connections per address (behind trusted proxies the
    # forwarded address; the proxies' own connections are not capped per address), and session
    # creation for everyone together, beside each address's own bucket.
    ws_max_per_session: int = Field(8, ge=1)
    ws_max_per_address: int = Field(100, ge=1)
    api_max_connections_per_address: int = Field(200, ge=1)
    session_global_burst: int = Field(100, ge=1)
    session_global_per_s: float = Field(20.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _load_catalog(cls, data: Any) -> Any:
        if isinstance(data, dict):
            catalog = data.get("catalog") or Catalog.load()
            data = {**data, "catalog": catalog}
            data.setdefault("essaim_size", catalog.size)
        return data

    @field_validator("swarm_seed", "redis_min_acks", mode="before")
    @classmethod
    def _empty_seed(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("cors_origins", "allowed_hosts", "trusted_proxies", mode="before")
    @classmethod
    def _list(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        text = value.strip()
        # "[::1]" is a host, not a JSON list
        if text.startswith("[") and not text.startswith("[:") and "]:" not in text[:64]:
            try:
                items = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not a JSON list ({exc.msg})") from None
            if not isinstance(items, list) or not all(isinstance(o, str) for o in items):
                raise ValueError("must be a JSON list of strings")
        else:
            items = [o for o in text.split(",")]
        return tuple(o.strip().rstrip("/") for o in items if o.strip())

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for host in value:
            if host != ANY_HOST and split_host(host) is None:
                raise ValueError(f"{host[:64]!r} is not a host or host:port")
        return tuple(h.lower() for h in value)

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        parse_networks(value)   # raises naming the bad entry
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        return _check_url(value, ("postgresql", "postgres"))

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        value = value.strip()
        if value.startswith(SENTINEL_SCHEME + "://"):
            parse_redis_url(value)   # raises ValueError saying what is wrong (never the password)
            return value
        return _check_url(value, ("redis", "rediss", "unix", SENTINEL_SCHEME))

    @field_validator("operator_issuer", "operator_audience", "operator_jwt_secret")
    @classmethod
    def _stripped(cls, value: str) -> str:
        return value.strip()

    @field_validator("operator_jwks_url")
    @classmethod
    def _jwks_url(cls, value: str) -> str:
        value = value.strip()
        if value:
            _check_url(value, ("https", "http"))
        return value

    @field_validator("operator_roles_claim")
    @classmethod
    def _roles_claim(cls, value: str) -> str:
        value = value.strip()
        if not value or any(not part for part in value.split(".")):
            raise ValueError("must be a claim name or a dotted path (app_metadata.roles)")
        return value

    @field_validator("safeguard_reset_aal")
    @classmethod
    def _aal(cls, value: str) -> str:
        value = value.strip().lower()
        if value not in AAL_LEVELS:
            raise ValueError(f"must be one of {', '.join(AAL_LEVELS)}")
        return value

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
        return level

    @model_validator(mode="after")
    def _coherent(self) -> Settings:
        if self.essaim_size != self.catalog.size:
            raise _SettingError(
                "essaim_size",
                f"{self.essaim_size} disagrees with the sphere distribution, which sums to "
                f"{self.catalog.size}",
            )
        if (self.database_url or self.redis_url) and len(self.secret_key) < MIN_SECRET_KEY_CHARS:
            raise _SettingError(
                "secret_key",
                f"must have at least {MIN_SECRET_KEY_CHARS} characters when DATABASE_URL or REDIS_URL is set",
            )
        if self.operator_jwt_secret and len(self.operator_jwt_secret) < MIN_SECRET_KEY_CHARS:
            raise _SettingError("operator_jwt_secret",
                                f"must have at least {MIN_SECRET_KEY_CHARS} characters")
        if self.operator_jwks_url and not self.operator_issuer:
            raise _SettingError("operator_jwks_url",
                                "needs OPERATOR_ISSUER: the iss its tokens must carry")
        if self.ws_port == self.api_port and self.api_port != 0:
            raise _SettingError("ws_port", f"{self.ws_port} is also API_PORT")
        return self

    @property
    def min_acks(self) -> int:
        """REDIS_MIN_ACKS as it applies: 0 without Redis; unset, 1 with sentinels, else 0."""
        if not self.redis_url:
            return 0
        if self.redis_min_acks is not None:
            return self.redis_min_acks
        return 1 if parse_redis_url(self.redis_url).sentinels else 0

    @property
    def jwks_url(self) -> str:
        """Where the issuer's public keys are: OPERATOR_JWKS_URL, else the issuer's well-known
        path (Supabase's), else none. From the settings only, never from a token."""
        if self.operator_jwks_url:
            return self.operator_jwks_url
        if self.operator_issuer.startswith(("https://", "http://")):
            return self.operator_issuer.rstrip("/") + "/.well-known/jwks.json"
        return ""

    @property
    def operators_configured(self) -> bool:
        """Whether the deployment names who vouches for operators (an issuer or a shared secret)."""
        return bool(self.operator_issuer or self.operator_jwt_secret)

    def with_ephemeral_key(self) -> tuple[Settings, bool]:
        """Return settings with a SECRET_KEY, making a random one if empty, and whether it was made."""
        if self.secret_key:
            return self, False
        return self.model_copy(update={"secret_key": secrets.token_urlsafe(48)}), True


class _SettingError(ValueError):
    def __init__(self, field: str, problem: str) -> None:
        super().__init__(problem)
        self.field = field


SENTINEL_SCHEME = "redis+sentinel"
SENTINEL_PORT = 26379


@dataclass(frozen=True)
class RedisAddress:
    """Where REDIS_URL points: ``url`` as given; with sentinels, the ``sentinels`` (host, port)
    to ask for the primary of ``master``, and the primary's ``db``, ``username`` and
    ``password`` (the sentinels themselves are asked without one). Its repr never shows the
    password."""

    url: str
    sentinels: tuple[tuple[str, int], ...] = ()
    master: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = None

    def __repr__(self) -> str:
        where = ",".join(f"{h}:{p}" for h, p in self.sentinels) or "(url)"
        return f"RedisAddress(sentinels={where}, master={self.master!r}, db={self.db})"


def parse_redis_url(url: str) -> RedisAddress:
    """Read REDIS_URL: ``redis://…`` (and ``rediss://``, ``unix://``) as redis-py reads it, or
    ``redis+sentinel://[[user]:password@]host[:port][,host[:port]…]/<master-name>[/<db>]``
    (port 26379 by default). Raise ValueError saying what is wrong; the message never repeats
    the password."""
    url = url.strip()
    if not url.startswith(SENTINEL_SCHEME + "://"):
        return RedisAddress(url)
    rest = url[len(SENTINEL_SCHEME) + 3:]
    netloc, _, path = rest.partition("/")
    if "?" in path or "#" in path:
        raise ValueError("takes no query or fragment after the master name")
    username = password = None
    if "@" in netloc:
        userinfo, _, netloc = netloc.rpartition("@")
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
        if not colon:   # "secret@host": the conventional ":secret@host" without its colon
            username, password = None, unquote(user) or None
    sentinels = []
    for item in netloc.split(","):
        item = item.strip()
        if not item:
            raise ValueError("lists an empty sentinel address (host:port,host:port,...)")
        if item.startswith("["):
            host, _, tail = item[1:].partition("]")
            port_text = tail[1:] if tail.startswith(":") else ""
            if tail and not tail.startswith(":"):
                raise ValueError(f"has a bad sentinel address {item[:64]!r}")
        else:
            host, _, port_text = item.partition(":")
        if not host:
            raise ValueError(f"has a sentinel address without a host ({item[:64]!r})")
        if port_text and not (port_text.isdigit() and 0 < int(port_text) < 65536):
            raise ValueError(f"has a sentinel port that is not a number in 1..65535 ({item[:64]!r})")
        sentinels.append((host, int(port_text) if port_text else SENTINEL_PORT))
    parts = path.split("/") if path else []
    if not parts or not parts[0]:
        raise ValueError("names no master: redis+sentinel://host:port[,host:port...]/<master-name>[/<db>]")
    if len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
        raise ValueError("has a path that is not /<master-name>[/<db>] (db: a number)")
    return RedisAddress(url, tuple(sentinels), unquote(parts[0]),
                        int(parts[1]) if len(parts) == 2 else 0, username, password)


def _check_url(value: str, schemes: tuple[str, ...]) -> str:
    value = value.strip()
    if not value:
        return ""
    parts = urlsplit(value)
    if parts.scheme not in schemes:
        raise ValueError(f"must start with {' or '.join(s + '://' for s in schemes)}")
    if parts.scheme != "unix" and not parts.hostname:
        raise ValueError("has no host")
    try:
        parts.port
    except ValueError:
        raise ValueError("has a port that is not a number") from None
    return value


def load_settings(environ: Mapping[str, str] | None = None,
                  env_file: str | Path | None = ".env") -> Settings:
    """Read and validate the settings; raise :class:`ConfigError` naming the first bad one.

    ``environ`` defaults to ``os.environ``; values there win over the ``env_file``'s.
    """
    environ = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    if env_file is not None and Path(env_file).is_file():
        raw.update({k.upper(): v for k, v in dotenv_values(env_file).items() if v is not None})
    raw.update({k.upper(): v for k, v in environ.items()})
    known = {name.upper(): name for name in Settings.model_fields if name != "catalog"}
    values = {known[k]: v for k, v in raw.items() if k in known}
    try:
        return Settings.model_validate(values)
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        cause = err.get("ctx", {}).get("error")
        if isinstance(cause, _SettingError):
            raise ConfigError(cause.field.upper(), str(cause)) from None
        field = str(err["loc"][0]).upper() if err["loc"] else "settings"
        given = values.get(field.lower())
        msg = err["msg"].removeprefix("Value error, ")
        # Never echoed: the secrets, and the URLs, which may carry a password.
        quiet = field in ("SECRET_KEY", "OPERATOR_JWT_SECRET", "REDIS_URL", "DATABASE_URL")
        problem = f"{msg} (got {given!r})" if given is not None and not quiet else msg
        raise ConfigError(field, problem) from None
