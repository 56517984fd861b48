from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from dispatchers.core.http import HttpResponse
from dispatchers.core.outcome import Verdict
from dispatchers.platforms.common import (
    DETAIL_LIMIT,
    bounded_code,
    check_batch,
    group_batches,
    payout_number,
    require_aware,
    safe_detail,
    status_outcome,
)


@pytest.mark.parametrize(("text", "expected"), [("12.5", 12.5), ("0", 0.0), ("0.1", 0.1), ("100", 100.0)])
def test_payout_number(text: str, expected: float) -> None:
    assert payout_number(text) == expected


@pytest.mark.parametrize("text", ["abc", "-1", "NaN", "Infinity", "1e400"])
def test_payout_number_refuses_what_no_platform_takes(text: str) -> None:
    with pytest.raises(ValueError):
        payout_number(text)


def test_safe_detail_redacts_before_truncating() -> None:
    secret = "s3cr3t-token-value"
    text = "x" * (DETAIL_LIMIT - 5) + secret
    detail = safe_detail(text, [secret])
    assert len(detail) <= DETAIL_LIMIT
    assert "s3cr" not in detail


@pytest.mark.parametrize(
    "text",
    [
        "GET /events?access_token=EAAB123xyz&x=1",
        '{"access_token": "EAAB123xyz"}',
        "Authorization: Bearer EAAB123xyz",
        '{"refresh_token":"EAAB123xyz"}',
    ],
)
def test_safe_detail_scrubs_credential_shapes(text: str) -> None:
    assert "EAAB123xyz" not in safe_detail(text)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("CLICK_NOT_FOUND", "CLICK_NOT_FOUND"), (190, "190"), ("has space", "fb"), (None, "fb"), (True, "fb")],
)
def test_bounded_code(value: object, expected: str) -> None:
    assert bounded_code(value, "fb") == expected


def test_require_aware_refuses_naive_datetimes() -> None:
    with pytest.raises(ValueError):
        require_aware(datetime(2026, 1, 1))


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (200, Verdict.DELIVERED),
        (204, Verdict.DELIVERED),
        (408, Verdict.RETRY),
        (425, Verdict.RETRY),
        (429, Verdict.RETRY),
        (500, Verdict.RETRY),
        (599, Verdict.RETRY),
        (400, Verdict.REJECTED),
        (404, Verdict.REJECTED),
        (301, Verdict.REJECTED),
    ],
)
def test_status_outcome(status: int, verdict: Verdict) -> None:
    outcome = status_outcome(HttpResponse(status, {}, b""))
    assert (outcome.verdict, outcome.reason, outcome.http_status) == (verdict, f"http_{status}", status)


def _postback(pid: str, key: str) -> dict[str, Any]:
    return {"postback_id": pid, "key": key}


def _key(postback: Any) -> str:
    return str(postback["key"])


def test_group_batches_groups_by_key_and_cuts_at_the_limit() -> None:
    postbacks = [_postback(str(i), "a" if i % 3 else "b") for i in range(7)]
    batches = group_batches(postbacks, _key, 2)
    assert [[p["postback_id"] for p in batch] for batch in batches] == [["0", "3"], ["6"], ["1", "2"], ["4", "5"]]


@pytest.mark.parametrize(
    ("postbacks", "message"),
    [
        ([], "at least one"),
        ([_postback(str(i), "a") for i in range(3)], "at most 2"),
        ([_postback("1", "a"), _postback("2", "b")], "share a batch key"),
        ([_postback("1", "a"), _postback("1", "a")], "repeat a postback_id"),
    ],
)
def test_check_batch_refuses(postbacks: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_batch(postbacks, 2, _key)
