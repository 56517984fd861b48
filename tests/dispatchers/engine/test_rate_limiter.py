from __future__ import annotations

import asyncio

import pytest

from dispatchers.engine.rate_limiter import ConcurrencyLimits, RateLimit, RateLimiters, TokenBucket, acquire


def test_bucket_allows_a_burst_then_asks_to_wait() -> None:
    bucket = TokenBucket(RateLimit(rate_per_second=10, burst=3))
    assert [bucket.try_acquire(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.try_acquire(0.0) == pytest.approx(0.1)
    assert bucket.try_acquire(0.05) == pytest.approx(0.05)  # half a token refilled
    assert bucket.try_acquire(0.1) == 0.0


def test_bucket_refills_up_to_burst_only() -> None:
    bucket = TokenBucket(RateLimit(rate_per_second=1, burst=2))
    bucket.try_acquire(0.0)
    bucket.try_acquire(0.0)
    assert bucket.try_acquire(1000.0) == 0.0
    assert bucket.try_acquire(1000.0) == 0.0
    assert bucket.try_acquire(1000.0) == pytest.approx(1.0)


def test_bucket_ignores_a_clock_going_backwards() -> None:
    bucket = TokenBucket(RateLimit(rate_per_second=1, burst=1))
    assert bucket.try_acquire(10.0) == 0.0
    assert bucket.try_acquire(5.0) == pytest.approx(1.0)
    assert bucket.try_acquire(11.0) == 0.0


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 1), (1, 0.5)])
def test_invalid_limit(rate: float, burst: float) -> None:
    with pytest.raises(ValueError):
        RateLimit(rate, burst)


async def test_acquire_sleeps_for_the_wait_the_bucket_asks() -> None:
    clock = [0.0]
    sleeps: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        clock[0] += seconds

    bucket = TokenBucket(RateLimit(rate_per_second=4, burst=1))
    assert await acquire(bucket, clock=lambda: clock[0], sleep=fake_sleep) == 0.0
    waited = await acquire(bucket, clock=lambda: clock[0], sleep=fake_sleep)
    assert waited == pytest.approx(0.25)
    assert sleeps == [pytest.approx(0.25)]


async def test_rate_limiters_per_destination_and_unlimited_default() -> None:
    limiters = RateLimiters(None, {"s2s:slow.example": RateLimit(1, 1)})
    assert limiters.try_acquire("s2s:slow.example", 0.0) == 0.0
    assert limiters.try_acquire("s2s:slow.example", 0.0) == pytest.approx(1.0)
    assert all(limiters.try_acquire("s2s:other.example", 0.0) == 0.0 for _ in range(100))
    assert len(limiters) == 1  # unlimited destinations keep no state

    clock = [0.0]

    async def fake_sleep(seconds: float) -> None:
        clock[0] += seconds

    assert await limiters.acquire("s2s:slow.example", clock=lambda: clock[0], sleep=fake_sleep) == pytest.approx(1.0)


def test_rate_limiters_are_bounded_and_evict_full_buckets_first() -> None:
    limiters = RateLimiters(RateLimit(1, 2), max_entries=2)
    limiters.try_acquire("a", 0.0)  # a: 1 token left
    limiters.try_acquire("b", 0.0)
    limiters.try_acquire("b", 0.0)  # b: empty
    limiters.try_acquire("c", 1.0)  # a is full again by now (1 token/s): a goes
    assert len(limiters) == 2
    assert limiters.try_acquire("b", 1.0) == 0.0  # b kept its state: refilled one token, not a new burst
    assert limiters.try_acquire("b", 1.0) > 0


def test_rate_limiters_evict_lru_when_none_is_full() -> None:
    limiters = RateLimiters(RateLimit(1, 1), max_entries=2)
    limiters.try_acquire("a", 0.0)
    limiters.try_acquire("b", 0.0)
    limiters.try_acquire("c", 0.0)
    assert len(limiters) == 2


async def test_concurrency_limit_per_destination() -> None:
    limits = ConcurrencyLimits(2, {"s2s:one-at-a-time.example": 1})
    running: dict[str, int] = {}
    peak: dict[str, int] = {}
    release = asyncio.Event()

    async def work(destination: str) -> None:
        async with limits.slot(destination):
            running[destination] = running.get(destination, 0) + 1
            peak[destination] = max(peak.get(destination, 0), running[destination])
            await release.wait()
            running[destination] -= 1

    tasks = [asyncio.create_task(work(d)) for d in ["a"] * 5 + ["s2s:one-at-a-time.example"] * 3]
    for _ in range(5):
        await asyncio.sleep(0)
    assert limits.in_use("a") == 5  # 2 holding, 3 waiting
    assert not limits.has_free_slot("a")
    assert limits.has_free_slot("b")
    release.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert peak == {"a": 2, "s2s:one-at-a-time.example": 1}
    assert len(limits) == 0  # nothing in flight, nothing kept


async def test_concurrency_slot_is_released_on_error_and_cancellation() -> None:
    limits = ConcurrencyLimits(1)
    with pytest.raises(RuntimeError):
        async with limits.slot("a"):
            raise RuntimeError("boom")
    assert len(limits) == 0

    entered = asyncio.Event()

    async def hold() -> None:
        async with limits.slot("a"):
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(hold())
    await asyncio.wait_for(entered.wait(), 5)
    waiter = asyncio.create_task(hold())
    await asyncio.sleep(0)
    waiter.cancel()
    task.cancel()
    await asyncio.gather(task, waiter, return_exceptions=True)
    assert len(limits) == 0


def test_invalid_concurrency_limit() -> None:
    with pytest.raises(ValueError):
        ConcurrencyLimits(0)
    with pytest.raises(ValueError):
        ConcurrencyLimits(1, {"a": 0})
