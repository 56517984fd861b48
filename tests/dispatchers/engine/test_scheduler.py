"""DeliveryScheduler against the real S2S sink on loopback (or an in-process handler where that is simpler).

Delays are kept tiny through the RetryPolicy; every wait is a poll with a deadline, never a fixed sleep.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from devtools.fakes.s2s_sink import S2SSink
from dispatchers.adapters.handler_transport import HandlerTransport
from dispatchers.adapters.http_transport import AiohttpTransport
from dispatchers.core.circuit_breaker import BreakerConfig, BreakerState, CircuitBreakers
from dispatchers.core.http import HttpRequest, HttpResponse, Transport
from dispatchers.core.retry_policy import RetryPolicy
from dispatchers.core.s2s import s2s_breaker_scope
from dispatchers.engine.rate_limiter import ConcurrencyLimits, RateLimiters
from dispatchers.engine.scheduler import DeliveryScheduler
from dispatchers.engine.scheduler_core import FinalOutcome
from tests import factories as f

# Generous against a loaded 2-core CI machine; a hang still fails in seconds, not after 300.
pytestmark = pytest.mark.timeout(20)

# Retries after 5-10 ms, 10-20 ms, ... capped at 50 ms: a test sees several retries in well under a second.
FAST = RetryPolicy(base_delay_seconds=0.01, max_delay_seconds=0.05, max_age_seconds=60)
# Every deadline a test polls against; the work it waits for takes milliseconds when things are right.
WAIT_SECONDS = 4.0
_POLL_SECONDS = 0.005
_IDS = uuid.UUID("6f1d7f0e-5a4b-4c3d-8e2f-000000000000")


def matched(url: str, n: int, destination_id: str = "s2s:127.0.0.1") -> dict[str, Any]:
    """A matched s2s postback as the worker emits it (valid against matched-postback.schema.json)."""
    return {
        "schema_version": 1,
        "postback_id": str(uuid.uuid5(_IDS, f"{destination_id}/{url}/{n}")),
        "kind": "s2s",
        "destination_id": destination_id,
        "entry_id": "src",
        "campaign_id": "camp-1",
        "conversion_id": f"cv-{n}",
        "click_id": f"click-{n}",
        "type": "deposit",
        "status": "approved",
        "status_source": "event",
        "payout": "10.00",
        "conversion_payout": "10.00",
        "currency": "USD",
        "transaction_id": None,
        "occurred_at": f.OCCURRED_AT,
        "occurred_at_unix": f.OCCURRED_AT_UNIX,
        "matched_at": "2026-11-20T10:00:05Z",
        "entry": f.s2s_entry(),
        "url": f"{url}?cid=click-{n}",
        "method": "GET",
        "click_ids": {},
        "user": {},
        "subs": {},
        "source": {"topic": "conversions", "partition": 0, "offset": n},
    }


class Finals:
    """The on_final callback: records every final outcome and when it arrived (monotonic)."""

    def __init__(self) -> None:
        self.items: list[FinalOutcome] = []
        self.arrived: dict[str, float] = {}

    async def __call__(self, final: FinalOutcome) -> None:
        self.items.append(final)
        self.arrived[final.postback["postback_id"]] = time.monotonic()

    def ids(self) -> Counter[str]:
        return Counter(final.postback["postback_id"] for final in self.items)

    async def wait_for(self, count: int, timeout: float = WAIT_SECONDS) -> list[FinalOutcome]:
        await until(lambda: len(self.items) >= count, timeout, f"{count} final outcomes, got {len(self.items)}")
        return self.items


async def until(predicate: Callable[[], bool], timeout: float = WAIT_SECONDS, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(_POLL_SECONDS)


@pytest.fixture
async def sink() -> AsyncIterator[S2SSink]:
    async with S2SSink() as running:
        yield running


@pytest.fixture
async def transport() -> AsyncIterator[AiohttpTransport]:
    async with AiohttpTransport(allow_private_targets=True) as running:
        yield running


MakeScheduler = Callable[..., DeliveryScheduler]


@pytest.fixture
async def make(sink: S2SSink, transport: AiohttpTransport) -> AsyncIterator[MakeScheduler]:
    """Builds schedulers (defaults overridable) and stops every one before the sink and transport close."""
    created: list[DeliveryScheduler] = []

    def build(on_final: Finals, *, via: Transport | None = None, **overrides: Any) -> DeliveryScheduler:
        options: dict[str, Any] = {
            "policy": FAST,
            "breakers": CircuitBreakers(),
            "rate_limits": RateLimiters(None),
            "concurrency": ConcurrencyLimits(4),
            "timeout_seconds": 5.0,
            **overrides,
        }
        scheduler = DeliveryScheduler(via or transport, on_final=on_final, **options)
        created.append(scheduler)
        return scheduler

    yield build
    for scheduler in created:
        await scheduler.drain(0.5)


def gaps(sink: S2SSink, path: str) -> list[float]:
    arrivals = [r.arrived_at for r in sink.requests if r.path == path]
    return [later - earlier for earlier, later in itertools.pairwise(arrivals)]


# --- outcomes ---------------------------------------------------------------------------------------------


async def test_happy_path_delivers_each_postback_exactly_once(sink: S2SSink, make: MakeScheduler) -> None:
    finals = Finals()
    scheduler = make(finals)
    postbacks = [matched(sink.url("/ok"), n) for n in range(5)]
    assert f.schema_errors("matched-postback", postbacks[0]) == []
    await scheduler.start()
    for postback in postbacks:
        scheduler.submit(postback)

    await finals.wait_for(5)
    assert await scheduler.drain(1.0) == []
    assert finals.ids() == Counter(p["postback_id"] for p in postbacks)  # each exactly once
    assert sorted(r.query["cid"] for r in sink.requests) == [f"click-{n}" for n in range(5)]
    for final in finals.items:
        assert (final.result, final.attempts, final.last_outcome.http_status) == ("delivered", 1, 200)
        assert final.finished_at >= final.first_attempt_at
        assert final.latency_seconds == (final.finished_at - final.first_attempt_at).total_seconds()


async def test_503_is_retried_until_delivered(sink: S2SSink, make: MakeScheduler) -> None:
    finals = Finals()
    scheduler = make(finals)
    sink.fail_next(2, status=503)
    await scheduler.start()
    scheduler.submit(matched(sink.url("/ok"), 1))

    [final] = await finals.wait_for(1)
    assert (final.result, final.attempts, final.last_outcome.reason) == ("delivered", 3, "http_200")
    assert [r.status for r in sink.requests] == [503, 503, 200]


async def test_429_retry_after_is_a_floor_for_the_next_attempt(sink: S2SSink, make: MakeScheduler) -> None:
    finals = Finals()
    scheduler = make(finals)
    # FAST would retry after 5-10 ms; the destination asks for 200 ms.
    sink.fail_next(1, status=429, retry_after="0.2")
    await scheduler.start()
    scheduler.submit(matched(sink.url("/ok"), 1))

    [final] = await finals.wait_for(1)
    assert (final.result, final.attempts) == ("delivered", 2)
    [gap] = gaps(sink, "/ok")
    assert gap >= 0.2, f"retried {gap:.3f}s after a 429 asking for 0.2s"


async def test_4xx_is_rejected_without_retry_and_is_no_breaker_failure(sink: S2SSink, make: MakeScheduler) -> None:
    finals = Finals()
    breakers = CircuitBreakers()
    scheduler = make(finals, breakers=breakers)
    sink.fail_next(1, status=404)
    await scheduler.start()
    postback = matched(sink.url("/ok"), 1)
    scheduler.submit(postback)

    [final] = await finals.wait_for(1)
    assert (final.result, final.attempts, final.last_outcome.http_status) == ("rejected", 1, 404)
    assert scheduler.pending() == []  # final: nothing left that could be retried
    assert sink.count() == 1
    # S2S breakers are per path (the rule's path is the scope): the 404 was recorded, as no failure.
    breaker = breakers.get("s2s:127.0.0.1", time.time(), s2s_breaker_scope(postback))
    assert not breaker.is_idle(time.time())
    assert breaker.failure_rate(time.time()) == 0.0


async def test_gives_up_after_max_age_exactly_once(sink: S2SSink, make: MakeScheduler) -> None:
    finals = Finals()
    policy = RetryPolicy(base_delay_seconds=0.01, max_delay_seconds=0.05, max_age_seconds=0.3)
    # The breaker would otherwise hold the retries back; its own give-up path has a test below.
    scheduler = make(finals, policy=policy, breakers=CircuitBreakers(BreakerConfig(min_requests=20)))
    sink.fail_next(10_000, status=503)
    await scheduler.start()
    scheduler.submit(matched(sink.url("/down"), 1))

    [final] = await finals.wait_for(1)
    assert final.result == "dead_lettered"
    assert final.last_outcome.reason == "http_503"
    assert final.attempts == sink.count() >= 3
    assert 0.3 <= final.latency_seconds < 0.3 + 1.0
    await scheduler.drain(1.0)
    assert len(finals.items) == 1
    assert sink.count() == final.attempts  # nothing was sent after the final outcome


async def test_duplicate_submissions_are_ignored_while_pending_and_after_final(
    sink: S2SSink, make: MakeScheduler
) -> None:
    finals = Finals()
    scheduler = make(finals)
    postback = matched(sink.url("/ok"), 1)
    scheduler.submit(postback)
    scheduler.submit(dict(postback))  # pending (not started yet)
    assert len(scheduler.pending()) == 1
    await scheduler.start()
    await finals.wait_for(1)
    scheduler.submit(dict(postback))  # after final
    assert scheduler.pending() == []
    await scheduler.drain(1.0)
    assert len(finals.items) == 1
    assert sink.count() == 1


async def test_a_replay_of_a_postback_final_here_is_a_new_cycle_that_continues_its_attempts(
    sink: S2SSink, make: MakeScheduler
) -> None:
    sink.respond_with("/goal", body="ERROR", status=400)
    finals = Finals()
    scheduler = make(finals)
    postback = matched(sink.url("/goal"), 1)
    scheduler.submit(postback)
    await scheduler.start()
    (first,) = await finals.wait_for(1)
    assert (first.result, first.attempts) == ("rejected", 1)
    sink.respond_with("/goal", body="OK", status=200)
    scheduler.submit(dict(postback), attempts=first.attempts, replay=True)  # remembered as final: taken anyway
    scheduler.submit(dict(postback), attempts=first.attempts, replay=True)  # pending: ignored
    await finals.wait_for(2)
    await scheduler.drain(1.0)
    assert [(f.result, f.attempts) for f in finals.items] == [("rejected", 1), ("delivered", 2)]
    assert sink.count("/goal") == 2


# --- circuit breaker --------------------------------------------------------------------------------------


async def test_breaker_opens_after_failures_and_probes_after_cooldown(sink: S2SSink, make: MakeScheduler) -> None:
    finals = Finals()
    cooldown = 0.3
    breakers = CircuitBreakers(
        BreakerConfig(
            window_size=3,
            min_requests=3,
            failure_rate_threshold=1.0,
            cooldown_seconds=cooldown,
            max_cooldown_seconds=cooldown,
        )
    )
    # One worker so the order of requests is deterministic: three failures trip the breaker.
    scheduler = make(finals, breakers=breakers, concurrency=ConcurrencyLimits(1))
    sink.fail_next(3, status=503)
    await scheduler.start()
    for n in range(5):
        scheduler.submit(matched(sink.url("/flaky"), n))

    await until(lambda: breakers.states() == {"s2s:127.0.0.1": BreakerState.OPEN}, what="the breaker to open")
    assert sink.count() == 3
    await finals.wait_for(5)
    # 3 failures, then nothing while open, then the probe and the other four: no request was wasted.
    assert [r.status for r in sink.requests] == [503, 503, 503, 200, 200, 200, 200, 200]
    pause = gaps(sink, "/flaky")[2]
    assert pause >= cooldown - 0.01, f"probed {pause:.3f}s after the breaker opened for {cooldown}s"
    assert breakers.states() == {}  # closed again
    assert {final.result for final in finals.items} == {"delivered"}
    assert sum(final.attempts for final in finals.items) == 8  # deferrals by the open breaker are no attempts


async def test_postback_held_by_an_open_breaker_is_dead_lettered_at_max_age(make: MakeScheduler) -> None:
    async def down(request: HttpRequest) -> HttpResponse:
        return HttpResponse(503, {}, b"down")

    finals = Finals()
    # One failure trips the breaker for 10 minutes, far beyond the postback's 0.3 s life.
    breakers = CircuitBreakers(
        BreakerConfig(window_size=1, min_requests=1, failure_rate_threshold=1.0, cooldown_seconds=600)
    )
    policy = RetryPolicy(base_delay_seconds=0.01, max_delay_seconds=0.05, max_age_seconds=0.3)
    scheduler = make(finals, via=HandlerTransport(down), breakers=breakers, policy=policy)
    await scheduler.start()
    scheduler.submit(matched("http://down.example/pb", 1, "s2s:down.example"))

    [final] = await finals.wait_for(1)
    assert (final.result, final.attempts, final.last_outcome.reason) == ("dead_lettered", 1, "http_503")
    assert 0.3 <= final.latency_seconds < 0.3 + 1.0


# --- isolation and limits ---------------------------------------------------------------------------------


async def test_slow_destination_does_not_delay_a_healthy_one(sink: S2SSink, make: MakeScheduler) -> None:
    finals = Finals()
    limit = 4
    # The timeout is longer than the slow answer: the slow destination holds its slots the whole 30 s.
    scheduler = make(finals, concurrency=ConcurrencyLimits(limit), timeout_seconds=60.0)
    sink.set_delay("/slow", 30.0)
    await scheduler.start()
    slow = [matched(sink.url("/slow"), n, "s2s:slow") for n in range(10)]
    for postback in slow:
        scheduler.submit(postback)
    await sink.wait_for(limit, WAIT_SECONDS, path="/slow")  # every slot of the slow destination is busy

    healthy = [matched(sink.url("/ok"), n, "s2s:healthy") for n in range(50)]
    submitted: dict[str, float] = {}
    for postback in healthy:
        submitted[postback["postback_id"]] = time.monotonic()
        scheduler.submit(postback)
    await finals.wait_for(len(healthy))

    latencies = sorted(finals.arrived[pid] - at for pid, at in submitted.items())
    p99 = latencies[math.ceil(0.99 * len(latencies)) - 1]  # nearest rank: with 50 samples, the slowest
    print(
        f"\nhealthy next to a 30 s destination, 50 postbacks: p99 {p99 * 1e3:.1f} ms, max {latencies[-1] * 1e3:.1f} ms"
    )
    # With the slow destination's 4 slots stuck for 30 s, any shared queue or shared slots would show here.
    assert latencies[-1] < 2.0
    assert {final.result for final in finals.items} == {"delivered"}
    assert sink.count("/slow") == limit  # the slow one never got more than its own slots

    # Stopping cancels the 4 slow requests in flight; all 10 slow postbacks come back as pending.
    pending = await scheduler.drain(0.2)
    assert sorted(p.postback["postback_id"] for p in pending) == sorted(p["postback_id"] for p in slow)
    assert sorted(p.attempts for p in pending) == [0] * 6 + [1] * limit
    cancelled = [p for p in pending if p.attempts == 1]
    assert all(p.last_outcome is not None and p.last_outcome.reason == "cancelled" for p in cancelled)
    assert len(finals.items) == len(healthy)


async def test_concurrency_is_bounded_per_destination_and_globally(make: MakeScheduler) -> None:
    in_flight: Counter[str] = Counter()
    peak: Counter[str] = Counter()
    gate = asyncio.Event()

    async def answer(request: HttpRequest) -> HttpResponse:
        host = request.url.split("/")[2]
        in_flight[host] += 1
        in_flight["*"] += 1
        peak[host] = max(peak[host], in_flight[host])
        peak["*"] = max(peak["*"], in_flight["*"])
        if in_flight["*"] >= 3:
            gate.set()  # the global bound is reached: let everyone through from here on
        await gate.wait()
        in_flight[host] -= 1
        in_flight["*"] -= 1
        return HttpResponse(200, {}, b"OK")

    finals = Finals()
    scheduler = make(finals, via=HandlerTransport(answer), concurrency=ConcurrencyLimits(2), max_in_flight=3)
    await scheduler.start()
    for d in range(4):
        for n in range(5):
            scheduler.submit(matched(f"http://dest-{d}.example/pb", n, f"s2s:dest-{d}"))

    await finals.wait_for(20)
    assert peak["*"] == 3
    assert max(count for host, count in peak.items() if host != "*") <= 2


# --- stop and resume --------------------------------------------------------------------------------------


async def test_stop_returns_pending_retries_and_a_restart_resumes_them(sink: S2SSink, make: MakeScheduler) -> None:
    finals = Finals()
    # Retries 5-10 s away: at the stop they are all waiting, none in flight.
    slow_retries = RetryPolicy(base_delay_seconds=10.0, max_age_seconds=3600)
    scheduler = make(finals, policy=slow_retries)
    sink.fail_next(3, status=503)
    await scheduler.start()
    postbacks = [matched(sink.url("/ok"), n) for n in range(3)]
    for postback in postbacks:
        scheduler.submit(postback)
    await until(
        lambda: all(p.last_outcome is not None for p in scheduler.pending()) and sink.count() == 3,
        what="one failed attempt of each postback",
    )

    pending = await scheduler.drain(1.0)
    assert finals.items == []
    assert sorted(p.postback["postback_id"] for p in pending) == sorted(p["postback_id"] for p in postbacks)
    for item in pending:
        assert item.attempts == 1
        assert item.first_attempt_at is not None
        assert item.next_attempt_at >= item.first_attempt_at + timedelta(seconds=5)  # half the backoff at least
        assert item.last_outcome is not None and item.last_outcome.http_status == 503
    with pytest.raises(RuntimeError):
        scheduler.submit(matched(sink.url("/ok"), 99))

    # A restart resubmits what was persisted; not_before is honoured, attempts and age carry on.
    resumed = Finals()
    restarted = make(resumed)
    await restarted.start()
    resume_at = datetime.now(UTC) + timedelta(seconds=0.15)
    for item in pending:
        restarted.submit(
            item.postback, attempts=item.attempts, first_attempt_at=item.first_attempt_at, not_before=resume_at
        )
    await resumed.wait_for(3)
    assert all(r.arrived_at >= sink.requests[2].arrived_at + 0.15 for r in sink.requests[3:])
    first_attempts = {p.postback["postback_id"]: p.first_attempt_at for p in pending}
    for final in resumed.items:
        assert (final.result, final.attempts) == ("delivered", 2)
        assert final.first_attempt_at == first_attempts[final.postback["postback_id"]]
        assert final.latency_seconds >= 0.15
    assert sink.count() == 6


def test_submit_refuses_a_postback_it_cannot_route(make: MakeScheduler) -> None:
    scheduler = make(Finals())
    with pytest.raises(ValueError, match="destination_id"):
        scheduler.submit({"postback_id": "p1", "url": "http://x.example/"})
    with pytest.raises(ValueError, match="timezone-aware"):
        scheduler.submit(matched("http://x.example/", 1), not_before=datetime(2026, 1, 1))
