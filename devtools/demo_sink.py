"""The demo's stand-in for traffic sources: an HTTP server on loopback that records each postback.

Each source gets a path prefix; one can be told to be down (503) for its first N requests, the way
a tracker's endpoint goes down and comes back.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class Received:
    source: str
    path_qs: str
    status: int
    at: float


@dataclass
class DemoSink:
    down_for_first: dict[str, int] = field(default_factory=dict)  # source -> failing requests left
    received: list[Received] = field(default_factory=list)
    port: int = 0
    _runner: web.AppRunner | None = None

    async def start(self) -> str:
        app = web.Application()
        app.router.add_route("*", "/{source}/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        source = request.match_info["source"]
        status = 200
        if self.down_for_first.get(source, 0) > 0:
            self.down_for_first[source] -= 1
            status = 503
        self.received.append(Received(source, request.path_qs, status, time.monotonic()))
        return web.Response(status=status, text="OK" if status == 200 else "temporarily unavailable")

    def delivered(self) -> Counter[str]:
        return Counter(r.source for r in self.received if r.status == 200)
