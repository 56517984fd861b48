"""`postback-router api`: serve the api until SIGTERM or SIGINT, then stop cleanly.

The HTTP server starts first, so /healthz answers (and /readyz says why not ready) while the
views of the compacted topics recover; until then the api's routes answer 503.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from postback_router.api.app import build_app
from postback_router.api.backend import KafkaBackend
from postback_router.api.trace_index import TraceIndex, trace_index_for
from service.consumer_health import KafkaHealth
from service.diagnostics import dump_tasks
from service.ops_http import OpsServer, Readiness, new_registry
from service.settings import Settings

log = logging.getLogger(__name__)

READINESS_CHECKS = ("kafka", "views_recovered")


async def run_api(settings: Settings) -> None:
    registry = new_registry("api")
    readiness = Readiness(registry, READINESS_CHECKS)
    backend = KafkaBackend(settings, readiness, KafkaHealth(registry, readiness))
    traces = _trace_index(settings)
    # A GET postback carrying its documented fields (up to 20 subs of 1,024 characters, percent-
    # encoded) can be longer than aiohttp's 8 KiB request line: API_MAX_BODY_BYTES bounds the URL too.
    server = OpsServer(
        build_app(settings, backend, registry, readiness, traces=traces),
        settings.http_host,
        settings.http_port,
        settings.api_max_body_bytes,
    )
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    loop.add_signal_handler(signal.SIGUSR1, dump_tasks)
    await server.start()
    if traces is not None:
        await traces.start()  # follows the topics in the background; GET /v1/conversions/{id} reads it
    starting = asyncio.create_task(backend.start(), name="api-backend-start")
    stop_requested = asyncio.create_task(stopping.wait(), name="api-stop")
    try:
        await asyncio.wait({starting, stop_requested}, return_when=asyncio.FIRST_COMPLETED)
        if starting.done():
            starting.result()  # a failed start ends the process with its reason
            log.info("api ready on http://%s:%d (OpenAPI at /openapi.json)", settings.http_host, settings.http_port)
            await stop_requested
        log.info("stopping the api")
    finally:
        for task in (starting, stop_requested):
            task.cancel()
        # a start failure was raised above already; here only the tasks' ends are awaited
        await asyncio.gather(starting, stop_requested, return_exceptions=True)
        await server.stop()  # answers the requests in flight before the producer goes
        await backend.stop()
        if traces is not None:
            await traces.stop()
        log.info("api stopped")


def _trace_index(settings: Settings) -> TraceIndex | None:
    """The trace index, or None when its directory cannot be opened: intake matters more than traces,
    so the api then serves everything else and answers GET /v1/conversions/{id} with 503."""
    try:
        return trace_index_for(settings)
    except Exception as exc:
        log.error("the trace index cannot be opened under STATE_DIR (%s); traces are unavailable", exc)
        return None
