"""The operations endpoints every process serves: `/metrics`, `/healthz` and `/readyz`.

`/healthz` answers 200 while the event loop runs and no batch loop is stalled, 503 naming the
stalled loops otherwise (an orchestrator restarts the process then): a loop is stalled when it has
had work (a fetched batch) for longer than STALL_TIMEOUT without completing it (`Liveness`).
`/readyz` answers 200 only when every readiness check of the process holds (connected to Kafka,
state recovered), 503 with the failing checks otherwise, and why when the check said so. One
registry per process holds the service's metrics and the process/runtime collectors.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Gauge,
    GCCollector,
    Info,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

from schemas.version import __version__

log = logging.getLogger(__name__)


class Readiness:
    """Named checks; ready when there is at least one and all of them hold. Exported as `postback_ready`."""

    def __init__(self, registry: CollectorRegistry, names: Iterable[str]) -> None:
        self._checks: dict[str, bool] = dict.fromkeys(names, False)
        self._reasons: dict[str, str] = {}
        self._gauge = Gauge(
            "postback_ready", "1 when the process is ready (the same answer as /readyz), else 0.", registry=registry
        )
        self._gauge.set_function(lambda: 1.0 if self.ready else 0.0)

    def set(self, name: str, ok: bool, reason: str | None = None) -> None:
        """`reason`: why a failing check fails, shown by /readyz until the check is set again."""
        if name not in self._checks:
            raise KeyError(f"unknown readiness check {name!r}")
        if self._checks[name] != ok:
            log.info("readiness check %s is now %s", name, "ok" if ok else "failing")
        self._checks[name] = ok
        if reason is not None and not ok:
            self._reasons[name] = reason
        else:
            self._reasons.pop(name, None)

    @property
    def ready(self) -> bool:
        return bool(self._checks) and all(self._checks.values())

    def checks(self) -> dict[str, bool]:
        return dict(self._checks)

    def reasons(self) -> dict[str, str]:
        """Why each failing check that gave a reason fails."""
        return dict(self._reasons)


# How long a batch loop may have work without completing it before /healthz fails (STALL_TIMEOUT).
DEFAULT_STALL_TIMEOUT_SECONDS = 300.0


class Liveness:
    """The batch loops of a process, for /healthz: each is busy from the moment it has work (a fetched
    batch) until it completes it; one busy for longer than `stall_timeout_seconds` is stalled."""

    def __init__(
        self, stall_timeout_seconds: float = DEFAULT_STALL_TIMEOUT_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.stall_timeout_seconds = stall_timeout_seconds
        self._clock = clock
        self._busy_since: dict[str, float] = {}
        self._reported: set[str] = set()

    def busy(self, loop: str) -> None:
        """`loop` has work; its clock starts unless it was already busy."""
        self._busy_since.setdefault(loop, self._clock())

    def done(self, loop: str) -> None:
        """`loop` completed its work: idle until it has more."""
        self._busy_since.pop(loop, None)
        if loop in self._reported:
            self._reported.discard(loop)
            log.info("%s completed a batch again: no longer stalled", loop)

    def stalled(self) -> dict[str, float]:
        """Loop -> seconds it has been busy, for the loops busy longer than the stall timeout."""
        now = self._clock()
        stalled = {
            loop: now - since for loop, since in self._busy_since.items() if now - since > self.stall_timeout_seconds
        }
        for loop in stalled.keys() - self._reported:
            log.error(
                "%s has had work for %.0fs without completing a batch (STALL_TIMEOUT=%.0fs): /healthz fails",
                loop,
                stalled[loop],
                self.stall_timeout_seconds,
            )
        self._reported |= stalled.keys()
        return stalled


def new_registry(process: str) -> CollectorRegistry:
    """A registry with the process, platform and GC collectors and `postback_build_info`."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    Info("postback_build", "The running postback-router: version and process role.", registry=registry).info(
        {"version": __version__, "process": process}
    )
    return registry


def add_ops_routes(
    app: web.Application, registry: CollectorRegistry, readiness: Readiness, liveness: Liveness | None = None
) -> None:
    async def metrics(_: web.Request) -> web.Response:
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        stalled = liveness.stalled() if liveness is not None else {}
        if not stalled:
            return web.json_response({"status": "alive"})
        assert liveness is not None
        reason = "; ".join(
            f"{loop} has had work for {seconds:.0f}s without completing a batch" for loop, seconds in stalled.items()
        )
        body = {
            "status": "stalled",
            "reason": f"{reason} (STALL_TIMEOUT={liveness.stall_timeout_seconds:g}s)",
            "stalled": {loop: round(seconds, 1) for loop, seconds in stalled.items()},
        }
        return web.json_response(body, status=503)

    async def readyz(_: web.Request) -> web.Response:
        checks = readiness.checks()
        ready = readiness.ready
        body: dict[str, object] = {"ready": ready, "checks": checks}
        reasons = readiness.reasons()
        if reasons:
            body["reasons"] = reasons
        return web.json_response(body, status=200 if ready else 503)

    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)


class ListenError(RuntimeError):
    """The HTTP server cannot listen on host:port; the command line turns it into one line naming the setting."""

    def __init__(self, host: str, port: int, error: OSError) -> None:
        super().__init__(f"cannot listen on HTTP_HOST={host} HTTP_PORT={port}: {error}")
        self.host = host
        self.port = port
        self.error = error

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def in_use(self) -> bool:
        return self.error.errno == errno.EADDRINUSE

    @property
    def bad_host(self) -> bool:
        """The host does not resolve, or is no address of this machine."""
        return isinstance(self.error, socket.gaierror) or self.error.errno == errno.EADDRNOTAVAIL

    @property
    def reason(self) -> str:
        """Why, in a few words ("permission denied"), without the bind call's repetition of the address."""
        code = self.error.errno
        if isinstance(self.error, socket.gaierror) or not isinstance(code, int) or code <= 0:
            return str(self.error.strerror or self.error).lower()
        return os.strerror(code).lower()


async def check_listen(host: str, port: int) -> None:
    """Raise ListenError unless an OpsServer could listen on host:port now (binds as it does, then closes)."""
    loop = asyncio.get_running_loop()
    try:
        server = await loop.create_server(asyncio.Protocol, host, port, reuse_address=True)
    except OSError as exc:
        raise ListenError(host, port, exc) from None
    server.close()
    await server.wait_closed()


class OpsServer:
    """Serves an aiohttp application (the ops routes, plus whatever else the process adds) on HTTP_PORT."""

    def __init__(self, app: web.Application, host: str, port: int, max_line_bytes: int = 8190) -> None:
        # max_line_bytes: aiohttp refuses longer request lines (8 KiB by default) before any handler runs.
        self._runner = web.AppRunner(app, access_log=None, max_line_size=max_line_bytes)
        self._host = host
        self._port = port

    async def start(self) -> None:
        if self._port == 0:
            log.info("HTTP_PORT=0: no /metrics, /healthz or /readyz on this process")
            return
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise ListenError(self._host, self._port, exc) from None
        log.info("serving /metrics, /healthz and /readyz on http://%s:%d", self._host, self._port)

    async def stop(self) -> None:
        await self._runner.cleanup()


def ops_server(
    settings_host: str,
    settings_port: int,
    registry: CollectorRegistry,
    readiness: Readiness,
    liveness: Liveness | None = None,
) -> OpsServer:
    """The ops server of a process that serves nothing else (worker, dispatcher)."""
    app = web.Application()
    add_ops_routes(app, registry, readiness, liveness)
    return OpsServer(app, settings_host, settings_port)
