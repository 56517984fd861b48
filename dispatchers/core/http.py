"""HTTP as values: the request a dispatcher builds, the answer it gets, and the Transport between them.

Delivery code builds an HttpRequest and gets an HttpResponse (or a TransportError) back from a
Transport; it never touches aiohttp itself (that is `dispatchers/adapters/http_transport.py`). Tests
swap the Transport for `adapters/handler_transport.py`, an in-process handler, or point the real one
at fake servers on loopback.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol
from urllib.parse import urlsplit

# Connections across all destinations; the per-destination limits live in rate_limiter.ConcurrencyLimits.
DEFAULT_CONNECTION_LIMIT = 512
TransportErrorKind = Literal["connect", "timeout", "refused_target", "other"]


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    url: str
    # repr=False: headers carry bearer tokens and bodies personal data; a logged request shows neither
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    body: bytes | None = field(default=None, repr=False)
    timeout_seconds: float = 10.0


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    headers: Mapping[str, str]  # names lower-cased
    body: bytes
    elapsed_seconds: float = 0.0


class TransportError(Exception):
    """The request got no HTTP answer: connection failure, timeout, or a target refused before sending."""

    def __init__(self, kind: TransportErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind: TransportErrorKind = kind
        self.message = message


class Transport(Protocol):
    async def send(self, request: HttpRequest) -> HttpResponse:
        """Send one request; raise TransportError when no HTTP response was received."""
        ...


def redact_url(url: str) -> str:
    """scheme://host[:port]/path of `url`: no userinfo, query or fragment (they can carry click ids or keys)."""
    try:
        split = urlsplit(url)
        host = split.hostname or ""
        port = f":{split.port}" if split.port is not None else ""
    except ValueError:
        return "<unparseable url>"
    if ":" in host:
        host = f"[{host}]"
    return f"{split.scheme}://{host}{port}{split.path}"
