"""A fake S2S postback receiver on 127.0.0.1: records every request and fails on command.

    async with S2SSink() as sink:
        sink.fail_next(2, status=503, retry_after="1")
        sink.respond_with("/tune", body="success=false; err_msg=bad click")
        sink.set_delay("/slow", 5.0)
        ... send to sink.url("/postback?clickid=abc") ...
        await sink.wait_for(3, timeout=5)

A request is recorded when it arrives (before any delay or failure), so a test can see attempts
as well as deliveries; `delivered()` lists the ones answered 2xx.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

from aiohttp import web

_POLL_SECONDS = 0.005  # wait_for checks this often; short enough to add nothing noticeable to a test


@dataclass
class SinkRequest:
    method: str
    path: str
    query: dict[str, str]
    body: bytes
    headers: dict[str, str]  # names lower-cased
    arrived_at: float  # time.monotonic()
    status: int | None = None  # what the sink answered; None for a dropped connection or a stop mid-delay

    @property
    def form(self) -> dict[str, str]:
        """The body as an application/x-www-form-urlencoded form."""
        return dict(parse_qsl(self.body.decode("utf-8"), keep_blank_values=True))


@dataclass
class _Failure:
    status: int
    retry_after: str | None
    drop_connection: bool


@dataclass
class _Response:
    status: int = 200
    body: bytes = b"OK"
    headers: dict[str, str] = field(default_factory=dict)


class S2SSink:
    def __init__(self) -> None:
        self.requests: list[SinkRequest] = []
        self._counts: Counter[str] = Counter()
        self._failures: dict[str | None, list[_Failure]] = {}  # key None: any path
        self._responses: dict[str, _Response] = {}
        self._delays: dict[str, float] = {}
        self._stopping = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> S2SSink:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # shutdown_timeout small: requests still in a delay are woken by _stopping anyway.
        self._runner = web.AppRunner(app, shutdown_timeout=0.5, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> S2SSink:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def url(self, path_and_query: str = "/postback") -> str:
        return f"http://127.0.0.1:{self.port}{path_and_query}"

    # --- behaviour -------------------------------------------------------------------------------

    def fail_next(
        self,
        n: int,
        status: int = 503,
        retry_after: str | float | None = None,
        *,
        path: str | None = None,
        drop_connection: bool = False,
    ) -> None:
        """The next `n` requests (to `path`, or to any path) fail with `status`, or with the connection
        closed without an answer when `drop_connection` is set."""
        failure = _Failure(status, None if retry_after is None else str(retry_after), drop_connection)
        self._failures.setdefault(path, []).extend([failure] * n)

    def recover(self, path: str | None = None) -> None:
        """Drop the failures still pending for `path` (or for any path): the destination is back."""
        self._failures.pop(path, None)

    def down_for_first(self, n: int, status: int = 503, *, path: str | None = None) -> None:
        """Down for the next `n` requests, then recovered: the shape of an outage seen by the dispatcher."""
        self.fail_next(n, status, path=path)

    def respond_with(
        self, path: str, body: str | bytes = b"OK", status: int = 200, headers: dict[str, str] | None = None
    ) -> None:
        """How `path` answers when no failure is pending (default: 200 `OK`)."""
        raw = body.encode("utf-8") if isinstance(body, str) else body
        self._responses[path] = _Response(status, raw, dict(headers or {}))

    def set_delay(self, path: str, delay_seconds: float) -> None:
        """Answer `path` only after `delay_seconds` (0 removes the delay); cut short when the sink stops."""
        if delay_seconds > 0:
            self._delays[path] = delay_seconds
        else:
            self._delays.pop(path, None)

    # --- observation -----------------------------------------------------------------------------

    def count(self, path: str | None = None) -> int:
        return len(self.requests) if path is None else self._counts[path]

    def delivered(self, path: str | None = None) -> list[SinkRequest]:
        return [
            r
            for r in self.requests
            if r.status is not None and 200 <= r.status < 300 and (path is None or r.path == path)
        ]

    async def wait_for(self, count: int, timeout: float, *, path: str | None = None) -> list[SinkRequest]:
        """Poll until at least `count` requests (to `path`) have arrived; TimeoutError after `timeout`."""
        deadline = time.monotonic() + timeout
        while self.count(path) < count:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"sink got {self.count(path)} of {count} requests{f' to {path}' if path else ''}")
            await asyncio.sleep(_POLL_SECONDS)
        return [r for r in self.requests if path is None or r.path == path]

    # --- handler ---------------------------------------------------------------------------------

    def _take_failure(self, path: str) -> _Failure | None:
        for key in (path, None):
            pending = self._failures.get(key)
            if pending:
                return pending.pop(0)
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        record = SinkRequest(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            body=await request.read(),
            headers={k.lower(): v for k, v in request.headers.items()},
            arrived_at=time.monotonic(),
        )
        self.requests.append(record)
        self._counts[request.path] += 1
        delay = self._delays.get(request.path)
        if delay:
            try:
                await asyncio.wait_for(self._stopping.wait(), delay)
                raise web.HTTPServiceUnavailable()  # stopping: end the request now
            except TimeoutError:
                pass
        failure = self._take_failure(request.path)
        if failure is not None:
            if failure.drop_connection:
                if request.transport is not None:
                    request.transport.abort()
                return web.Response(status=500)  # never reaches the client: the connection is gone
            headers = {"Retry-After": failure.retry_after} if failure.retry_after is not None else {}
            record.status = failure.status
            return web.Response(status=failure.status, text="failing on purpose", headers=headers)
        answer = self._responses.get(request.path, _Response())
        record.status = answer.status
        return web.Response(status=answer.status, body=answer.body, headers=answer.headers)
