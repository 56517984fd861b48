"""The scheduler reports every row of an answered request, even when a drain cuts its worker meanwhile."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime, timedelta

import pytest

from dispatchers.core.circuit_breaker import CircuitBreakers
from dispatchers.core.http import HttpRequest, HttpResponse
from dispatchers.core.outcome import Outcome, Verdict
from dispatchers.core.retry_policy import RetryPolicy
from dispatchers.engine.rate_limiter import ConcurrencyLimits, RateLimiters
from dispatchers.engine.scheduler_core import FinalOutcome, Postback, Scheduler

pytestmark = pytest.mark.timeout(20)


class BatchOfThree:
    """A platform-like deliverer: up to three rows per request, every row delivered."""

    name = "stub"
    max_batch = 3
    linger = timedelta(milliseconds=20)

    def queue_key(self, postback: Postback) -> tuple[str, ...]:
        return ()

    def breaker_scope(self, postback: Postback) -> str:
        return ""

    def precheck(self, postback: Postback, now: datetime) -> Outcome | None:
        return None

    async def credentials(self, postback: Postback) -> None:
        return None

    def invalidate(self, credentials: None) -> None:
        pass

    def build(self, postbacks: Sequence[Postback], credentials: None) -> HttpRequest:
        return HttpRequest("POST", "https://platform.example/batch")

    def classify(
        self, response: HttpResponse, postbacks: Sequence[Postback], now: datetime, credentials: None
    ) -> list[Outcome]:
        return [Outcome(Verdict.DELIVERED, "http_200", "", 200)] * len(postbacks)


class Answering:
    async def send(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse(200, {}, b"{}")


async def test_rows_answered_together_are_all_final_when_a_drain_cuts_the_worker_reporting_them() -> None:
    reported: list[str] = []
    first_report_waits = asyncio.Event()

    async def on_final(final: FinalOutcome) -> None:
        reported.append(final.postback["postback_id"])
        if len(reported) == 1:
            await first_report_waits.wait()  # a slow report (Kafka under load) holds the worker

    scheduler: Scheduler[None] = Scheduler(
        Answering(),
        BatchOfThree(),
        policy=RetryPolicy(base_delay_seconds=0.01, max_delay_seconds=0.05, max_age_seconds=60),
        breakers=CircuitBreakers(),
        rate_limits=RateLimiters(None),
        concurrency=ConcurrencyLimits(10),
        on_final=on_final,
    )
    for i in range(3):
        scheduler.submit({"postback_id": f"p{i}", "destination_id": "account-1"})
    await scheduler.start()
    while not reported:
        await asyncio.sleep(0.005)
    drain = asyncio.create_task(scheduler.drain(0.05))  # cuts the worker while the first report waits
    workers = [task for queue in scheduler._queues.values() for task in queue.workers]
    assert workers
    deadline = asyncio.get_running_loop().time() + 5
    while not all(task.done() for task in workers):  # the drain has cut the worker: the case under test
        assert asyncio.get_running_loop().time() < deadline, "drain() never cancelled the worker"
        await asyncio.sleep(0.005)
    first_report_waits.set()
    pending = await drain
    # All three were answered in one request: none may be written back as pending (sent again).
    assert [p.postback["postback_id"] for p in pending] == []
    assert sorted(reported) == ["p0", "p1", "p2"]
