"""A circuit breaker per destination: stop hammering a failing endpoint and probe it again later (contract §4).

Pure state machine; `now` is a monotonic clock reading passed in by the caller.

    closed    --(failure rate >= threshold over the last N outcomes, at least min_requests)--> open
    open      --(cool-down over; the next allow() starts a probe)--------------------------> half-open
    half-open --(a probe succeeds)--> closed      half-open --(a probe fails)--> open, longer cool-down

Only the caller knows whether an outcome counts as a failure: connection errors, timeouts, 5xx and
429 do; a 4xx rejection of one postback says nothing about the endpoint's health and should be
recorded as a success (or not at all).
"""

from __future__ import annotations

import enum
import itertools
from collections import OrderedDict, deque
from dataclasses import dataclass

# Eviction looks at this many of the least-recently-used breakers, so a full map of busy
# destinations costs a bounded scan per new destination rather than one over every entry.
_EVICTION_SCAN = 256


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """Defaults follow Convoy: trip at 70 % failures over at least 10 requests, probe again after 30 s."""

    window_size: int = 20  # the last N outcomes the failure rate is computed over
    min_requests: int = 10  # fewer outcomes than this never trip: 1 failure of 1 is not a trend
    failure_rate_threshold: float = 0.7
    # Outcomes older than this leave the window, so last night's failures do not trip today's first error.
    window_seconds: float = 60.0
    cooldown_seconds: float = 30.0
    # Each failed probe doubles the cool-down up to this cap: a dead endpoint gets one probe every 10
    # minutes instead of every 30 s, and recovery is still noticed within 10 minutes.
    max_cooldown_seconds: float = 600.0
    half_open_max_probes: int = 1
    # A probe that never reports (its task was cancelled) frees its slot after this long.
    probe_timeout_seconds: float = 30.0

    def __post_init__(self) -> None:
        if not 0 < self.failure_rate_threshold <= 1:
            raise ValueError("failure_rate_threshold must be in (0, 1]")
        if self.min_requests < 1 or self.window_size < self.min_requests:
            raise ValueError("need 1 <= min_requests <= window_size")
        if self.cooldown_seconds <= 0 or self.max_cooldown_seconds < self.cooldown_seconds:
            raise ValueError("need 0 < cooldown_seconds <= max_cooldown_seconds")
        if self.half_open_max_probes < 1:
            raise ValueError("half_open_max_probes must be at least 1")


class CircuitBreaker:
    def __init__(self, config: BreakerConfig | None = None) -> None:
        self.config = config or BreakerConfig()
        self._state = BreakerState.CLOSED
        self._outcomes: deque[tuple[float, bool]] = deque()  # (time, success), oldest first
        self._failures = 0
        self._cooldown = self.config.cooldown_seconds
        self._open_until: float | None = None
        self._probes: list[float] = []  # start times of probes in flight (half-open only)

    @property
    def state(self) -> BreakerState:
        return self._state

    @property
    def open_until(self) -> float | None:
        """When an open breaker lets the next probe through (monotonic time), else None."""
        return self._open_until if self._state is BreakerState.OPEN else None

    def allow(self, now: float) -> bool:
        """May a request go to this destination now? In half-open, True reserves a probe slot."""
        if self._state is BreakerState.CLOSED:
            return True
        if self._state is BreakerState.OPEN:
            if self._open_until is not None and now < self._open_until:
                return False
            self._state = BreakerState.HALF_OPEN
            self._probes = []
        self._probes = [t for t in self._probes if now - t < self.config.probe_timeout_seconds]
        if len(self._probes) >= self.config.half_open_max_probes:
            return False
        self._probes.append(now)
        return True

    def record(self, success: bool, now: float) -> None:
        """The outcome of a request that allow() let through.

        In half-open, any outcome decides, including one of a request sent while the breaker was still
        closed: it is as recent a sign of the endpoint's health as the probe's.
        """
        if self._state is BreakerState.HALF_OPEN:
            if success:
                self._close()
            else:
                self._open(now, self._cooldown * 2)
            return
        if self._state is BreakerState.OPEN:
            return  # an answer to a request sent before the breaker opened: already counted in
        self._outcomes.append((now, success))
        if not success:
            self._failures += 1
        self._trim(now)
        total = len(self._outcomes)
        if total >= self.config.min_requests and self._failures >= self.config.failure_rate_threshold * total:
            self._open(now, self.config.cooldown_seconds)

    def failure_rate(self, now: float) -> float:
        self._trim(now)
        return self._failures / len(self._outcomes) if self._outcomes else 0.0

    def is_idle(self, now: float) -> bool:
        """Closed with nothing in the window: forgetting it loses nothing."""
        self._trim(now)
        return self._state is BreakerState.CLOSED and not self._outcomes

    def _trim(self, now: float) -> None:
        horizon = now - self.config.window_seconds
        while self._outcomes and (len(self._outcomes) > self.config.window_size or self._outcomes[0][0] < horizon):
            _, success = self._outcomes.popleft()
            if not success:
                self._failures -= 1

    def _open(self, now: float, cooldown: float) -> None:
        self._cooldown = min(cooldown, self.config.max_cooldown_seconds)
        self._state = BreakerState.OPEN
        self._open_until = now + self._cooldown
        self._outcomes.clear()
        self._failures = 0
        self._probes = []

    def _close(self) -> None:
        self._state = BreakerState.CLOSED
        self._cooldown = self.config.cooldown_seconds
        self._open_until = None
        self._probes = []


class CircuitBreakers:
    """One breaker per destination_id, bounded to `max_entries`.

    Least-recently-used breakers are evicted when the map is full, idle closed ones first (nothing is
    lost), then any closed one; an open breaker is evicted only when every entry is open, which keeps
    memory bounded even if a flood of distinct failing hosts arrives.
    """

    def __init__(self, config: BreakerConfig | None = None, *, max_entries: int = 10_000) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.config = config or BreakerConfig()
        self.max_entries = max_entries
        self._breakers: OrderedDict[str, CircuitBreaker] = OrderedDict()

    def __len__(self) -> int:
        return len(self._breakers)

    def __contains__(self, destination_id: object) -> bool:
        return destination_id in self._breakers

    def get(self, destination_id: str, now: float) -> CircuitBreaker:
        breaker = self._breakers.get(destination_id)
        if breaker is None:
            if len(self._breakers) >= self.max_entries:
                self._evict_one(now)
            breaker = self._breakers[destination_id] = CircuitBreaker(self.config)
        else:
            self._breakers.move_to_end(destination_id)
        return breaker

    def allow(self, destination_id: str, now: float) -> bool:
        return self.get(destination_id, now).allow(now)

    def record(self, destination_id: str, success: bool, now: float) -> None:
        self.get(destination_id, now).record(success, now)

    def states(self) -> dict[str, BreakerState]:
        """Every destination whose breaker is not closed, for metrics and logs."""
        return {key: b.state for key, b in self._breakers.items() if b.state is not BreakerState.CLOSED}

    def _evict_one(self, now: float) -> None:
        fallback_closed: str | None = None
        for key, breaker in itertools.islice(self._breakers.items(), _EVICTION_SCAN):  # oldest first
            if breaker.is_idle(now):
                del self._breakers[key]
                return
            if fallback_closed is None and breaker.state is BreakerState.CLOSED:
                fallback_closed = key
        victim = fallback_closed if fallback_closed is not None else next(iter(self._breakers))
        del self._breakers[victim]
