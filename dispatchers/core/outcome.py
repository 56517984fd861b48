"""What one delivery attempt of one postback came to."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Verdict(enum.Enum):
    DELIVERED = "delivered"  # 2xx (and the destination's success check passed)
    DUPLICATE = "duplicate"  # the platform already had it (e.g. CLICK_CONVERSION_ALREADY_EXISTS): delivered
    RETRY = "retry"  # transient: connection error, timeout, 408, 425, 429, 5xx, platform transient codes
    REJECTED = "rejected"  # permanent: goes to dead-letter with the response, never retried


@dataclass(frozen=True, slots=True)
class Outcome:
    verdict: Verdict
    reason: str  # bounded code for metrics and records: "http_200", "http_429", "CLICK_NOT_FOUND", "timeout", ...
    detail: str  # human-readable; never secrets or raw personal data
    http_status: int | None = None
    retry_after_seconds: float | None = None  # the destination asked for this pause (Retry-After, throttling)

    @property
    def is_final(self) -> bool:
        return self.verdict is not Verdict.RETRY
