"""A circuit breaker per endpoint: stop hammering a failing endpoint and probe it again later (contract §4).

Pure state machine; `now` is a monotonic clock reading passed in by the caller, `rand` (in [0, 1)) the
jitter source.

    closed    --(failure rate >= threshold over the last N outcomes, at least min_requests)--> open
    open      --(the open interval is over; the next allow() starts a probe)---------------> half-open
    half-open --(the probes' failure rate is below the threshold)--> closed
    half-open --(it is at or above it)--> open: twice as long if every probe failed, else the first interval

What is an endpoint: an S2S URL's host and path (one failing path does not hold back the host's other
paths), an ad account or pixel (`CircuitBreakers`, keyed by destination_id and a scope within it).

A recovered endpoint is found within `max_cooldown_seconds` (plus one probe's answer): the open
interval doubles only while every probe fails, and never past that cap. Half-open lets several probes
through (`half_open_max_probes`) and judges them by the same failure rate that trips a closed breaker,
so an endpoint back up with a background error rate that would never trip it (38 % of answers failing,
say) closes at the first round, instead of being sent back to a longer wait by one unlucky probe. Each
open interval is shortened by up to `open_jitter` of itself, at random, so that breakers opened
together (every process of a deployment, every path of a host) do not all probe in the same instant.

Only the caller knows whether an outcome counts as a failure: connection errors, timeouts, 5xx and
429 do; a 4xx rejection of one postback says nothing about the endpoint's health and should be
recorded as a success (or not at all).
"""

from __future__ import annotations

import enum
import itertools
import math
import random
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

# Eviction looks at this many of the least-recently-used breakers, so a full map of busy
# destinations costs a bounded scan per new destination rather than one over every entry.
_EVICTION_SCAN = 256
# The cap of the open interval when none is given: a recovered endpoint is probed within a minute.
DEFAULT_MAX_COOLDOWN_SECONDS = 60.0


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


# The worst first: what one destination's breakers add up to when one of its paths is open.
_SEVERITY = {BreakerState.OPEN: 2, BreakerState.HALF_OPEN: 1, BreakerState.CLOSED: 0}


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """Defaults: trip at 70 % failures over at least 20 of the last 100 outcomes, probe again after 30 s.

    Convoy trips at 70 % over at least 10 of the last 20; a window that small trips by chance on an
    endpoint with 38 % of its answers failing in the background (7 failures in the first 10 happen 4 %
    of the time; 14 in some 20 turn up within 300 requests 27 % of the time, within 1,000 63 %), and
    every such trip holds its postbacks back for the open interval. 20 outcomes at least, judged over up
    to 100, make that rare (0.4 % after a close, then practically never) while an endpoint that is down
    still trips after 20 requests.

    The settings BREAKER_FAILURE_RATE, BREAKER_MIN_REQUESTS, BREAKER_OPEN_SECONDS,
    BREAKER_MAX_OPEN_SECONDS and BREAKER_PROBES (and DESTINATION_LIMITS per destination) set these.
    """

    window_size: int = 100  # the last N outcomes (within window_seconds) the failure rate is computed over
    min_requests: int = 20  # fewer outcomes than this never trip: 1 failure of 1 is not a trend
    failure_rate_threshold: float = 0.7
    # Outcomes older than this leave the window, so last night's failures do not trip today's first error.
    window_seconds: float = 60.0
    cooldown_seconds: float = 30.0  # the first open interval
    # Each round of probes that all fail doubles the open interval up to this cap, so a recovered endpoint
    # is probed within it. None: DEFAULT_MAX_COOLDOWN_SECONDS, or cooldown_seconds if that is longer.
    max_cooldown_seconds: float | None = None
    # Probes let through in half-open, judged together: enough that one unlucky answer of an endpoint
    # with a few failures in the background does not decide alone.
    half_open_max_probes: int = 5
    # A probe that never reports (its task was cancelled) frees its slot after this long.
    probe_timeout_seconds: float = 30.0
    # Each open interval is shortened by up to this fraction of itself, at random (0: exactly as computed).
    open_jitter: float = 0.0

    def __post_init__(self) -> None:
        if not 0 < self.failure_rate_threshold <= 1:
            raise ValueError("failure_rate_threshold must be in (0, 1]")
        if self.min_requests < 1 or self.window_size < self.min_requests:
            raise ValueError("need 1 <= min_requests <= window_size")
        if self.max_cooldown_seconds is None:
            object.__setattr__(self, "max_cooldown_seconds", max(DEFAULT_MAX_COOLDOWN_SECONDS, self.cooldown_seconds))
        if self.cooldown_seconds <= 0 or self.max_open_seconds < self.cooldown_seconds:
            raise ValueError("need 0 < cooldown_seconds <= max_cooldown_seconds")
        if self.half_open_max_probes < 1:
            raise ValueError("half_open_max_probes must be at least 1")
        if not 0 <= self.open_jitter < 1:
            raise ValueError("open_jitter must be in [0, 1)")

    @property
    def max_open_seconds(self) -> float:
        """The cap of the open interval (max_cooldown_seconds, resolved)."""
        cap = self.max_cooldown_seconds
        return cap if cap is not None else max(DEFAULT_MAX_COOLDOWN_SECONDS, self.cooldown_seconds)

    @property
    def probe_failures_to_reopen(self) -> int:
        """Failed probes of one half-open round that reopen the breaker: the least that reach the
        failure-rate threshold over `half_open_max_probes` outcomes."""
        return max(1, math.ceil(self.failure_rate_threshold * self.half_open_max_probes - 1e-9))


