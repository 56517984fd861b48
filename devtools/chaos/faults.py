"""The outside world failing on purpose, and the ledger of what it accepted and when.

One schedule for every destination: 30 % 5xx, 5 % 429 with `Retry-After`, up to 50 ms of latency and
one outage during which everything answers 503. The S2S sink is a small server of its own; the ad
platforms are the test suite's fakes (which check requests as the real APIs do) with a middleware that
scripts their real failure answers. The ledger records, per postback, when a destination accepted it:
a repeat there is a duplicate, and whether it came after an answer that had reached a live dispatcher.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.typedefs import Handler

from devtools.fakes.platforms import FailureMode, FakeServer
from postback_router.embedded_broker import free_loopback_port
from streams.core.postback_ids import postback_id

ERROR_SHARE = 0.30
THROTTLE_SHARE = 0.05
MAX_LATENCY_S = 0.05


@dataclass
class FaultSchedule:
    rng: random.Random
    outage_from: float = float("inf")  # time.monotonic()
    outage_until: float = float("-inf")

    def in_outage(self, now: float) -> bool:
        return self.outage_from <= now < self.outage_until

    def next_answer(self) -> FailureMode | None:
        """The failure to answer with now, or None for a normal answer."""
        roll = self.rng.random()
        if self.in_outage(time.monotonic()) or roll < ERROR_SHARE:
            return "unavailable"
        if roll < ERROR_SHARE + THROTTLE_SHARE:
            return "rate_limit"
        return None

    def latency(self) -> float:
        return self.rng.uniform(0, MAX_LATENCY_S)


@dataclass
class Ledger:
    """Per destination: requests and answers; per postback: the times it was accepted (2xx)."""

    requests: Counter[str] = field(default_factory=Counter)
    answers: dict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))
    accepted: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    destination_of: dict[str, str] = field(default_factory=dict)

    def answered(self, destination: str, status: int) -> None:
        self.requests[destination] += 1
        self.answers[destination][status] += 1

    def accept(self, destination: str, pid: str, at: float) -> None:
        self.accepted[pid].append(at)
        self.destination_of[pid] = destination


class ChaosSink:
    """The S2S traffic sources: `/s2s/<entry>?cid=&st=&ty=` identifies the postback (its id's inputs)."""

    def __init__(self, schedule: FaultSchedule, ledger: Ledger, control: list[web.RouteDef] | None = None) -> None:
        self.schedule = schedule
        self.ledger = ledger
        self.control = control or []  # extra routes (sink_process.py: the outage, the ledger)
        self._runner: web.AppRunner | None = None

    async def start(self, sources: int) -> list[str]:
        """Listen on `sources` ports (a traffic source each, with its own limits in the dispatcher)."""
        app = web.Application()
        app.router.add_route("*", "/s2s/{entry}", self._handle)
        app.add_routes(self.control)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        urls = []
        for _ in range(sources):
            port = free_loopback_port()
            await web.TCPSite(self._runner, "127.0.0.1", port).start()
            urls.append(f"http://127.0.0.1:{port}")
        return urls

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        await asyncio.sleep(self.schedule.latency())
        failure = self.schedule.next_answer()
        q = request.query
        pid = postback_id(q.get("cid", ""), request.match_info["entry"], q.get("st", ""), q.get("ty", ""))
        status = {"unavailable": 503, "rate_limit": 429}.get(failure or "", 200)
        self.ledger.answered("s2s", status)
        if status == 200:
            self.ledger.accept("s2s", pid, time.monotonic())
        headers = {"Retry-After": "1"} if status == 429 else {}
        return web.Response(status=status, text="OK" if status == 200 else "failing on purpose", headers=headers)


def add_faults(
    name: str, fake: FakeServer, schedule: FaultSchedule, ledger: Ledger, identify: Callable[[str], str]
) -> None:
    """Make `fake` (before its start()) answer on `schedule` and record its acceptances in `ledger`.

    `identify` maps the platform's dedup key (`fake.delivered` / `fake.duplicates`) to a postback id.
    The fake's handler reads the body (already read here, so without yielding) and takes the scripted
    failure at once: nothing runs between `fail_next` and the handler, so each failure meets its request.
    """

    @web.middleware
    async def faults(request: web.Request, handler: Handler) -> web.StreamResponse:
        await request.read()
        await asyncio.sleep(schedule.latency())
        failure = schedule.next_answer()
        if failure is not None:
            fake.fail_next(1, failure, retry_after="1" if failure == "rate_limit" else None)
        delivered, duplicates = len(fake.delivered), len(fake.duplicates)
        response = await handler(request)
        now = time.monotonic()
        ledger.answered(name, response.status)
        for key in fake.delivered[delivered:] + fake.duplicates[duplicates:]:
            ledger.accept(name, identify(key), now)
        return response

    fake.middlewares.append(faults)
