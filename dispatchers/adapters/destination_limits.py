"""The delivery limits of the settings as the engine's objects: circuit breakers, rate limits and
concurrency limits, each with its global default and the per-destination overrides of
DESTINATION_LIMITS (service/settings.py reads and checks them all at start-up)."""

from __future__ import annotations

from dispatchers.core.circuit_breaker import BreakerConfig, CircuitBreakers
from dispatchers.engine.rate_limiter import ConcurrencyLimits, RateLimit, RateLimiters
from service.settings import DestinationLimits, RateLimitSetting, Settings

# The failure rate is computed over the last this-many outcomes (more when BREAKER_MIN_REQUESTS is more).
BREAKER_WINDOW = 100
# Each open interval is shortened by up to this share at random: breakers that opened together (every
# process of a deployment, every path of a host) do not all probe at the same instant. The settings stay
# upper bounds: a recovered destination is still probed within BREAKER_MAX_OPEN_SECONDS.
BREAKER_OPEN_JITTER = 0.2
# A probe that never answers (its request was cancelled) frees its slot after this long at least.
BREAKER_PROBE_TIMEOUT_SECONDS = 30.0


def breaker_config(limits: DestinationLimits, delivery_timeout_seconds: float) -> BreakerConfig:
    return BreakerConfig(
        window_size=max(BREAKER_WINDOW, limits.breaker_min_requests),
        min_requests=limits.breaker_min_requests,
        failure_rate_threshold=limits.breaker_failure_rate,
        cooldown_seconds=limits.breaker_open_seconds,
        max_cooldown_seconds=limits.breaker_max_open_seconds,
        half_open_max_probes=limits.breaker_probes,
        probe_timeout_seconds=max(BREAKER_PROBE_TIMEOUT_SECONDS, 2 * delivery_timeout_seconds),
        open_jitter=BREAKER_OPEN_JITTER,
    )


def circuit_breakers(settings: Settings) -> CircuitBreakers:
    timeout = settings.delivery_timeout_seconds
    return CircuitBreakers(
        breaker_config(settings.destination_defaults, timeout),
        overrides={
            destination_id: breaker_config(limits, timeout)
            for destination_id, limits in settings.destination_limits.items()
        },
    )


def _rate_limit(setting: RateLimitSetting | None) -> RateLimit | None:
    return RateLimit(setting.rate_per_second, setting.burst) if setting else None


def rate_limiters(settings: Settings) -> RateLimiters:
    return RateLimiters(
        _rate_limit(settings.destination_rate_limit),
        {
            destination_id: _rate_limit(limits.rate_limit)
            for destination_id, limits in settings.destination_limits.items()
        },
    )


def concurrency_limits(settings: Settings) -> ConcurrencyLimits:
    return ConcurrencyLimits(
        settings.destination_concurrency,
        {destination_id: limits.concurrency for destination_id, limits in settings.destination_limits.items()},
    )
