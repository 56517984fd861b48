"""When to retry a delivery, and how long to wait (contract §4). Pure: the clock and randomness are injected.

`decide` is the one retry decision of both delivery paths (S2S and the ad platforms), and
`parse_retry_after` the one reading of a destination's Retry-After, capped at MAX_RETRY_AFTER_SECONDS.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Literal

from dispatchers.core.http import TransportError
from dispatchers.core.outcome import Outcome, Verdict

# A Retry-After longer than this is clamped: a buggy or hostile destination answering "retry in a
# week" must not park its postbacks for most of their 24 h life. Two hours is Convoy's backoff cap.
MAX_RETRY_AFTER_SECONDS = 2 * 3600.0
# Statuses that say "try again later" although they are 4xx: request timeout, too early, throttled.
RETRYABLE_4XX = frozenset({408, 425, 429})
_DETAIL_LIMIT = 300

FinalResult = Literal["delivered", "rejected", "dead_lettered"]


def classify_transport_error(err: TransportError) -> Outcome:
    """No HTTP answer: retry, except a target the SSRF guard refused, which will not become allowed."""
    detail = err.message[:_DETAIL_LIMIT]
    if err.kind == "refused_target":
        return Outcome(Verdict.REJECTED, "refused_target", detail)
    reason = {"connect": "connect_error", "timeout": "timeout"}.get(err.kind, "transport_error")
    return Outcome(Verdict.RETRY, reason, detail)


def classify_http_status(status: int, headers: Mapping[str, str]) -> Verdict:
    """contract §4: 2xx delivered; 408, 425, 429 and 5xx retried; 3xx and other 4xx rejected.

    `headers` is part of the signature so that classifications that depend on them (a 503 without
    Retry-After vs. with one) can be added without changing callers; none does today. Anything else
    (1xx as a final answer, codes beyond 599) is not an answer we understand: rejected, so a person sees it.
    """
    del headers
    if 200 <= status < 300:
        return Verdict.DELIVERED
    if status in RETRYABLE_4XX or 500 <= status < 600:
        return Verdict.RETRY
    return Verdict.REJECTED


def http_status_reason(status: int) -> str:
    """The bounded reason code for a status: `redirect` for 3xx (never followed), else `http_<status>`."""
    return "redirect" if 300 <= status < 400 else f"http_{status}"


def outcome_for_status(status: int, headers: Mapping[str, str], *, now: datetime, detail: str = "") -> Outcome:
    """The contract §4 outcome of an HTTP answer, with the destination's Retry-After when it is retried."""
    verdict = classify_http_status(status, headers)
    retry_after = parse_retry_after_header(headers, now) if verdict is Verdict.RETRY else None
    return Outcome(verdict, http_status_reason(status), detail[:_DETAIL_LIMIT], status, retry_after)


def parse_retry_after(value: str, now: datetime | None) -> float | None:
    """Seconds to wait from a Retry-After value (delta-seconds or HTTP-date), or None when unreadable.

    Dates in the past and negative deltas mean "now" (0); anything over MAX_RETRY_AFTER_SECONDS
    (`inf`, `1e12`, a date in the year 9999) is clamped, so no answer can park a postback, or overflow
    a due time. A date needs `now` (timezone-aware; HTTP-dates are in GMT): without it, None.
    """
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if now is None:
            return None
        if when.tzinfo is None:  # "-0000" parses naive; HTTP-dates are GMT
            when = when.replace(tzinfo=now.tzinfo)
        seconds = (when - now).total_seconds()
    if not math.isfinite(seconds):
        return None if math.isnan(seconds) else MAX_RETRY_AFTER_SECONDS if seconds > 0 else 0.0
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)


