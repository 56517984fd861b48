from __future__ import annotations

import pytest

from dispatchers.core.circuit_breaker import BreakerConfig, BreakerState, CircuitBreaker, CircuitBreakers

CONFIG = BreakerConfig(
    window_size=20,
    min_requests=10,
    failure_rate_threshold=0.7,
    window_seconds=60,
    cooldown_seconds=30,
    max_cooldown_seconds=100,
    half_open_max_probes=1,
    probe_timeout_seconds=30,
)


def record_many(breaker: CircuitBreaker, outcomes: str, now: float = 0.0) -> None:
    """'s' = success, 'f' = failure, each allowed first."""
    for char in outcomes:
        assert breaker.allow(now)
        breaker.record(char == "s", now)


def trip(breaker: CircuitBreaker, now: float = 0.0) -> None:
    record_many(breaker, "f" * 10, now)
    assert breaker.state is BreakerState.OPEN


@pytest.mark.parametrize(
    ("outcomes", "state"),
    [
        ("f" * 9, BreakerState.CLOSED),  # fewer than min_requests never trips
        ("f" * 10, BreakerState.OPEN),
        ("sss" + "f" * 7, BreakerState.OPEN),  # exactly 70 % of 10
        ("ssss" + "f" * 6, BreakerState.CLOSED),  # 60 %
        ("s" * 10 + "f" * 10, BreakerState.CLOSED),  # 50 % of 20
        ("s" * 10 + "f" * 14, BreakerState.OPEN),  # window keeps the last 20: 6 s + 14 f = 70 %
    ],
)
def test_trips_on_failure_rate_over_the_window(outcomes: str, state: BreakerState) -> None:
    breaker = CircuitBreaker(CONFIG)
    record_many(breaker, outcomes)
    assert breaker.state is state


def test_old_outcomes_leave_the_window() -> None:
    breaker = CircuitBreaker(CONFIG)
    record_many(breaker, "f" * 9, now=0.0)
    record_many(breaker, "f", now=61.0)  # the nine earlier failures have aged out
    assert breaker.state is BreakerState.CLOSED
    assert breaker.failure_rate(61.0) == 1.0


def test_open_refuses_until_cooldown_then_lets_one_probe() -> None:
    breaker = CircuitBreaker(CONFIG)
    trip(breaker, now=100.0)
    assert breaker.open_until == 130.0
    assert not breaker.allow(129.9)
    assert breaker.allow(130.0)
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.open_until is None
    assert not breaker.allow(130.1)  # one probe at a time


def test_successful_probe_closes() -> None:
    breaker = CircuitBreaker(CONFIG)
    trip(breaker)
    assert breaker.allow(30.0)
    breaker.record(True, 30.5)
    assert breaker.state is BreakerState.CLOSED
    assert breaker.failure_rate(30.5) == 0.0
    assert breaker.allow(30.6)


def test_failed_probe_reopens_with_a_growing_capped_cooldown() -> None:
    breaker = CircuitBreaker(CONFIG)
    trip(breaker)
    now = 0.0
    expected_cooldowns = [60.0, 100.0, 100.0]  # 30 doubled, then capped at 100
    for cooldown in [30.0, *expected_cooldowns[:-1]]:
        now += cooldown
        assert breaker.allow(now)
        breaker.record(False, now)
        assert breaker.state is BreakerState.OPEN
    assert breaker.open_until == now + expected_cooldowns[-1]


def test_cooldown_resets_after_recovery() -> None:
    breaker = CircuitBreaker(CONFIG)
    trip(breaker)
    assert breaker.allow(30.0)
    breaker.record(False, 30.0)  # cool-down now 60
    assert breaker.allow(90.0)
    breaker.record(True, 90.0)
    trip(breaker, now=100.0)
    assert breaker.open_until == 130.0


def test_a_probe_that_never_reports_frees_its_slot() -> None:
    breaker = CircuitBreaker(CONFIG)
    trip(breaker)
    assert breaker.allow(30.0)
    assert not breaker.allow(59.9)
    assert breaker.allow(60.0)


def test_answers_arriving_while_open_are_ignored() -> None:
    breaker = CircuitBreaker(CONFIG)
    trip(breaker)
    breaker.record(True, 1.0)
    assert breaker.state is BreakerState.OPEN


def test_several_probes_when_configured() -> None:
    breaker = CircuitBreaker(BreakerConfig(half_open_max_probes=3))
    record_many(breaker, "f" * 10)
    now = 30.0
    assert [breaker.allow(now) for _ in range(4)] == [True, True, True, False]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"failure_rate_threshold": 0},
        {"failure_rate_threshold": 1.5},
        {"min_requests": 0},
        {"window_size": 5, "min_requests": 10},
        {"cooldown_seconds": 0},
        {"cooldown_seconds": 60, "max_cooldown_seconds": 30},
        {"half_open_max_probes": 0},
    ],
)
def test_invalid_config_is_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        BreakerConfig(**kwargs)  # type: ignore[arg-type]


def test_registry_isolates_destinations() -> None:
    breakers = CircuitBreakers(CONFIG)
    for _ in range(10):
        assert breakers.allow("s2s:down.example", 0.0)
        breakers.record("s2s:down.example", False, 0.0)
    assert not breakers.allow("s2s:down.example", 1.0)
    assert breakers.allow("s2s:healthy.example", 1.0)
    assert breakers.states() == {"s2s:down.example": BreakerState.OPEN}


def test_registry_is_bounded_and_evicts_idle_closed_breakers_first() -> None:
    breakers = CircuitBreakers(CONFIG, max_entries=3)
    for _ in range(10):
        breakers.record("open", False, 0.0)
    breakers.record("busy", False, 0.0)  # closed, one failure in its window
    breakers.get("idle", 0.0)
    breakers.record("new", False, 1.0)
    assert len(breakers) == 3
    assert "idle" not in breakers
    assert all(key in breakers for key in ("open", "busy", "new"))
    breakers.get("newer", 2.0)  # no idle one left: the least recently used closed one goes
    assert "busy" not in breakers
    assert "open" in breakers


def test_registry_evicts_an_open_breaker_only_when_all_are_open() -> None:
    breakers = CircuitBreakers(CONFIG, max_entries=2)
    for key in ("a", "b"):
        for _ in range(10):
            breakers.record(key, False, 0.0)
    breakers.get("c", 1.0)
    assert len(breakers) == 2
    assert "a" not in breakers
