"""An in-process Transport: a function answers every request, so delivery code runs with no network.

What the tests (and anyone embedding the dispatchers) use in place of `http_transport.AiohttpTransport`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from dispatchers.core.http import HttpRequest, HttpResponse, TransportError, redact_url


class HandlerTransport:
    """An in-process Transport for unit tests: `handler` answers every request (or raises TransportError).

    The request's timeout applies to the handler, so a slow handler yields TransportError("timeout").
    """

    def __init__(self, handler: Callable[[HttpRequest], Awaitable[HttpResponse]]) -> None:
        self._handler = handler
        self.requests: list[HttpRequest] = []

    async def send(self, request: HttpRequest) -> HttpResponse:
        self.requests.append(request)
        try:
            return await asyncio.wait_for(self._handler(request), request.timeout_seconds)
        except TimeoutError:
            raise TransportError(
                "timeout", f"no answer from {redact_url(request.url)} within {request.timeout_seconds:g}s"
            ) from None
