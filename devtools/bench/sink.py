"""The benchmarks' S2S destinations: one small aiohttp server listening on several loopback addresses.

Each address (127.0.0.2, 127.0.0.3, ...) is a destination host of its own for the dispatcher (its
DESTINATION_CONCURRENCY applies per host) and for the raw loop. The sink answers 200 at once and keeps only
what the figures need: when each request arrived, and the first arrival of each `cid` query value (the
latency section's conversion ids). It runs in the harness process, so the service and its baseline share it.
"""

from __future__ import annotations

import socket
import time

from aiohttp import web


class BenchSink:
    def __init__(self, destinations: int) -> None:
        self.addresses = [f"127.0.0.{2 + i}" for i in range(destinations)]
        self.ports: dict[str, int] = {}
        self.arrivals: list[float] = []  # time.monotonic() of every request
        self.first_seen: dict[str, float] = {}  # cid -> time.monotonic() of its first request
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        for address in self.addresses:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((address, 0))
            self.ports[address] = sock.getsockname()[1]
            await web.SockSite(self._runner, sock).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def base_url(self, destination: int) -> str:
        address = self.addresses[destination % len(self.addresses)]
        return f"http://{address}:{self.ports[address]}"

    @property
    def count(self) -> int:
        return len(self.arrivals)

    def reset(self) -> None:
        self.arrivals = []
        self.first_seen = {}

    async def _handle(self, request: web.Request) -> web.Response:
        now = time.monotonic()
        self.arrivals.append(now)
        cid = request.query.get("cid")
        if cid is not None and cid not in self.first_seen:
            self.first_seen[cid] = now
        return web.Response(text="OK")
