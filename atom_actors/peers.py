"""Who a client is, for the fair shares (pure): its address, or behind a trusted proxy the one
the proxy forwarded.

X-Forwarded-For is anyone's to write. Each proxy appends the address it saw, so behind
``hops`` proxies only the ``hops``-th entry from the right is believed — and only when the
connection itself comes from one of the TRUSTED_PROXIES (issue 24: with the API reachable
directly, any client could otherwise name any address, open unlimited sessions, or have a
victim's address refused). A peer not on the list is its own address, whatever it sends.

The addresses are used as keys of in-memory counters only, never written anywhere (ZERO_LOG).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Final

# With TRUSTED_PROXY_HOPS > 0 and no TRUSTED_PROXIES: a proxy on this machine.
LOOPBACK: Final = ("127.0.0.0/8", "::1/128")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(items: Iterable[str]) -> tuple[Network, ...]:
    """Addresses or CIDRs (``10.0.0.0/8``, ``::1``) as networks; raise ValueError naming a bad one."""
    networks = []
    for item in items:
        try:
            networks.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{item[:64]!r} is not an address or a CIDR") from None
    return tuple(networks)


class ClientAddresses:
    """The rule above, for one deployment's TRUSTED_PROXY_HOPS and TRUSTED_PROXIES."""

    def __init__(self, hops: int, proxies: Iterable[str] = ()) -> None:
        self.hops = hops
        self.proxies = parse_networks(tuple(proxies) or (LOOPBACK if hops else ()))

    def is_proxy(self, peer: str | None) -> bool:
        """Whether ``peer`` (a connection's address) is a trusted proxy."""
        if not self.hops or not peer:
            return False
        try:
            address = ipaddress.ip_address(peer.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.proxies)

    def client(self, peer: str | None, forwarded_for: str | None) -> str:
        """The client's address: ``peer``'s, or, when ``peer`` is a trusted proxy, the entry of
        ``forwarded_for`` (X-Forwarded-For) the proxies vouch for."""
        if self.is_proxy(peer):
            entries = [part.strip() for part in (forwarded_for or "").split(",")]
            entries = [part for part in entries if part]
            if len(entries) >= self.hops:
                return entries[-self.hops][:64]
        return peer or "-"