class CircuitBreaker:
    def __init__(self, config: BreakerConfig | None = None, *, rand: Callable[[], float] = random.random) -> None:
        self.config = config or BreakerConfig()
        self._rand = rand
        self._state = BreakerState.CLOSED
        self._outcomes: deque[tuple[float, bool]] = deque()  # (time, success), oldest first
        self._failures = 0
        self._cooldown = self.config.cooldown_seconds  # the current open interval, before jitter
        self._open_until: float | None = None
        self._probes: list[float] = []  # start times of probes in flight (half-open only)
        self._probe_successes = 0  # outcomes of this half-open round
        self._probe_failures = 0

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
            self._probe_successes = self._probe_failures = 0
        self._probes = [t for t in self._probes if now - t < self.config.probe_timeout_seconds]
        decided = self._probe_successes + self._probe_failures
        if len(self._probes) + decided >= self.config.half_open_max_probes:
            return False
        self._probes.append(now)
        return True

    def record(self, success: bool, now: float) -> None:
        """The outcome of a request that allow() let through.

        In half-open, every outcome counts towards the round, including one of a request sent while the
        breaker was still closed: it is as recent a sign of the endpoint's health as a probe's. The round
        is decided as soon as its remaining probes cannot change the verdict.
        """
        if self._state is BreakerState.HALF_OPEN:
            self._judge_probe(success, now)
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

    def _judge_probe(self, success: bool, now: float) -> None:
        if self._probes:
            self._probes.pop(0)
        if success:
            self._probe_successes += 1
        else:
            self._probe_failures += 1
        to_reopen = self.config.probe_failures_to_reopen
        if self._probe_failures >= to_reopen:
            # Every probe failed: the endpoint looks dead, wait longer (up to the cap). Some answered: it
            # is alive but flaky, so the next round comes after the first interval again.
            escalate = self._probe_successes == 0
            self._open(now, self._cooldown * 2 if escalate else self.config.cooldown_seconds)
        elif self._probe_successes > self.config.half_open_max_probes - to_reopen:
            self._close()  # the failures can no longer reach the threshold, whatever the rest answer

    def _trim(self, now: float) -> None:
        horizon = now - self.config.window_seconds
        while self._outcomes and (len(self._outcomes) > self.config.window_size or self._outcomes[0][0] < horizon):
            _, success = self._outcomes.popleft()
            if not success:
                self._failures -= 1

    def _open(self, now: float, cooldown: float) -> None:
        self._cooldown = min(cooldown, self.config.max_open_seconds)
        self._state = BreakerState.OPEN
        self._open_until = now + self._cooldown * (1 - self.config.open_jitter * self._rand())
        self._outcomes.clear()
        self._failures = 0
        self._probes = []
        self._probe_successes = self._probe_failures = 0

    def _close(self) -> None:
        self._state = BreakerState.CLOSED
        self._cooldown = self.config.cooldown_seconds
        self._open_until = None
        self._probes = []
        self._probe_successes = self._probe_failures = 0


