from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from dispatchers.core.http import TransportError, TransportErrorKind
from dispatchers.core.outcome import Outcome, Verdict
from dispatchers.core.retry_policy import (
    MAX_RETRY_AFTER_SECONDS,
    Finalize,
    RetryAt,
    RetryPolicy,
    classify_http_status,
    classify_transport_error,
    decide,
    outcome_for_status,
    parse_retry_after,
    parse_retry_after_header,
)

NOW = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (200, Verdict.DELIVERED),
        (201, Verdict.DELIVERED),
        (204, Verdict.DELIVERED),
        (299, Verdict.DELIVERED),
        (301, Verdict.REJECTED),
        (302, Verdict.REJECTED),
        (307, Verdict.REJECTED),
        (400, Verdict.REJECTED),
        (401, Verdict.REJECTED),
        (403, Verdict.REJECTED),
        (404, Verdict.REJECTED),
        (408, Verdict.RETRY),
        (409, Verdict.REJECTED),
        (422, Verdict.REJECTED),
        (425, Verdict.RETRY),
        (429, Verdict.RETRY),
        (500, Verdict.RETRY),
        (502, Verdict.RETRY),
        (503, Verdict.RETRY),
        (504, Verdict.RETRY),
        (599, Verdict.RETRY),
        (100, Verdict.REJECTED),
        (600, Verdict.REJECTED),
    ],
)
def test_classify_http_status(status: int, verdict: Verdict) -> None:
    assert classify_http_status(status, {}) is verdict


@pytest.mark.parametrize(
    ("status", "headers", "verdict", "reason", "retry_after"),
    [
        (200, {}, Verdict.DELIVERED, "http_200", None),
        (302, {"location": "http://elsewhere/"}, Verdict.REJECTED, "redirect", None),
        (404, {}, Verdict.REJECTED, "http_404", None),
        (429, {"retry-after": "30"}, Verdict.RETRY, "http_429", 30.0),
        (503, {"retry-after": "Fri, 01 May 2026 12:02:00 GMT"}, Verdict.RETRY, "http_503", 120.0),
        (503, {}, Verdict.RETRY, "http_503", None),
        (400, {"retry-after": "30"}, Verdict.REJECTED, "http_400", None),
    ],
)
def test_outcome_for_status(
    status: int, headers: dict[str, str], verdict: Verdict, reason: str, retry_after: float | None
) -> None:
    outcome = outcome_for_status(status, headers, now=NOW, detail="x" * 1000)
    assert (outcome.verdict, outcome.reason, outcome.http_status, outcome.retry_after_seconds) == (
        verdict,
        reason,
        status,
        retry_after,
    )
    assert len(outcome.detail) <= 300


@pytest.mark.parametrize(
    ("kind", "verdict", "reason"),
    [
        ("connect", Verdict.RETRY, "connect_error"),
        ("timeout", Verdict.RETRY, "timeout"),
        ("other", Verdict.RETRY, "transport_error"),
        ("refused_target", Verdict.REJECTED, "refused_target"),
    ],
)
def test_classify_transport_error(kind: TransportErrorKind, verdict: Verdict, reason: str) -> None:
    outcome = classify_transport_error(TransportError(kind, "m" * 500))
    assert (outcome.verdict, outcome.reason) == (verdict, reason)
    assert len(outcome.detail) == 300
    assert outcome.http_status is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        (" 5 ", 5.0),
        ("0", 0.0),
        ("1.5", 1.5),
        ("-5", 0.0),
        ("99999999", MAX_RETRY_AFTER_SECONDS),
        ("inf", MAX_RETRY_AFTER_SECONDS),
        ("nan", None),
        ("Fri, 01 May 2026 12:00:30 GMT", 30.0),
        ("Fri, 01 May 2026 11:00:00 GMT", 0.0),  # in the past
        ("Sat, 01 May 2027 12:00:00 GMT", MAX_RETRY_AFTER_SECONDS),
        ("Friday, 01-May-26 12:00:30 GMT", 30.0),  # obsolete RFC 850 form, which RFC 9110 says to accept
        ("", None),
        ("soon", None),
    ],
)
def test_parse_retry_after(value: str, expected: float | None) -> None:
    assert parse_retry_after(value, NOW) == expected


PLATFORM_NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("headers", "now", "expected"),
    [
        ({}, None, None),
        ({"retry-after": "7"}, None, 7.0),
        ({"retry-after": " 2.5 "}, None, 2.5),
        ({"retry-after": "-3"}, None, 0.0),
        ({"retry-after": "Sun, 22 Nov 2026 12:00:30 GMT"}, PLATFORM_NOW, 30.0),
        ({"retry-after": "Sun, 22 Nov 2026 12:00:30 GMT", "date": "Sun, 22 Nov 2026 12:00:10 GMT"}, None, 20.0),
        ({"retry-after": "Sun, 22 Nov 2026 11:00:00 GMT"}, PLATFORM_NOW, 0.0),
        ({"retry-after": "Sun, 22 Nov 2026 12:00:30 GMT"}, None, None),
        ({"retry-after": "soon"}, PLATFORM_NOW, None),
        # Was None in the platforms' own uncapped parser (dispatchers/platforms/common.py): one parser now.
        ({"retry-after": "inf"}, None, MAX_RETRY_AFTER_SECONDS),
        ({"retry-after": "1e12"}, None, MAX_RETRY_AFTER_SECONDS),
        ({"retry-after": "nan"}, None, None),
        ({"retry-after": "Fri, 31 Dec 9999 23:59:59 GMT"}, PLATFORM_NOW, MAX_RETRY_AFTER_SECONDS),
        ({"retry-after": "Fri, 31 Dec 9999 23:59:59 GMT", "date": "Sun, 22 Nov 2026 12:00:10 GMT"}, None, 7200.0),
    ],
)
def test_parse_retry_after_header(headers: dict[str, str], now: datetime | None, expected: float | None) -> None:
    """The header as the platform classifiers read it: an HTTP-date against `now`, else the answer's Date."""
    assert parse_retry_after_header(headers, now) == expected


