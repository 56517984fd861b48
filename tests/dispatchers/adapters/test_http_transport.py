from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from devtools.fakes.s2s_sink import S2SSink
from dispatchers.adapters.handler_transport import HandlerTransport
from dispatchers.adapters.http_transport import AiohttpTransport, GuardedTransport
from dispatchers.core.http import HttpRequest, HttpResponse, TransportError, redact_url


@pytest.fixture
async def sink() -> AsyncIterator[S2SSink]:
    async with S2SSink() as running:
        yield running


@pytest.fixture
async def transport() -> AsyncIterator[AiohttpTransport]:
    async with AiohttpTransport(allow_private_targets=True) as running:
        yield running


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


class StaticResolver(AbstractResolver):
    """Resolves every name to one address, like a DNS answer an attacker controls."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.calls: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.calls.append(host)
        return [ResolveResult(hostname=host, host=self.address, port=port, family=socket.AF_INET, proto=0, flags=0)]

    async def close(self) -> None:
        pass


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("https://pb.example.com/a/b?clickid=secret#frag", "https://pb.example.com/a/b"),
        ("http://user:pass@pb.example.com:8080/x?k=v", "http://pb.example.com:8080/x"),
        ("http://[::1]:9/p?q", "http://[::1]:9/p"),
        ("http://pb.example.com:99999/x", "<unparseable url>"),
    ],
)
def test_redact_url(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted


async def test_handler_transport_answers_and_records() -> None:
    async def handler(request: HttpRequest) -> HttpResponse:
        return HttpResponse(200, {"content-type": "text/plain"}, request.url.encode())

    transport = HandlerTransport(handler)
    response = await transport.send(HttpRequest("GET", "http://pb.example/x"))
    assert response.body == b"http://pb.example/x"
    assert [r.url for r in transport.requests] == ["http://pb.example/x"]


async def test_handler_transport_applies_the_request_timeout() -> None:
    async def slow(request: HttpRequest) -> HttpResponse:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    with pytest.raises(TransportError) as caught:
        await HandlerTransport(slow).send(HttpRequest("GET", "http://pb.example/x?clickid=1", timeout_seconds=0.01))
    assert caught.value.kind == "timeout"
    assert "clickid" not in caught.value.message


async def test_guarded_transport_refuses_before_the_inner_transport_sees_anything() -> None:
    async def handler(request: HttpRequest) -> HttpResponse:
        return HttpResponse(200, {}, b"")

    inner = HandlerTransport(handler)

    async def resolve(host: str) -> list[str]:
        return {"public.example": ["93.184.215.14"], "evil.example": ["169.254.169.254"]}[host]

    guarded = GuardedTransport(inner, allow_private=False, resolve=resolve)
    await guarded.send(HttpRequest("GET", "http://public.example/x"))
    with pytest.raises(TransportError) as caught:
        await guarded.send(HttpRequest("GET", "http://evil.example/x"))
    assert caught.value.kind == "refused_target"
    assert len(inner.requests) == 1


async def test_aiohttp_transport_get_headers_lowercased_and_folded(sink: S2SSink, transport: AiohttpTransport) -> None:
    sink.respond_with("/h", body="hi", headers={"X-Custom": "A"})
    response = await transport.send(HttpRequest("GET", sink.url("/h?a=1"), {"X-Req": "r"}))
    assert response.status == 200
    assert response.body == b"hi"
    assert response.headers["x-custom"] == "A"
    assert all(name == name.lower() for name in response.headers)
    assert response.elapsed_seconds > 0
    assert sink.requests[0].headers["x-req"] == "r"


async def test_aiohttp_transport_sends_an_encoded_url_byte_for_byte(sink: S2SSink, transport: AiohttpTransport) -> None:
    await transport.send(HttpRequest("GET", sink.url("/pb?sub=a%2Fb%3Dc&x=%41")))
    assert sink.requests[0].query == {"sub": "a/b=c", "x": "A"}
    # aiohttp's own parsing would have turned %2F into a literal / in the request line
    await transport.send(HttpRequest("GET", sink.url("/pb?v=%2F")))
    assert sink.requests[1].query == {"v": "/"}


async def test_aiohttp_transport_caps_the_body(sink: S2SSink) -> None:
    sink.respond_with("/big", body=b"x" * 200_000)
    async with AiohttpTransport(allow_private_targets=True, max_body_bytes=1000) as transport:
        response = await transport.send(HttpRequest("GET", sink.url("/big")))
        assert len(response.body) == 1000
        # the connection with the unread rest is not reused for garbage: the next request is fine
        sink.respond_with("/small", body="ok")
        assert (await transport.send(HttpRequest("GET", sink.url("/small")))).body == b"ok"


async def test_aiohttp_transport_does_not_follow_redirects(sink: S2SSink, transport: AiohttpTransport) -> None:
    sink.respond_with("/moved", status=302, body="", headers={"Location": "http://169.254.169.254/"})
    response = await transport.send(HttpRequest("GET", sink.url("/moved")))
    assert response.status == 302
    assert response.headers["location"] == "http://169.254.169.254/"
    assert sink.count() == 1


async def test_aiohttp_transport_connection_refused() -> None:
    async with AiohttpTransport(allow_private_targets=True) as transport:
        with pytest.raises(TransportError) as caught:
            await transport.send(HttpRequest("GET", f"http://127.0.0.1:{free_port()}/pb"))
    assert caught.value.kind == "connect"


async def test_aiohttp_transport_dropped_connection_is_a_connect_error(
    sink: S2SSink, transport: AiohttpTransport
) -> None:
    # aiohttp resends an idempotent request once when the server drops the connection (RFC 9112 9.3.1),
    # so it takes two drops in a row to see the error.
    sink.fail_next(2, drop_connection=True)
    with pytest.raises(TransportError) as caught:
        await transport.send(HttpRequest("GET", sink.url("/pb")))
    assert caught.value.kind == "connect"
    assert sink.count() == 2
    assert (await transport.send(HttpRequest("GET", sink.url("/pb")))).status == 200


async def test_aiohttp_transport_does_not_resend_a_post_on_a_dropped_connection(
    sink: S2SSink, transport: AiohttpTransport
) -> None:
    sink.fail_next(1, drop_connection=True)
    with pytest.raises(TransportError) as caught:
        await transport.send(HttpRequest("POST", sink.url("/pb"), body=b"a=1"))
    assert caught.value.kind == "connect"
    assert sink.count() == 1


async def test_aiohttp_transport_timeout(sink: S2SSink, transport: AiohttpTransport) -> None:
    sink.set_delay("/slow", 30)
    with pytest.raises(TransportError) as caught:
        await transport.send(HttpRequest("GET", sink.url("/slow?clickid=c1"), timeout_seconds=0.2))
    assert caught.value.kind == "timeout"
    assert "clickid" not in caught.value.message


async def test_aiohttp_transport_refuses_private_literal_targets(sink: S2SSink) -> None:
    async with AiohttpTransport() as transport:
        with pytest.raises(TransportError) as caught:
            await transport.send(HttpRequest("GET", sink.url("/pb")))
    assert caught.value.kind == "refused_target"
    assert sink.count() == 0


async def test_aiohttp_transport_refuses_other_schemes() -> None:
    async with AiohttpTransport(allow_private_targets=True) as transport:
        with pytest.raises(TransportError) as caught:
            await transport.send(HttpRequest("GET", "file:///etc/passwd"))
    assert caught.value.kind == "refused_target"


async def test_aiohttp_transport_checks_resolved_addresses_at_connect_time(sink: S2SSink) -> None:
    # A name that resolves to loopback when the connection is made (DNS rebinding) is refused by the
    # resolver the connector uses, not by an earlier, separate lookup.
    resolver = StaticResolver("127.0.0.1")
    async with AiohttpTransport(resolver=resolver) as transport:
        with pytest.raises(TransportError) as caught:
            await transport.send(HttpRequest("GET", f"http://rebind.example:{sink.port}/pb"))
    assert caught.value.kind == "refused_target"
    assert resolver.calls == ["rebind.example"]
    assert sink.count() == 0

    async with AiohttpTransport(resolver=StaticResolver("127.0.0.1"), allow_private_targets=True) as transport:
        response = await transport.send(HttpRequest("GET", f"http://rebind.example:{sink.port}/pb"))
    assert response.status == 200
    assert sink.requests[0].headers["host"] == f"rebind.example:{sink.port}"


async def test_aiohttp_transport_session_is_lazy_and_reopens_after_close(sink: S2SSink) -> None:
    transport = AiohttpTransport(allow_private_targets=True)
    assert (await transport.send(HttpRequest("GET", sink.url("/a")))).status == 200
    await transport.close()
    assert (await transport.send(HttpRequest("GET", sink.url("/b")))).status == 200
    await transport.close()
    await transport.close()  # idempotent