BreakerKey = tuple[str, str]  # destination_id, scope within it (an S2S path; "" for the whole destination)


class CircuitBreakers:
    """One breaker per endpoint, bounded to `max_entries`: per destination_id and a `scope` within it.

    An S2S destination (a host) has a breaker per URL path (`scope`), so one failing path does not hold
    back the host's others; an ad account or pixel has one (scope ""). `overrides` gives a destination
    (every scope of it) its own config (DESTINATION_LIMITS); the others get `config`.

    Least-recently-used breakers are evicted when the map is full, idle closed ones first (nothing is
    lost), then any closed one; an open breaker is evicted only when every entry is open, which keeps
    memory bounded even if a flood of distinct failing hosts arrives.
    """

    def __init__(
        self,
        config: BreakerConfig | None = None,
        *,
        overrides: Mapping[str, BreakerConfig] | None = None,
        max_entries: int = 10_000,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.config = config or BreakerConfig()
        self.overrides = dict(overrides or {})
        self.max_entries = max_entries
        self._rand = rand
        self._breakers: OrderedDict[BreakerKey, CircuitBreaker] = OrderedDict()

    def __len__(self) -> int:
        return len(self._breakers)

    def __contains__(self, key: object) -> bool:
        """`destination_id` (its breaker of scope "") or a (destination_id, scope) pair."""
        return (key, "") in self._breakers if isinstance(key, str) else key in self._breakers

    def config_for(self, destination_id: str) -> BreakerConfig:
        return self.overrides.get(destination_id, self.config)

    def get(self, destination_id: str, now: float, scope: str = "") -> CircuitBreaker:
        key = (destination_id, scope)
        breaker = self._breakers.get(key)
        if breaker is None:
            if len(self._breakers) >= self.max_entries:
                self._evict_one(now)
            breaker = self._breakers[key] = CircuitBreaker(self.config_for(destination_id), rand=self._rand)
        else:
            self._breakers.move_to_end(key)
        return breaker

    def allow(self, destination_id: str, now: float, scope: str = "") -> bool:
        return self.get(destination_id, now, scope).allow(now)

    def record(self, destination_id: str, success: bool, now: float, scope: str = "") -> None:
        self.get(destination_id, now, scope).record(success, now)

    def states(self) -> dict[str, BreakerState]:
        """Every destination with a breaker that is not closed (the worst of its scopes), for metrics."""
        worst: dict[str, BreakerState] = {}
        for (destination_id, _), breaker in self._breakers.items():
            state = breaker.state
            current = worst.get(destination_id)
            if state is not BreakerState.CLOSED and (current is None or _SEVERITY[state] > _SEVERITY[current]):
                worst[destination_id] = state
        return worst

    def scope_states(self) -> dict[BreakerKey, BreakerState]:
        """Every (destination_id, scope) whose breaker is not closed, for logs and tests."""
        return {key: b.state for key, b in self._breakers.items() if b.state is not BreakerState.CLOSED}

    def _evict_one(self, now: float) -> None:
        fallback_closed: BreakerKey | None = None
        for key, breaker in itertools.islice(self._breakers.items(), _EVICTION_SCAN):  # oldest first
            if breaker.is_idle(now):
                del self._breakers[key]
                return
            if fallback_closed is None and breaker.state is BreakerState.CLOSED:
                fallback_closed = key
        victim = fallback_closed if fallback_closed is not None else next(iter(self._breakers))
        del self._breakers[victim]
