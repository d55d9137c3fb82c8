"""One egress policy for everything that connects out: the proxy's upstream pool, the
config sources, the management API's checks of upstream URLs, and the alerts' webhooks,
Slack and SMTP (test sends included). Built once from Settings (:func:`from_settings`)
and handed down; there is no other place that decides.

Always refused: link-local (169.254.0.0/16, every cloud's metadata service, fe80::/10),
cloud metadata names and addresses, "this network" / unspecified, multicast, broadcast.
Refused in production unless ALLOW_PRIVATE_UPSTREAMS: private (RFC 1918, CGNAT,
unique-local IPv6) and loopback, ``localhost`` included. An IPv6 address that embeds an
IPv4 address is judged as that IPv4 address: IPv4-mapped (``::ffff:a.b.c.d``),
IPv4-compatible (``::a.b.c.d``, ``[::a9fe:a9fe]``), NAT64 (``64:ff9b::/96`` and the
local-use ``64:ff9b:1::/48``), 6to4 (``2002::/16``) and Teredo (``2001::/32``, its client
address). Every refusal says why, in words fit for a 422.

Names are checked again after resolution, on every address they resolve to, and the
connection goes to an address that was checked (:meth:`EgressPolicy.resolve`,
:class:`CheckedResolver` for aiohttp): a name cannot pass the check and then resolve
somewhere else (DNS rebinding).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

# Cloud metadata services by name (their addresses are link-local, refused below).
METADATA_HOSTS = frozenset({
    "metadata", "metadata.google.internal", "metadata.goog", "instance-data",
    "instance-data.ec2.internal", "metadata.azure.internal", "metadata.platformequinix.com",
})
_ALWAYS_REFUSED = tuple(ipaddress.ip_network(n) for n in (
    "169.254.0.0/16", "fe80::/10", "0.0.0.0/8", "::/128", "fd00:ec2::254/128",
    "100.100.100.200/32", "224.0.0.0/4", "ff00::/8", "255.255.255.255/32", "240.0.0.0/4",
))
_PRIVATE = tuple(ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7",
    "127.0.0.0/8", "::1/128", "198.18.0.0/15",
))
_COMPATIBLE = ipaddress.ip_network("::/96")
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries, if it is one of the embedding forms."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if any(address in net for net in _NAT64) or (
            address in _COMPATIBLE and int(address) > 1):  # not :: or ::1
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def literal_address(host: str):
    """The IP address a host string denotes, also in the legacy IPv4 forms resolvers
    accept (``2852039166``, ``0xA9FEA9FE``, ``0251.0376.0251.0376``); None for a name."""
    host = host.strip("[]").rstrip(".")
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        if not host or not all(c in "0123456789abcdefx." for c in host.lower()):
            return None
        try:
            return ipaddress.ip_address(socket.inet_aton(host))
        except OSError:
            return None


class Refused(ValueError):
    """A destination the policy refuses; ``str()`` is the reason."""


@dataclass(frozen=True, slots=True)
class EgressPolicy:
    """``allow_private=False`` (production without ALLOW_PRIVATE_UPSTREAMS) also refuses
    private and loopback addresses."""

    allow_private: bool = True

    def check_address(self, address) -> str | None:
        """Why an IP address (or its text) is refused, or None."""
        if isinstance(address, str):
            address = literal_address(address)
            if address is None:
                return None
        shown = address
        if isinstance(address, ipaddress.IPv6Address):
            inner = embedded_ipv4(address)
            if inner is not None:
                address = inner
        label = str(shown) if shown == address else f"{shown} (which carries {address})"
        if any(address in net for net in _ALWAYS_REFUSED if net.version == address.version):
            return (f"{label} is link-local, metadata, multicast or otherwise unroutable; "
                    "never allowed")
        if not self.allow_private and any(
                address in net for net in _PRIVATE if net.version == address.version):
            return (f"{label} is a private or loopback address; refused in production "
                    "unless ALLOW_PRIVATE_UPSTREAMS=true")
        return None

    def check_host(self, host: str) -> str | None:
        """Why a host (name or literal address) is refused before resolution, or None."""
        name = host.lower().rstrip(".")
        if name.strip("[]") in METADATA_HOSTS:
            return f"{host} is a cloud metadata service; never allowed"
        if not self.allow_private and (name == "localhost" or name.endswith(".localhost")):
            return (f"{host} is loopback; refused in production unless "
                    "ALLOW_PRIVATE_UPSTREAMS=true")
        address = literal_address(name)
        return None if address is None else self.check_address(address)

    def check_url(self, url: str, schemes=("http", "https")) -> str | None:
        parts = urlsplit(url)
        if parts.scheme not in schemes or not parts.hostname:
            return f"must be a URL such as {schemes[0]}://host[:port][/path]"
        return self.check_host(parts.hostname)

    async def resolve(self, host: str, port: int) -> list[str]:
        """The addresses ``host`` resolves to, every one checked; Refused if any is
        refused (or none is found). Connect to these, not to the name."""
        refused = self.check_host(host)
        if refused is not None:
            raise Refused(refused)
        literal = literal_address(host)
        if literal is not None:
            return [str(literal)]
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise Refused(f"cannot resolve {host}: {exc.strerror or exc}") from None
        addresses = []
        for info in infos:
            refused = self.check_address(info[4][0])
            if refused is not None:
                raise Refused(f"{host} resolves to {refused}")
            addresses.append(info[4][0])
        if not addresses:
            raise Refused(f"cannot resolve {host}")
        return addresses


ALWAYS = EgressPolicy(allow_private=True)   # development, or ALLOW_PRIVATE_UPSTREAMS
STRICT = EgressPolicy(allow_private=False)  # production default


def from_settings(settings) -> EgressPolicy:
    """The one policy for these Settings."""
    return STRICT if settings.production and not settings.ALLOW_PRIVATE_UPSTREAMS else ALWAYS


class CheckedResolver:
    """An aiohttp resolver that answers only with addresses the policy accepts (and
    raises for a name that resolves anywhere refused): aiohttp connects to exactly what
    was checked."""

    def __init__(self, policy: EgressPolicy) -> None:
        from aiohttp.resolver import DefaultResolver

        self.policy = policy
        self._inner = DefaultResolver()

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET):
        refused = self.policy.check_host(host)
        if refused is not None:
            raise OSError(f"refused: {refused}")
        answers = await self._inner.resolve(host, port, family)
        for answer in answers:
            refused = self.policy.check_address(answer["host"])
            if refused is not None:
                raise OSError(f"refused: {host} resolves to {refused}")
        return answers

    async def close(self) -> None:
        await self._inner.close()