def parse_retry_after_header(headers: Mapping[str, str], now: datetime | None = None) -> float | None:
    """`parse_retry_after` of the `retry-after` header (names lower-cased), None without one.

    An HTTP-date is measured against `now` when given, else against the answer's own `Date` header
    (what RFC 9110 intends, and no clock read); without either it cannot become a pause.
    """
    value = headers.get("retry-after")
    if value is None:
        return None
    if now is None:
        try:
            now = parsedate_to_datetime(headers.get("date", ""))
        except (TypeError, ValueError, IndexError):
            now = None
        if now is not None and now.tzinfo is None:
            now = now.replace(tzinfo=UTC)
    return parse_retry_after(value, now)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with equal jitter, a Retry-After floor, and a maximum age.

    Equal jitter (half the backoff fixed, half random) rather than full jitter (anything from 0 to the
    backoff): full jitter spreads a herd best but may retry a failing endpoint after a few
    milliseconds; postbacks are not latency-critical once they failed, and a guaranteed minimum wait
    keeps the schedule meaningful for an endpoint that is down while still spreading retries of a
    burst over half the interval.

    Defaults: 1 s, 2 s, 4 s, ... up to 2 h between attempts (Convoy's cap: a recovered endpoint is
    found within 2 h, a dead one costs a dozen requests a day), given up after 24 h (contract §4).
    """

    base_delay_seconds: float = 1.0
    multiplier: float = 2.0
    max_delay_seconds: float = 2 * 3600.0
    max_age_seconds: float = 24 * 3600.0

    def __post_init__(self) -> None:
        if self.base_delay_seconds <= 0 or self.multiplier < 1 or self.max_delay_seconds < self.base_delay_seconds:
            raise ValueError("RetryPolicy needs base_delay > 0, multiplier >= 1 and max_delay >= base_delay")
        if self.max_age_seconds <= 0:
            raise ValueError("RetryPolicy needs max_age > 0")

    def backoff(self, attempt: int) -> float:
        """The un-jittered wait after `attempt` failed attempts (1 = after the first), capped."""
        exponent = max(attempt, 1) - 1
        # log-space comparison instead of multiplier**exponent, which overflows a float for large attempts
        if self.multiplier > 1 and exponent * math.log(self.multiplier) >= math.log(
            self.max_delay_seconds / self.base_delay_seconds
        ):
            return self.max_delay_seconds
        return min(self.base_delay_seconds * self.multiplier**exponent, self.max_delay_seconds)

    def next_delay(self, attempt: int, retry_after: float | None, rand: Callable[[], float]) -> float:
        """Seconds to wait before the next attempt, after `attempt` failed attempts.

        `rand` returns a float in [0, 1). A Retry-After from the destination is a floor: it is never
        retried sooner than it asked, even when that is longer than the backoff.
        """
        backoff = self.backoff(attempt)
        delay = backoff / 2 + rand() * backoff / 2
        if retry_after is not None:
            delay = max(delay, retry_after)
        return delay

    def deadline(self, first_attempt_at: datetime) -> datetime:
        return first_attempt_at + timedelta(seconds=self.max_age_seconds)

    def give_up(self, first_attempt_at: datetime, now: datetime) -> bool:
        """True once the postback is older than the maximum age: dead-letter it instead of retrying."""
        return now >= self.deadline(first_attempt_at)


@dataclass(frozen=True, slots=True)
class Finalize:
    """The postback is done: one record with this result."""

    result: FinalResult


@dataclass(frozen=True, slots=True)
class RetryAt:
    """The postback goes back to its queue, due at `when`."""

    when: datetime


def decide(
    outcome: Outcome, attempts: int, first_attempt_at: datetime, now: datetime, policy: RetryPolicy, draw: float
) -> Finalize | RetryAt:
    """What an attempt's outcome means for its postback, after `attempts` attempts (0: none was sent).

    Delivered or duplicate: delivered; rejected: rejected; to retry: dead-lettered once older than the
    policy's max age, else due after the backoff (with `draw`, in [0, 1), as its jitter) or the
    destination's Retry-After, whichever is longer. A due time past the give-up deadline becomes one
    last attempt at the deadline, unless the destination asked for a longer pause: then it gets that,
    and the attempt after it is the last.
    """
    if outcome.verdict in (Verdict.DELIVERED, Verdict.DUPLICATE):
        return Finalize("delivered")
    if outcome.verdict is Verdict.REJECTED:
        return Finalize("rejected")
    if policy.give_up(first_attempt_at, now):
        return Finalize("dead_lettered")
    retry_after = outcome.retry_after_seconds
    due = now + timedelta(seconds=policy.next_delay(attempts, retry_after, lambda: draw))
    deadline = policy.deadline(first_attempt_at)
    if due > deadline:
        due = max(deadline, now + timedelta(seconds=retry_after or 0.0))
    return RetryAt(due)