def test_backoff_grows_exponentially_and_caps() -> None:
    policy = RetryPolicy(base_delay_seconds=1, multiplier=2, max_delay_seconds=60)
    assert [policy.backoff(a) for a in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert policy.backoff(0) == 1
    assert policy.backoff(10_000) == 60  # no float overflow for absurd attempt counts


@pytest.mark.parametrize(
    ("attempt", "rand", "expected"),
    [
        (1, 0.0, 0.5),
        (1, 0.999, 0.9995),
        (3, 0.0, 2.0),
        (3, 0.5, 3.0),
        (20, 0.0, 30.0),
        (20, 1.0, 60.0),
    ],
)
def test_next_delay_is_equal_jitter(attempt: int, rand: float, expected: float) -> None:
    policy = RetryPolicy(base_delay_seconds=1, multiplier=2, max_delay_seconds=60)
    assert policy.next_delay(attempt, None, lambda: rand) == pytest.approx(expected)


def test_retry_after_is_a_floor_not_a_ceiling() -> None:
    policy = RetryPolicy(base_delay_seconds=1, multiplier=2, max_delay_seconds=60)
    assert policy.next_delay(1, 45.0, lambda: 0.0) == 45.0  # longer than the backoff: honoured
    assert policy.next_delay(20, 5.0, lambda: 0.0) == 30.0  # shorter than the backoff: backoff wins
    assert policy.next_delay(1, 0.0, lambda: 0.0) == 0.5


def test_default_policy_matches_the_documented_schedule() -> None:
    policy = RetryPolicy()
    assert policy.max_age_seconds == 24 * 3600
    assert policy.backoff(1) == 1
    assert policy.backoff(30) == 2 * 3600


def test_give_up_after_max_age() -> None:
    policy = RetryPolicy(max_age_seconds=3600)
    first = NOW
    assert not policy.give_up(first, NOW + timedelta(seconds=3599))
    assert policy.give_up(first, NOW + timedelta(seconds=3600))
    assert policy.deadline(first) == NOW + timedelta(hours=1)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"base_delay_seconds": 0},
        {"multiplier": 0.5},
        {"base_delay_seconds": 10, "max_delay_seconds": 5},
        {"max_age_seconds": 0},
    ],
)
def test_invalid_policy_is_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)


# decide(): 1 s, 2 s, 4 s ... capped at 60 s, given up after an hour; `draw` 0 waits half the backoff.
DECIDE_POLICY = RetryPolicy(base_delay_seconds=1, multiplier=2, max_delay_seconds=60, max_age_seconds=3600)


def _outcome(verdict: Verdict, retry_after: float | None = None) -> Outcome:
    return Outcome(verdict, "reason", "", None, retry_after)


@pytest.mark.parametrize(
    ("verdict", "retry_after", "attempts", "age", "draw", "expected"),
    [
        # final verdicts, whatever the age
        (Verdict.DELIVERED, None, 1, 0, 0.0, Finalize("delivered")),
        (Verdict.DUPLICATE, None, 1, 0, 0.0, Finalize("delivered")),
        (Verdict.REJECTED, None, 1, 0, 0.0, Finalize("rejected")),
        (Verdict.REJECTED, None, 9, 7200, 0.0, Finalize("rejected")),
        (Verdict.DELIVERED, None, 9, 7200, 0.0, Finalize("delivered")),
        # retried after the backoff with equal jitter: after attempt 3 (4 s) between 2 s and 4 s
        (Verdict.RETRY, None, 3, 10, 0.0, RetryAt(NOW + timedelta(seconds=2))),
        (Verdict.RETRY, None, 3, 10, 0.5, RetryAt(NOW + timedelta(seconds=3))),
        # no attempt yet (a precheck or the token endpoint held it back): as after the first
        (Verdict.RETRY, None, 0, 0, 0.0, RetryAt(NOW + timedelta(seconds=0.5))),
        # Retry-After is a floor, never a ceiling
        (Verdict.RETRY, 45.0, 1, 10, 0.0, RetryAt(NOW + timedelta(seconds=45))),
        (Verdict.RETRY, 1.0, 20, 10, 0.0, RetryAt(NOW + timedelta(seconds=30))),
        # past the maximum age: dead-lettered, exactly at the deadline too
        (Verdict.RETRY, None, 5, 3600, 0.0, Finalize("dead_lettered")),
        (Verdict.RETRY, 30.0, 5, 4000, 0.0, Finalize("dead_lettered")),
        # a backoff past the deadline becomes one last attempt at the deadline ...
        (Verdict.RETRY, None, 20, 3590, 0.0, RetryAt(NOW + timedelta(seconds=10))),
        # ... unless the destination asked for a longer pause: it gets that, and the next attempt is the last
        (Verdict.RETRY, 120.0, 20, 3590, 0.0, RetryAt(NOW + timedelta(seconds=120))),
        (Verdict.RETRY, MAX_RETRY_AFTER_SECONDS, 1, 0, 0.0, RetryAt(NOW + timedelta(seconds=MAX_RETRY_AFTER_SECONDS))),
    ],
)
def test_decide(
    verdict: Verdict,
    retry_after: float | None,
    attempts: int,
    age: float,
    draw: float,
    expected: Finalize | RetryAt,
) -> None:
    first_attempt_at = NOW - timedelta(seconds=age)
    assert decide(_outcome(verdict, retry_after), attempts, first_attempt_at, NOW, DECIDE_POLICY, draw) == expected
