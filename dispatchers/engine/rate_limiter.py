"""Per-destination rate and concurrency limits (contract §4).

The token bucket is pure (`now` is passed in); `acquire` is the small async shell around it. A slow or
throttled destination only ever waits on its own bucket and its own slots, never on another's.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

# Eviction looks at this many least-recently-used buckets for a full (idle) one, bounding the cost.
_EVICTION_SCAN = 256


@dataclass(frozen=True, slots=True)
class RateLimit:
    rate_per_second: float
    burst: float

    def __post_init__(self) -> None:
        if self.rate_per_second <= 0 or self.burst < 1:
            raise ValueError("a rate limit needs rate_per_second > 0 and burst >= 1")


class TokenBucket:
    """Holds up to `burst` tokens, refilled at `rate_per_second`; each request takes one."""

    def __init__(self, limit: RateLimit) -> None:
        self.limit = limit
        self._tokens = limit.burst
        self._updated: float | None = None

    def _refill(self, now: float) -> None:
        if self._updated is not None and now > self._updated:
            self._tokens = min(self.limit.burst, self._tokens + (now - self._updated) * self.limit.rate_per_second)
        if self._updated is None or now > self._updated:
            self._updated = now

    def try_acquire(self, now: float) -> float:
        """Take a token and return 0, or take nothing and return the seconds until one is available."""
        self._refill(now)
        if self._tokens >= 1:
            self._tokens -= 1
            return 0.0
        return (1 - self._tokens) / self.limit.rate_per_second

    def is_full(self, now: float) -> bool:
        """A full bucket behaves exactly like a new one, so it can be forgotten."""
        self._refill(now)
        return self._tokens >= self.limit.burst


async def acquire(
    bucket: TokenBucket,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> float:
    """Wait until `bucket` gives a token; returns the seconds waited (for metrics)."""
    waited = 0.0
    while (wait := bucket.try_acquire(clock())) > 0:
        await sleep(wait)
        waited += wait
    return waited


class RateLimiters:
    """A token bucket per destination_id; a destination with no limit configured is never delayed.

    Bounded to `max_entries`: full buckets (idle destinations) are evicted first, which loses nothing;
    failing that the least recently used one, which at worst grants that destination a fresh burst.
    """

    def __init__(
        self,
        default: RateLimit | None,
        overrides: Mapping[str, RateLimit | None] | None = None,
        *,
        max_entries: int = 10_000,
    ) -> None:
        self.default = default
        self.overrides = dict(overrides or {})
        self.max_entries = max_entries
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def limit_for(self, destination_id: str) -> RateLimit | None:
        return self.overrides.get(destination_id, self.default)

    def try_acquire(self, destination_id: str, now: float) -> float:
        limit = self.limit_for(destination_id)
        if limit is None:
            return 0.0
        bucket = self._buckets.get(destination_id)
        if bucket is None:
            if len(self._buckets) >= self.max_entries:
                self._evict_one(now)
            bucket = self._buckets[destination_id] = TokenBucket(limit)
        else:
            self._buckets.move_to_end(destination_id)
        return bucket.try_acquire(now)

    async def acquire(
        self,
        destination_id: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> float:
        waited = 0.0
        while (wait := self.try_acquire(destination_id, clock())) > 0:
            await sleep(wait)
            waited += wait
        return waited

    def _evict_one(self, now: float) -> None:
        for key, bucket in itertools.islice(self._buckets.items(), _EVICTION_SCAN):
            if bucket.is_full(now):
                del self._buckets[key]
                return
        self._buckets.popitem(last=False)


class _Slots:
    __slots__ = ("semaphore", "users")

    def __init__(self, limit: int) -> None:
        self.semaphore = asyncio.Semaphore(limit)
        self.users = 0  # holders plus waiters


class ConcurrencyLimits:
    """At most `limit` requests in flight per destination_id.

    An entry exists only while some task holds or waits for a slot of that destination, so the map is
    bounded by the work in flight, not by the number of destinations ever seen.
    """

    def __init__(self, limit: int, overrides: Mapping[str, int] | None = None) -> None:
        if limit < 1 or any(value < 1 for value in (overrides or {}).values()):
            raise ValueError("a concurrency limit must be at least 1")
        self.limit = limit
        self.overrides = dict(overrides or {})
        self._slots: dict[str, _Slots] = {}

    def __len__(self) -> int:
        return len(self._slots)

    def limit_for(self, destination_id: str) -> int:
        return self.overrides.get(destination_id, self.limit)

    def in_use(self, destination_id: str) -> int:
        """Slots held plus tasks waiting for one."""
        slots = self._slots.get(destination_id)
        return 0 if slots is None else slots.users

    def has_free_slot(self, destination_id: str) -> bool:
        return self.in_use(destination_id) < self.limit_for(destination_id)

    @asynccontextmanager
    async def slot(self, destination_id: str) -> AsyncIterator[None]:
        slots = self._slots.get(destination_id)
        if slots is None:
            slots = self._slots[destination_id] = _Slots(self.limit_for(destination_id))
        slots.users += 1
        try:
            async with slots.semaphore:
                yield
        finally:
            slots.users -= 1
            if slots.users == 0:
                del self._slots[destination_id]
