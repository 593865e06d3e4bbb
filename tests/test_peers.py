"""Who a client is behind trusted proxies (pure): ``atom_actors.peers``."""

from __future__ import annotations

import pytest

from atom_actors.peers import ClientAddresses


def test_without_hops_the_peer_is_the_client_whatever_it_forwards():
    addresses = ClientAddresses(0)
    assert addresses.client("192.0.2.1", "203.0.113.9") == "192.0.2.1"
    assert not addresses.is_proxy("127.0.0.1")


@pytest.mark.parametrize("peer, forwarded, client", [
    ("127.0.0.1", "198.51.100.1, 203.0.113.9", "203.0.113.9"),   # the proxy's entry, rightmost
    ("::1", "203.0.113.9", "203.0.113.9"),
    ("::ffff:127.0.0.1", "203.0.113.9", "203.0.113.9"),           # a v4 proxy seen over v6
    ("127.0.0.1", "", "127.0.0.1"),                               # nothing forwarded
    ("192.0.2.1", "203.0.113.9", "192.0.2.1"),                    # not a proxy: itself
    ("fe80::1%eth0", "203.0.113.9", "fe80::1%eth0"),
])
def test_by_default_only_loopback_is_believed(peer, forwarded, client):
    assert ClientAddresses(1).client(peer, forwarded) == client


def test_listed_proxies_and_hops_count_from_the_right():
    addresses = ClientAddresses(2, ["10.0.0.0/8", "2001:db8::/32"])
    assert addresses.client("10.1.2.3", "forged, 198.51.100.7, 10.9.9.9") == "198.51.100.7"
    assert addresses.client("2001:db8::5", "198.51.100.7, 10.9.9.9") == "198.51.100.7"
    assert addresses.client("127.0.0.1", "198.51.100.7, 10.9.9.9") == "127.0.0.1"   # not listed
    assert addresses.client("10.1.2.3", "198.51.100.7") == "10.1.2.3"   # fewer entries than hops
