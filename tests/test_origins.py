"""The one host and origin policy (origins.py), for CORS and the WebSocket handshake: pure."""

from __future__ import annotations

import pytest

from atom_actors.origins import OriginPolicy, normalise_origin, split_host

DEFAULT_HOSTS = ("localhost", "127.0.0.1", "[::1]")


@pytest.mark.parametrize("host, split", [
    ("localhost", ("localhost", None)), ("LocalHost:8000", ("localhost", 8000)),
    ("[::1]:8001", ("[::1]", 8001)), ("atom.example.", ("atom.example", None)),
    ("", None), ("a b", None), ("evil.example:80:80", None), ("x:123456", None), ("[zz]", None),
    ("evil.example@127.0.0.1", None), ("ok\r\nx", None),
])
def test_split_host(host, split):
    assert split_host(host) == split


def test_origins_compare_lower_case_without_slash_or_default_port():
    assert normalise_origin("HTTPS://Atom.Example:443/") == "https://atom.example"
    assert normalise_origin("http://atom.example:80") == "http://atom.example"
    assert normalise_origin("http://atom.example:8000") == "http://atom.example:8000"


@pytest.mark.parametrize("host, allowed", [
    ("localhost:8000", True), ("127.0.0.1", True), ("[::1]:1", True), ("LOCALHOST", True),
    ("evil.example", False), ("evil.example:8000", False), ("localhost.evil.example", False),
    ("127.0.0.1.nip.io", False), ("", False), (None, False),
])
def test_a_host_must_be_on_allowed_hosts(host, allowed):
    assert OriginPolicy([], DEFAULT_HOSTS).host_allowed(host) is allowed


def test_a_host_with_a_port_allows_that_port_only_and_star_allows_any():
    policy = OriginPolicy([], ["atom.example:8443"])
    assert policy.host_allowed("atom.example:8443") and not policy.host_allowed("atom.example")
    assert not policy.host_allowed("atom.example:443")
    assert OriginPolicy([], ["*"]).host_allowed("anything.example:1")


def test_dns_rebinding_finds_no_origin_to_hide_behind():
    """The page on evil.example, re-pointed at 127.0.0.1: its Origin names the Host it sent, but
    that Host is not allowed, so neither is the origin."""
    policy = OriginPolicy(["https://app.example"], DEFAULT_HOSTS)
    assert not policy.origin_allowed("http://evil.example:8000", "evil.example:8000")
    # The same rule for a listed host: a page of the site itself.
    assert policy.origin_allowed("http://localhost:8000", "localhost:8000")
    assert policy.origin_allowed("https://atom.example", "atom.example") is False
    site = OriginPolicy([], ["atom.example"])
    assert site.origin_allowed("https://atom.example", "atom.example")
    assert site.origin_allowed("https://atom.example", "atom.example:443")
    assert not site.origin_allowed("https://atom.example:8443", "atom.example")


def test_listed_own_and_absent_origins():
    policy = OriginPolicy(["https://app.example/"], DEFAULT_HOSTS, own=["http://0.0.0.0:8000"])
    assert policy.listed("https://APP.example") and policy.origin_allowed("https://app.example", "x")
    assert not policy.listed("http://localhost:8000")
    for own in ("http://localhost:8000", "http://127.0.0.1:8000", "http://[::1]:8000"):
        assert policy.origin_allowed(own, "localhost:8001")   # the API's page, the WS port
    assert policy.origin_allowed(None, "localhost")           # a non-browser client
    assert not policy.origin_allowed("null", "localhost")
