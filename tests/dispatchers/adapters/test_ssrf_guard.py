from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable

import pytest

from dispatchers.adapters.ssrf_guard import check_target, forbidden_reason, resolve_host
from dispatchers.core.http import TransportError


def resolver(table: dict[str, list[str]]) -> Callable[[str], Awaitable[list[str]]]:
    async def resolve(host: str) -> list[str]:
        if host not in table:
            raise TransportError("connect", f"cannot resolve host {host!r}")
        return table[host]

    return resolve


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("8.8.8.8", None),
        ("1.1.1.1", None),
        ("2606:4700:4700::1111", None),
        ("::ffff:8.8.8.8", None),  # IPv4-mapped public address
        ("127.0.0.1", "loopback"),
        ("127.255.255.254", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.255", "private"),
        ("192.168.1.1", "private"),
        ("100.64.0.1", "shared_address_space"),
        ("100.127.255.255", "shared_address_space"),
        ("169.254.169.254", "link_local"),  # cloud metadata
        ("fe80::1", "link_local"),
        ("fc00::1", "private"),
        ("fd12:3456::1", "private"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),  # limited broadcast, inside 240.0.0.0/4
        ("192.0.2.1", "private"),  # TEST-NET documentation range
        ("::ffff:127.0.0.1", "ipv4_embedded_loopback"),
        ("::ffff:169.254.169.254", "ipv4_embedded_link_local"),
        ("::ffff:10.0.0.1", "ipv4_embedded_private"),
        ("2002:7f00:1::", "ipv4_embedded_loopback"),  # 6to4 wrapping 127.0.0.1
        ("64:ff9b::a9fe:a9fe", "ipv4_embedded_link_local"),  # NAT64 wrapping 169.254.169.254
    ],
)
def test_forbidden_reason(address: str, reason: str | None) -> None:
    assert forbidden_reason(ipaddress.ip_address(address)) == reason


@pytest.mark.parametrize(
    "url",
    [
        "https://postback.example.com/pb?clickid=1",
        "http://postback.example.com:8080/pb",
        "HTTPS://POSTBACK.EXAMPLE.COM/pb",
        "http://8.8.8.8/pb",
        "http://[2606:4700:4700::1111]/pb",
    ],
)
async def test_public_targets_pass(url: str) -> None:
    await check_target(
        url, allow_private=False, resolve=resolver({"postback.example.com": ["93.184.215.14", "2606:2800:21f::1"]})
    )


@pytest.mark.parametrize(
    ("url", "table", "fragment"),
    [
        ("ftp://postback.example.com/x", {}, "scheme 'ftp'"),
        ("file:///etc/passwd", {}, "scheme 'file'"),
        ("gopher://127.0.0.1:6379/_INFO", {}, "scheme 'gopher'"),
        ("javascript:alert(1)", {}, "scheme 'javascript'"),
        ("http:///no-host", {}, "no host"),
        ("http://127.0.0.1/x", {}, "loopback"),
        ("http://[::1]:8080/x", {}, "loopback"),
        ("http://169.254.169.254/latest/meta-data/", {}, "link_local"),
        ("http://[::ffff:169.254.169.254]/", {}, "ipv4_embedded_link_local"),
        ("http://localhost/x", {"localhost": ["127.0.0.1", "::1"]}, "loopback"),
        ("http://internal.corp/x", {"internal.corp": ["10.0.0.5"]}, "private"),
        ("http://cgnat.example/x", {"cgnat.example": ["100.64.1.1"]}, "shared_address_space"),
        # One public and one private address: every address is checked, not just the first.
        ("http://mixed.example/x", {"mixed.example": ["93.184.215.14", "192.168.0.10"]}, "private"),
        ("http://metadata.example/x", {"metadata.example": ["fe80::1%eth0"]}, "link_local"),
    ],
)
async def test_refused_targets(url: str, table: dict[str, list[str]], fragment: str) -> None:
    with pytest.raises(TransportError) as caught:
        await check_target(url, allow_private=False, resolve=resolver(table))
    assert caught.value.kind == "refused_target"
    assert fragment in caught.value.message


async def test_allow_private_lets_loopback_through_but_not_other_schemes() -> None:
    await check_target("http://127.0.0.1:9/x", allow_private=True, resolve=resolver({}))
    await check_target("http://localhost/x", allow_private=True, resolve=resolver({}))  # not even resolved
    with pytest.raises(TransportError) as caught:
        await check_target("file:///etc/passwd", allow_private=True, resolve=resolver({}))
    assert caught.value.kind == "refused_target"


async def test_resolution_failure_and_empty_answers_are_retryable_connect_errors() -> None:
    with pytest.raises(TransportError) as caught:
        await check_target("http://nowhere.example/x", allow_private=False, resolve=resolver({}))
    assert caught.value.kind == "connect"
    with pytest.raises(TransportError) as caught:
        await check_target("http://empty.example/x", allow_private=False, resolve=resolver({"empty.example": []}))
    assert caught.value.kind == "connect"


async def test_default_resolver_resolves_localhost_and_the_guard_refuses_it() -> None:
    addresses = await resolve_host("localhost")
    assert addresses
    assert all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)
    with pytest.raises(TransportError) as caught:
        await check_target("http://localhost:8080/pb", allow_private=False, resolve=resolve_host)
    assert caught.value.kind == "refused_target"


async def test_default_resolver_failure_is_a_connect_error() -> None:
    with pytest.raises(TransportError) as caught:
        await resolve_host("does-not-exist.invalid")
    assert caught.value.kind == "connect"


async def test_decimal_ipv4_host_is_resolved_and_refused() -> None:
    # 2130706433 == 127.0.0.1; not an IP literal to ipaddress, so it goes through the resolver.
    with pytest.raises(TransportError) as caught:
        await check_target("http://2130706433/x", allow_private=False, resolve=resolve_host)
    assert caught.value.kind == "refused_target"
