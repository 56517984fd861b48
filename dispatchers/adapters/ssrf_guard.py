"""Refuse S2S targets that would make the dispatcher reach into private networks (contract §4).

S2S URLs come from users, so a URL could point the dispatcher at the cloud metadata service
(169.254.169.254), at the cluster's internal services, or at loopback. `check_target` refuses
non-http(s) schemes and every host that is, or resolves to, an address that is not on the public
internet, unless private targets are allowed by configuration (`POSTBACK_ALLOW_PRIVATE_TARGETS=1`;
tests allow loopback).

DNS rebinding: a name can resolve to a public address when checked and to 127.0.0.1 a moment later
when the connection is made. Checking the URL before sending is therefore not enough on its own;
`AiohttpTransport` applies `check_address` to every address its resolver returns, at connect time,
so the address that was checked is the address it connects to. `check_target` is still useful before
enqueueing a retry and for transports that resolve elsewhere (`GuardedTransport`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from dispatchers.core.http import TransportError

Resolve = Callable[[str], Awaitable[list[str]]]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ALLOWED_SCHEMES = frozenset({"http", "https"})
_SHARED_ADDRESS_SPACE = ipaddress.IPv4Network("100.64.0.0/10")  # RFC 6598 carrier-grade NAT
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052: the last 32 bits are an IPv4 address


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, 6to4, NAT64), which is what gets reached."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def forbidden_reason(address: IPAddress) -> str | None:
    """Why `address` is not a public target (a short code), or None when it is public."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            reason = forbidden_reason(embedded)
            return None if reason is None else f"ipv4_embedded_{reason}"
    # Order matters only for the reason reported: the most specific class first.
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link_local"
    if address.is_multicast:
        return "multicast"
    if isinstance(address, ipaddress.IPv4Address) and address in _SHARED_ADDRESS_SPACE:
        return "shared_address_space"
    if address.is_reserved:
        return "reserved"
    if address.is_private:
        return "private"
    if not address.is_global:
        # Documentation ranges, benchmarking, 6to4 relay anycast and the like.
        return "not_global"
    return None


def check_address(host: str, address: str, *, allow_private: bool) -> None:
    """Raise TransportError("refused_target") when `address` (an IP literal) is not a public target."""
    if allow_private:
        return
    try:
        parsed = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone id (fe80::1%eth0)
    except ValueError:
        raise TransportError("refused_target", f"host {host!r} resolved to a non-IP address") from None
    reason = forbidden_reason(parsed)
    if reason is not None:
        raise TransportError("refused_target", f"host {host!r} is {reason} ({parsed}); private targets are not allowed")


def target_host(url: str) -> str:
    """The host of an http(s) URL; raises TransportError("refused_target") for anything else."""
    try:
        split = urlsplit(url)
        host = split.hostname
    except ValueError:
        raise TransportError("refused_target", "URL cannot be parsed") from None
    if split.scheme.lower() not in ALLOWED_SCHEMES:
        raise TransportError("refused_target", f"scheme {split.scheme!r} is not allowed; use http or https")
    if not host:
        raise TransportError("refused_target", "URL has no host")
    return host


def literal_address(host: str) -> str | None:
    """`host` as an IP address string when it is an IP literal, else None (a name to resolve)."""
    try:
        return str(ipaddress.ip_address(host.split("%", 1)[0]))
    except ValueError:
        return None


async def check_target(url: str, *, allow_private: bool, resolve: Resolve) -> None:
    """Refuse `url` unless it is http(s) and every address its host resolves to is public.

    Every resolved address is checked, not just the first: a name that resolves to one public and
    one private address would otherwise reach the private one whenever the client picks it.
    """
    host = target_host(url)
    if allow_private:
        return
    literal = literal_address(host)
    addresses = [literal] if literal is not None else await resolve(host)
    if not addresses:
        raise TransportError("connect", f"host {host!r} resolved to no address")
    for address in addresses:
        check_address(host, address, allow_private=False)


async def resolve_host(host: str) -> list[str]:
    """The default resolver: every address the system resolver gives for `host`.

    A failed lookup is a TransportError("connect"): DNS outages are transient, so the postback is retried.
    """
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise TransportError("connect", f"cannot resolve host {host!r}: {exc}") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))
