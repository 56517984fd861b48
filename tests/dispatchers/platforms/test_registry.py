from __future__ import annotations

from datetime import UTC, datetime

import pytest

from dispatchers.core.http import HttpResponse
from dispatchers.core.outcome import Verdict
from dispatchers.core.retry_policy import MAX_RETRY_AFTER_SECONDS
from dispatchers.platforms.registry import PLATFORMS, platform
from schemas.kinds import OAUTH_KINDS, PLATFORM_KINDS

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
ABSURD_RETRY_AFTER = ["1e12", "inf", "nan", "Fri, 31 Dec 9999 23:59:59 GMT"]


def test_every_platform_kind_has_its_module_and_nothing_else() -> None:
    assert list(PLATFORMS) == list(PLATFORM_KINDS)
    for kind, module in PLATFORMS.items():
        assert kind == module.KIND
        assert module.USES_OAUTH is (kind in OAUTH_KINDS)
        assert platform(kind) is module


@pytest.mark.parametrize("kind", ["s2s", "unknown", ""])
def test_a_kind_that_is_no_ad_platform_is_refused(kind: str) -> None:
    with pytest.raises(ValueError, match="kind must be one of google_ads, meta, tiktok, microsoft_ads"):
        platform(kind)


@pytest.mark.parametrize("kind", PLATFORM_KINDS)
@pytest.mark.parametrize("value", ABSURD_RETRY_AFTER)
@pytest.mark.parametrize("now", [NOW, None], ids=["now", "date-header"])
def test_an_absurd_retry_after_is_never_longer_than_the_cap(kind: str, value: str, now: datetime | None) -> None:
    headers = {"retry-after": value, "date": "Sun, 22 Nov 2026 12:00:00 GMT"}
    outcomes = platform(kind).classify_response(HttpResponse(429, headers, b"{}"), [{}, {}], now=now)
    for outcome in outcomes:
        assert outcome.verdict is Verdict.RETRY
        assert outcome.retry_after_seconds is None or 0 <= outcome.retry_after_seconds <= MAX_RETRY_AFTER_SECONDS
