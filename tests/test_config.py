from __future__ import annotations

import pytest

from atom_actors.config import load_settings
from atom_actors.errors import ConfigError


def test_defaults_match_the_contract():
    s = load_settings({}, env_file=None)
    assert (s.api_host, s.api_port, s.ws_port) == ("127.0.0.1", 8000, 8001)
    assert s.frequency == 999 and s.essaim_size == 350 and s.sceau_duration == 2000
    assert s.zero_log is True and s.tick_hz == 60 and s.ws_max_connections == 500
    assert s.cors_origins == ("https://atom-interface.vercel.app",)
    assert s.ws_require_session and s.session_ttl_s == 3600 and s.swarm_seed is None
    assert s.dispersal_dwell_s == 5 and s.ws_stall_timeout_s == 10 and s.log_level == "INFO"


def test_env_file_is_read_and_environment_wins(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("API_PORT=9000\nWS_PORT=9001\nTICK_HZ=30\n")
    s = load_settings({"API_PORT": "9100"}, env_file=env_file)
    assert (s.api_port, s.ws_port, s.tick_hz) == (9100, 9001, 30)


@pytest.mark.parametrize("value, expected", [
    ('["https://a.example", "http://b.example:3000"]', ("https://a.example", "http://b.example:3000")),
    ("https://a.example, https://b.example/", ("https://a.example", "https://b.example")),
])
def test_cors_origins_json_or_comma_separated(value, expected):
    assert load_settings({"CORS_ORIGINS": value}, env_file=None).cors_origins == expected


@pytest.mark.parametrize("env, setting, words", [
    ({"API_PORT": "eighty"}, "API_PORT", "integer"),
    ({"WS_PORT": "70000"}, "WS_PORT", "65535"),
    ({"ESSAIM_SIZE": "349"}, "ESSAIM_SIZE", "sphere distribution"),
    ({"FREQUENCY": "400"}, "FREQUENCY", "432"),
    ({"DATABASE_URL": "mysql://db/x", "SECRET_KEY": "k" * 32}, "DATABASE_URL", "postgresql://"),
    ({"REDIS_URL": "redis://:notaport:x", "SECRET_KEY": "k" * 32}, "REDIS_URL", ""),
    ({"REDIS_URL": "redis://localhost:6379"}, "SECRET_KEY", "32 characters"),
    ({"DATABASE_URL": "postgresql://localhost/x", "SECRET_KEY": "short"}, "SECRET_KEY", "32"),
    ({"ZERO_LOG": "perhaps"}, "ZERO_LOG", "boolean"),
    ({"TICK_HZ": "0"}, "TICK_HZ", "greater"),
    ({"SWARM_SEED": "abc"}, "SWARM_SEED", "integer"),
    ({"CORS_ORIGINS": "[not json"}, "CORS_ORIGINS", "JSON"),
    ({"LOG_LEVEL": "chatty"}, "LOG_LEVEL", "DEBUG"),
    ({"SESSION_TTL_S": "-1"}, "SESSION_TTL_S", "greater"),
    ({"API_PORT": "8001"}, "WS_PORT", "API_PORT"),
    ({"TRUSTED_PROXIES": "10.0.0.0/8, nginx"}, "TRUSTED_PROXIES", "'nginx' is not an address"),
    ({"TRUSTED_PROXIES": "10.0.0.0/33"}, "TRUSTED_PROXIES", "not an address or a CIDR"),
    ({"WS_MAX_PER_SESSION": "0"}, "WS_MAX_PER_SESSION", "greater"),
    ({"WS_MAX_PER_ADDRESS": "many"}, "WS_MAX_PER_ADDRESS", "integer"),
    ({"API_MAX_CONNECTIONS_PER_ADDRESS": "0"}, "API_MAX_CONNECTIONS_PER_ADDRESS", "greater"),
    ({"SESSION_GLOBAL_BURST": "0"}, "SESSION_GLOBAL_BURST", "greater"),
    ({"SESSION_GLOBAL_PER_S": "0"}, "SESSION_GLOBAL_PER_S", "greater"),
])
def test_bad_values_name_the_setting(env, setting, words):
    with pytest.raises(ConfigError) as info:
        load_settings(env, env_file=None)
    assert info.value.setting == setting
    assert words in info.value.problem
    assert "\n" not in str(info.value)


def test_secret_key_is_never_echoed_in_errors():
    with pytest.raises(ConfigError) as info:
        load_settings({"REDIS_URL": "redis://localhost", "SECRET_KEY": "s3cr3t-value"}, env_file=None)
    assert "s3cr3t-value" not in str(info.value)


def test_empty_secret_key_gets_an_ephemeral_one():
    s, made = load_settings({}, env_file=None).with_ephemeral_key()
    assert made and len(s.secret_key) >= 32
    again, made_again = s.with_ephemeral_key()
    assert again is s and not made_again


KEY = {"SECRET_KEY": "k" * 32}


def test_a_sentinel_url_names_the_sentinels_the_master_and_its_db():
    from atom_actors.config import parse_redis_url

    s = load_settings({"REDIS_URL": "redis+sentinel://:pa%40ss@10.0.0.1:26380,sentinel-b,[::1]:26381/atom/3",
                       **KEY}, env_file=None)
    address = parse_redis_url(s.redis_url)
    assert address.sentinels == (("10.0.0.1", 26380), ("sentinel-b", 26379), ("::1", 26381))
    assert (address.master, address.db, address.password, address.username) == ("atom", 3, "pa@ss", None)
    assert "pa@ss" not in repr(address)
    assert parse_redis_url("redis+sentinel://h/m").db == 0
    assert parse_redis_url("redis://h:6379/0").sentinels == ()


@pytest.mark.parametrize("url, words", [
    ("redis+sentinel://h1:26379,h2:26379", "names no master"),
    ("redis+sentinel://h1:26379/", "names no master"),
    ("redis+sentinel://h1:port/atom", "not a number"),
    ("redis+sentinel://h1:0/atom", "1..65535"),
    ("redis+sentinel://h1,,h2/atom", "empty sentinel address"),
    ("redis+sentinel://:pw@/atom", "empty sentinel address"),
    ("redis+sentinel://h1/atom/zero", "<master-name>[/<db>]"),
    ("redis+sentinel://h1/atom/0/more", "<master-name>[/<db>]"),
    ("redis+sentinel://h1/atom?ssl=1", "no query"),
    ("sentinel://h1/atom", "redis+sentinel://"),
])
def test_a_bad_sentinel_url_is_one_line_naming_redis_url_and_never_its_password(url, words):
    url = url.replace("://", "://:hunter2-secret@", 1) if "@" not in url else url
    with pytest.raises(ConfigError) as info:
        load_settings({"REDIS_URL": url, **KEY}, env_file=None)
    assert info.value.setting == "REDIS_URL" and words in info.value.problem
    assert "\n" not in str(info.value) and "hunter2" not in str(info.value)


@pytest.mark.parametrize("env, acks", [
    ({}, 0),
    ({"REDIS_URL": "redis://h:6379/0"}, 0),
    ({"REDIS_URL": "redis+sentinel://h/atom"}, 1),
    ({"REDIS_URL": "redis+sentinel://h/atom", "REDIS_MIN_ACKS": ""}, 1),
    ({"REDIS_URL": "redis+sentinel://h/atom", "REDIS_MIN_ACKS": "0"}, 0),
    ({"REDIS_URL": "redis+sentinel://h/atom", "REDIS_MIN_ACKS": "2"}, 2),
    ({"REDIS_URL": "redis://h:6379/0", "REDIS_MIN_ACKS": "1"}, 1),
    ({"REDIS_MIN_ACKS": "2"}, 0),   # no Redis: nothing to wait for
])
def test_redis_min_acks_defaults_to_one_with_sentinels(env, acks):
    assert load_settings({**env, **KEY}, env_file=None).min_acks == acks


def test_a_bad_redis_min_acks_names_it():
    with pytest.raises(ConfigError) as info:
        load_settings({"REDIS_MIN_ACKS": "-1"}, env_file=None)
    assert info.value.setting == "REDIS_MIN_ACKS"
