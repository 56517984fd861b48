"""The settings' delivery limits as the engine's objects (issue 8, defect 4): a global default and per-destination
overrides for the breakers, rate limits and concurrency; and the dispatcher that uses them."""

from __future__ import annotations

import json
from pathlib import Path

from dispatchers.adapters.destination_limits import (
    BREAKER_OPEN_JITTER,
    circuit_breakers,
    concurrency_limits,
    rate_limiters,
)
from dispatchers.core.circuit_breaker import BreakerState
from dispatchers.engine.rate_limiter import RateLimit
from service.settings import Settings, load_settings

LIMITS = {
    "slow.example": {"concurrency": 2, "rate_limit": "5/s:10", "breaker_open_seconds": "10s"},
    "free.example": {"rate_limit": None},
    "meta:731000000000001": {"breaker_failure_rate": 0.5, "breaker_min_requests": 4, "breaker_probes": 2},
}


def settings(tmp_path: Path, **env: str) -> Settings:
    return load_settings(
        {
            "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
            "STATE_STORE": "memory://",
            "STATE_DIR": str(tmp_path),
            "DESTINATION_LIMITS": json.dumps(LIMITS),
            "DESTINATION_RATE_LIMIT": "50/s",
            "DESTINATION_CONCURRENCY": "6",
            "BREAKER_MAX_OPEN_SECONDS": "2m",
            **env,
        }
    )


def test_breakers_take_the_settings_and_each_destination_its_overrides(tmp_path: Path) -> None:
    breakers = circuit_breakers(settings(tmp_path))
    default = breakers.config_for("s2s:any.example")
    assert (default.failure_rate_threshold, default.min_requests, default.window_size) == (0.7, 20, 100)
    assert (default.cooldown_seconds, default.max_open_seconds, default.half_open_max_probes) == (30, 120, 5)
    assert default.open_jitter == BREAKER_OPEN_JITTER
    assert default.probe_timeout_seconds >= 2 * 10  # twice DELIVERY_TIMEOUT at least: a probe answers first
    slow = breakers.config_for("s2s:slow.example")
    assert (slow.cooldown_seconds, slow.max_open_seconds, slow.failure_rate_threshold) == (10, 120, 0.7)
    meta = breakers.config_for("meta:731000000000001")
    assert (meta.failure_rate_threshold, meta.min_requests, meta.half_open_max_probes) == (0.5, 4, 2)
    for _ in range(4):
        breakers.record("meta:731000000000001", False, 0.0)
        breakers.record("meta:999", False, 0.0)
    assert breakers.states() == {"meta:731000000000001": BreakerState.OPEN}  # its own threshold, not the default


def test_rate_and_concurrency_limits_per_destination(tmp_path: Path) -> None:
    s = settings(tmp_path)
    rates = rate_limiters(s)
    assert rates.limit_for("s2s:any.example") == RateLimit(50, 50)
    assert rates.limit_for("s2s:slow.example") == RateLimit(5, 10)
    assert rates.limit_for("s2s:free.example") is None  # no limit for this one
    assert rates.try_acquire("s2s:free.example", 0.0) == 0.0
    concurrency = concurrency_limits(s)
    assert concurrency.limit_for("s2s:any.example") == 6
    assert concurrency.limit_for("s2s:slow.example") == 2


async def test_the_dispatcher_delivers_with_them(tmp_path: Path) -> None:
    from dispatchers.dispatcher import Dispatcher

    dispatcher = Dispatcher(settings(tmp_path), "s2s")
    assert dispatcher._breakers.config_for("s2s:slow.example").cooldown_seconds == 10
    assert dispatcher._rate_limits.limit_for("s2s:slow.example") == RateLimit(5, 10)
    await dispatcher.close()
