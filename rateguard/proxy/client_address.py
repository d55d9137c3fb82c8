"""Who the client is, when RateGuard sits behind a load balancer or ingress. Pure.

Only hops that arrive from a trusted proxy (TRUSTED_PROXIES, CIDRs) are believed: the
client is the right-most X-Forwarded-For address that is not itself a trusted proxy.
From anyone else, X-Forwarded-For is ignored and the socket peer is the client, so a
caller cannot choose the address its `ip`-scoped limit counts against.
"""

from __future__ import annotations

import ipaddress

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(value: str) -> tuple[Network, ...]:
    """``"10.0.0.0/8, 127.0.0.1"`` -> networks; ValueError names the bad entry."""
    networks = []
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not an address or CIDR") from None
    return tuple(networks)


def _trusted(address: str, trusted: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip.version == net.version and ip in net for net in trusted)


def is_trusted(peer: str, trusted: tuple[Network, ...]) -> bool:
    """Whether the socket peer is one of the trusted proxies."""
    return bool(trusted) and _trusted(peer, trusted)


def client_address(peer: str, forwarded_for: bytes | None,
                   trusted: tuple[Network, ...]) -> str:
    """The client's address for limits and events."""
    if not trusted or not forwarded_for or not _trusted(peer, trusted):
        return peer
    hops = forwarded_for.decode("latin-1").split(",")
    for hop in reversed(hops):
        hop = hop.strip()
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return peer  # a malformed chain: believe nothing in it
        if not _trusted(hop, trusted):
            return hop
    return hops[0].strip()  # every hop is a trusted proxy: the first one is the origin


def forwarded_proto(peer: str, value: bytes | None, trusted: tuple[Network, ...]) -> bytes:
    """``X-Forwarded-Proto`` to send upstream: a trusted proxy's word (TLS terminated at
    the ingress), else ``http``, the scheme this listener speaks."""
    if value and trusted and value.strip().lower() in (b"http", b"https") \
            and _trusted(peer, trusted):
        return value.strip().lower()
    return b"http"
