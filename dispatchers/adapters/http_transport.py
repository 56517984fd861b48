"""The aiohttp Transport: the one place a dispatcher's requests reach the network.

Every address it connects to passes the SSRF guard first (`ssrf_guard.py`); the request and answer
are the values of `dispatchers/core/http.py`.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Awaitable, Callable, Mapping

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

from dispatchers.adapters.ssrf_guard import check_address, check_target, literal_address, resolve_host, target_host
from dispatchers.core.http import (
    DEFAULT_CONNECTION_LIMIT,
    HttpRequest,
    HttpResponse,
    Transport,
    TransportError,
    redact_url,
)

# --- Transports -------------------------------------------------------------------------------------

# A postback answer is a status and a few bytes ("OK", `{"ok":true}`, a platform's JSON error). 64 KiB
# holds every real answer (Google's partial-failure details for a 2000-row batch run to a few KiB) and
# caps what a hostile or broken endpoint can make a dispatcher hold per in-flight request.
MAX_RESPONSE_BODY_BYTES = 64 * 1024
# Resolved addresses are cached briefly: S2S traffic hits the same few hundred hosts over and over, and
# a short TTL still follows DNS changes (every cached address was checked by the SSRF guard).
DNS_CACHE_SECONDS = 30
# aiohttp parses a URL and re-quotes it, which turns an encoded `%2F` in a query value into `/`. A URL
# made only of RFC 3986 characters with well-formed escapes is sent byte for byte instead.
_ENCODED_URL = re.compile(r"^(?:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=]|%[0-9A-Fa-f]{2})*$")


def _yarl_url(url: str) -> URL:
    return URL(url, encoded=True) if _ENCODED_URL.match(url) else URL(url)


def _lower_headers(headers: Mapping[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in headers.items():
        key = name.lower()
        # Repeated headers fold into one comma-separated value, as HTTP defines (RFC 9110 5.3).
        out[key] = f"{out[key]}, {value}" if key in out else value
    return out


async def _read_capped(content: aiohttp.StreamReader, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await content.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


class _GuardedResolver(AbstractResolver):
    """Checks every address at connect time, so the address that was checked is the one connected to.

    This closes the DNS-rebinding hole that a check before sending leaves open. IP-literal hosts never
    reach a resolver in aiohttp, so AiohttpTransport checks those itself before sending.
    """

    def __init__(self, inner: AbstractResolver, *, allow_private: bool) -> None:
        self._inner = inner
        self._allow_private = allow_private

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:

        results = await self._inner.resolve(host, port, family)
        for result in results:
            check_address(host, result["host"], allow_private=self._allow_private)
        return results

    async def close(self) -> None:
        await self._inner.close()


class AiohttpTransport:
    """The production Transport: one shared aiohttp session for every destination.

    - Redirects are never followed (`allow_redirects=False`): a 3xx comes back as a response and is
      classified as rejected. Following one could lead to another host, past the SSRF guard's intent,
      and replay a POST body there.
    - Every address is checked by the SSRF guard at connect time (see `_GuardedResolver`) unless
      `allow_private_targets` is set; schemes other than http(s) are always refused.
    - No cookies are kept and no proxy settings are read from the environment: every request stands alone.
    - aiohttp resends a GET once, at once, when the server drops the connection without answering (a
      keep-alive connection closed under it, RFC 9112 9.3.1). The receiver may then see the postback
      twice, exactly as it would after our own retry of a "connect" error, which has the same unknown
      outcome; POSTs are never resent by aiohttp.
    """

    def __init__(
        self,
        *,
        allow_private_targets: bool = False,
        max_body_bytes: int = MAX_RESPONSE_BODY_BYTES,
        connection_limit: int = DEFAULT_CONNECTION_LIMIT,
        resolver: AbstractResolver | None = None,
    ) -> None:
        self._allow_private = allow_private_targets
        self._max_body_bytes = max_body_bytes
        self._connection_limit = connection_limit
        self._resolver = resolver
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._ensure_session()

    def _ensure_session(self) -> aiohttp.ClientSession:
        # No await between the check and the assignment, so concurrent first sends create one session.
        if self._session is None or self._session.closed:
            inner = self._resolver if self._resolver is not None else ThreadedResolver()
            connector = aiohttp.TCPConnector(
                limit=self._connection_limit,
                ttl_dns_cache=DNS_CACHE_SECONDS,
                resolver=_GuardedResolver(inner, allow_private=self._allow_private),
            )
            self._session = aiohttp.ClientSession(
                connector=connector, cookie_jar=aiohttp.DummyCookieJar(), trust_env=False
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> AiohttpTransport:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def send(self, request: HttpRequest) -> HttpResponse:

        host = target_host(request.url)  # refuses non-http(s) schemes
        literal = literal_address(host)
        if literal is not None:
            check_address(host, literal, allow_private=self._allow_private)
        session = self._ensure_session()
        timeout = aiohttp.ClientTimeout(total=request.timeout_seconds)
        started = time.perf_counter()
        try:
            async with session.request(
                request.method,
                _yarl_url(request.url),
                headers=dict(request.headers),
                data=request.body,
                timeout=timeout,
                allow_redirects=False,
            ) as resp:
                body = await _read_capped(resp.content, self._max_body_bytes)
                return HttpResponse(
                    status=resp.status,
                    headers=_lower_headers(resp.headers),
                    body=body,
                    elapsed_seconds=time.perf_counter() - started,
                )
        except TimeoutError:
            raise TransportError(
                "timeout", f"no answer from {redact_url(request.url)} within {request.timeout_seconds:g}s"
            ) from None
        except aiohttp.ClientConnectionError as exc:
            # Connect failures, resets and a server that closed the connection mid-answer: no HTTP answer.
            raise TransportError("connect", f"{type(exc).__name__}: {exc}"[:300]) from None
        except (aiohttp.ClientError, ValueError) as exc:
            raise TransportError("other", f"{type(exc).__name__}: {exc}"[:300]) from None


class GuardedTransport:
    """Runs the SSRF guard (resolving the host first) before delegating to `inner`.

    For transports that do not check at connect time (HandlerTransport, a future one); AiohttpTransport
    already checks every address it connects to.
    """

    def __init__(
        self,
        inner: Transport,
        *,
        allow_private: bool,
        resolve: Callable[[str], Awaitable[list[str]]] | None = None,
    ) -> None:
        self._inner = inner
        self._allow_private = allow_private
        self._resolve = resolve

    async def send(self, request: HttpRequest) -> HttpResponse:

        await check_target(request.url, allow_private=self._allow_private, resolve=self._resolve or resolve_host)
        return await self._inner.send(request)
