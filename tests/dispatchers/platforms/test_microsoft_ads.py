from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from devtools.fakes.platforms import sample_postback
from dispatchers.core.http import HttpResponse
from dispatchers.core.outcome import Verdict
from dispatchers.platforms import microsoft_ads

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
OCCURRED = datetime(2026, 11, 20, 8, 30, 15, tzinfo=UTC)
TOKEN = "ms-secret-access-token"
DEV_TOKEN = "ms-dev-token-secret"


def postback(seq: int = 0, occurred: datetime = OCCURRED, **overrides: Any) -> dict[str, Any]:
    return sample_postback("microsoft_ads", occurred, seq=seq, **overrides)


def build(postbacks: list[dict[str, Any]]) -> Any:
    return microsoft_ads.build_request(
        postbacks, base_url="https://ms.test", access_token=TOKEN, developer_token=DEV_TOKEN, api_version="v13"
    )


def response(status: int, body: Any = None, headers: dict[str, str] | None = None) -> HttpResponse:
    raw = body if isinstance(body, bytes) else b"" if body is None else orjson.dumps(body)
    return HttpResponse(status, headers or {}, raw)


def ms_error(code: int, name: str, index: int | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"Code": code, "ErrorCode": name, "Message": f"{name} message"}
    if index is not None:
        error["Index"] = index
    return error


def test_build_request_url_headers_and_body() -> None:
    request = build([postback()])
    assert request.method == "POST"
    assert request.url == "https://ms.test/CampaignManagement/v13/OfflineConversions/Apply"
    assert request.headers == {
        "Authorization": f"Bearer {TOKEN}",
        "DeveloperToken": DEV_TOKEN,
        "CustomerId": "7001",
        "CustomerAccountId": "8002",
        "Content-Type": "application/json",
    }
    assert orjson.loads(request.body or b"") == {
        "OfflineConversions": [
            {
                "ConversionName": "Deposit",
                "ConversionTime": "2026-11-20T08:30:15Z",
                "ConversionValue": 12.5,
                "ConversionCurrencyCode": "USD",
                "MicrosoftClickId": postback()["click_ids"]["msclkid"],
            }
        ]
    }


def test_batch_key_and_limits() -> None:
    assert microsoft_ads.batch_key(postback()) == "7001|8002"
    other = postback(1)
    other["entry"] = {**other["entry"], "account_id": "9"}
    with pytest.raises(ValueError):
        build([postback(), other])
    with pytest.raises(ValueError):
        build([postback(i) for i in range(microsoft_ads.MAX_BATCH + 1)])


@pytest.mark.parametrize(
    ("occurred", "click_ids", "expected"),
    [
        (OCCURRED, {"msclkid": "M"}, None),
        (OCCURRED, {"gclid": "G"}, (Verdict.REJECTED, "missing_click_id", None)),
        (NOW - timedelta(days=90, seconds=1), {"msclkid": "M"}, (Verdict.REJECTED, "event_too_old", None)),
        (NOW - timedelta(days=89, hours=23), {"msclkid": "M"}, None),
        (NOW, {"msclkid": "M"}, None),
        (NOW + timedelta(seconds=30), {"msclkid": "M"}, (Verdict.RETRY, "event_in_future", 31.0)),
        (NOW + timedelta(minutes=16), {"msclkid": "M"}, (Verdict.REJECTED, "event_in_future", None)),
    ],
)
def test_precheck(
    occurred: datetime, click_ids: dict[str, str], expected: tuple[Verdict, str, float | None] | None
) -> None:
    outcome = microsoft_ads.precheck(postback(occurred=occurred, click_ids=click_ids), NOW)
    assert (None if outcome is None else (outcome.verdict, outcome.reason, outcome.retry_after_seconds)) == expected


D = Verdict.DELIVERED
R = Verdict.RETRY
X = Verdict.REJECTED
OK = (D, "http_200", None)


@pytest.mark.parametrize(
    ("resp", "expected"),
    [
        (response(200, {"PartialErrors": []}), [OK] * 3),
        (response(200, {"PartialErrors": None}), [OK] * 3),
        (response(200, b""), [OK] * 3),
        (
            response(200, {"PartialErrors": [ms_error(3705, "OfflineConversionMicrosoftClickIdInvalid", 1)]}),
            [OK, (X, "OfflineConversionMicrosoftClickIdInvalid", None), OK],
        ),
        (
            response(200, {"PartialErrors": [ms_error(3701, "A", 0), ms_error(3702, "B", 2)]}),
            [(X, "A", None), OK, (X, "B", None)],
        ),
        (response(200, {"PartialErrors": [ms_error(3701, "A")]}), [(X, "A", None)] * 3),
        (response(200, {"PartialErrors": [ms_error(3701, "A", 9)]}), [(X, "A", None)] * 3),
        (
            response(200, {"Errors": [ms_error(1029, "CustomerIdHasToBeSpecified")]}),
            [(X, "CustomerIdHasToBeSpecified", None)] * 3,
        ),
        (
            response(400, {"Errors": [ms_error(1030, "AccountIdHasToBeSpecified")]}),
            [(X, "AccountIdHasToBeSpecified", None)] * 3,
        ),
        (
            response(400, {"OperationErrors": [ms_error(106, "UserIsNotAuthorized")]}),
            [(X, "UserIsNotAuthorized", None)] * 3,
        ),
        (response(401, {"Errors": [ms_error(109, "AuthenticationTokenExpired")]}), [(R, "auth_expired", None)] * 3),
        (response(401, {"Errors": [ms_error(105, "InvalidCredentials")]}), [(R, "auth_expired", None)] * 3),
        (response(400, {"Errors": [ms_error(109, "AuthenticationTokenExpired")]}), [(R, "auth_expired", None)] * 3),
        (
            response(429, {"Errors": [ms_error(117, "CallRateExceeded")]}, {"retry-after": "5"}),
            [(R, "throttled", 5.0)] * 3,
        ),
        (response(400, {"Errors": [ms_error(117, "CallRateExceeded")]}), [(R, "throttled", 60.0)] * 3),
        (response(500, {"Errors": [ms_error(0, "InternalError")]}), [(R, "InternalError", None)] * 3),
        (response(200, {"Errors": [{"Code": 0, "Message": "x"}]}), [(R, "0", None)] * 3),
        (response(503, b"<html>", {"retry-after": "8"}), [(R, "http_503", 8.0)] * 3),
        (response(404, b""), [(X, "http_404", None)] * 3),
    ],
)
def test_classify_response(resp: HttpResponse, expected: list[tuple[Verdict, str, float | None]]) -> None:
    outcomes = microsoft_ads.classify_response(resp, [postback(i) for i in range(3)], now=NOW)
    assert [(o.verdict, o.reason, o.retry_after_seconds) for o in outcomes] == expected


def test_row_detail_is_the_message() -> None:
    resp = response(200, {"PartialErrors": [ms_error(3701, "A", 0)]})
    assert microsoft_ads.classify_response(resp, [postback()])[0].detail == "A message"


def test_details_are_truncated_and_never_carry_the_token() -> None:
    body = {"Errors": [ms_error(1, "X")], "Echo": f"Authorization: Bearer {TOKEN} " + "q" * 900}
    outcome = microsoft_ads.classify_response(response(400, body), [postback()], secrets=[TOKEN, DEV_TOKEN])[0]
    assert len(outcome.detail) <= 500
    assert TOKEN not in outcome.detail
