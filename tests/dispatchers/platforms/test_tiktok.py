from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from devtools.fakes.platforms import sample_postback
from dispatchers.core.http import HttpResponse
from dispatchers.core.outcome import Verdict
from dispatchers.platforms import tiktok

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
OCCURRED = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)
TOKEN = "tt-secret-access-token"


def postback(seq: int = 0, **overrides: Any) -> dict[str, Any]:
    return sample_postback("tiktok", OCCURRED, seq=seq, **overrides)


def with_entry(pb: dict[str, Any], **fields: Any) -> dict[str, Any]:
    pb["entry"] = {**pb["entry"], **fields}
    return pb


def build(postbacks: list[dict[str, Any]]) -> Any:
    return tiktok.build_request(postbacks, base_url="https://tt.test/", access_token=TOKEN, api_version="v1.3")


def envelope(code: int, message: str = "m") -> dict[str, Any]:
    return {"code": code, "message": message, "request_id": "r", "data": {}}


def response(status: int, body: Any = None, headers: dict[str, str] | None = None) -> HttpResponse:
    raw = body if isinstance(body, bytes) else b"" if body is None else orjson.dumps(body)
    return HttpResponse(status, headers or {}, raw)


def test_build_request_url_headers_and_body() -> None:
    pb = postback()
    request = build([pb])
    assert request.method == "POST"
    assert request.url == "https://tt.test/open_api/v1.3/event/track/"
    assert request.headers == {"Access-Token": TOKEN, "Content-Type": "application/json"}
    assert orjson.loads(request.body or b"") == {
        "event_source": "web",
        "event_source_id": "CPIXEL123",
        "data": [
            {
                "event": "CompletePayment",
                "event_time": int(OCCURRED.timestamp()),
                "event_id": pb["postback_id"],
                "user": {
                    "ttclid": pb["click_ids"]["ttclid"],
                    "external_id": pb["user"]["external_id_sha256"],
                    "email": pb["user"]["email_sha256"],
                    "phone": pb["user"]["phone_sha256"],
                    "ip": "203.0.113.7",
                    "user_agent": "Mozilla/5.0 (fake)",
                },
                "properties": {"value": 12.5, "currency": "USD"},
            }
        ],
    }


def test_test_event_code_and_batch_key() -> None:
    pb = with_entry(postback(), test_event_code="TEST1")
    assert orjson.loads(build([pb]).body or b"")["test_event_code"] == "TEST1"
    assert tiktok.batch_key(pb) == "CPIXEL123|TEST1"
    with pytest.raises(ValueError):
        build([pb, postback(1)])
    with pytest.raises(ValueError):
        build([postback(i) for i in range(tiktok.MAX_BATCH + 1)])


@pytest.mark.parametrize(
    ("conversion_type", "names", "expected"),
    [
        ("deposit", {"deposit": "Purchase"}, "Purchase"),
        ("lead", None, "SubmitForm"),
        ("install", {}, "Download"),
        ("refund", {}, "refund"),
    ],
)
def test_event_name(conversion_type: str, names: dict[str, str] | None, expected: str) -> None:
    assert tiktok.event_name(with_entry(postback(type=conversion_type), event_names=names)) == expected


HASH = "b" * 64


@pytest.mark.parametrize(
    ("click_ids", "user", "reason"),
    [
        ({"ttclid": "T"}, {}, None),
        ({}, {"email_sha256": HASH}, None),
        ({}, {"phone_sha256": HASH}, None),
        ({}, {"external_id_sha256": HASH}, None),
        ({}, {"ip": "1.2.3.4", "user_agent": "UA"}, None),
        ({}, {"user_agent": "UA"}, "missing_user_data"),
        ({"fbc": "F"}, {"phone_digits_sha256": HASH}, "missing_user_data"),
    ],
)
def test_precheck(click_ids: dict[str, str], user: dict[str, str], reason: str | None) -> None:
    outcome = tiktok.precheck(postback(click_ids=click_ids, user=user), NOW)
    assert (outcome.reason if outcome else None) == reason
    assert outcome is None or outcome.verdict is Verdict.REJECTED


D = Verdict.DELIVERED
R = Verdict.RETRY
X = Verdict.REJECTED


@pytest.mark.parametrize(
    ("resp", "expected"),
    [
        (response(200, envelope(0, "OK")), (D, "http_200", None)),
        (response(200, envelope(40100)), (R, "rate_limited", 60.0)),
        (response(200, envelope(40100), {"retry-after": "4"}), (R, "rate_limited", 4.0)),
        (response(429, b""), (R, "rate_limited", 60.0)),
        (response(200, envelope(50000)), (R, "tiktok_50000", None)),
        (response(500, envelope(50000)), (R, "http_500", None)),
        (response(503, b"<html>", {"retry-after": "2"}), (R, "http_503", 2.0)),
        (response(200, envelope(40002, "data[3].event_time invalid")), (X, "tiktok_40002", None)),
        (response(200, envelope(40105)), (X, "tiktok_40105", None)),
        (response(400, envelope(40002)), (X, "tiktok_40002", None)),
        (response(200, b"not json"), (R, "unreadable_response", None)),
        (response(200, {"code": "0"}), (R, "unreadable_response", None)),
        (response(404, b"no"), (X, "http_404", None)),
        (response(200, envelope(-5)), (X, "tiktok_error", None)),
    ],
)
def test_classify_response(resp: HttpResponse, expected: tuple[Verdict, str, float | None]) -> None:
    outcomes = tiktok.classify_response(resp, [postback(0), postback(1), postback(2)], now=NOW)
    assert [(o.verdict, o.reason, o.retry_after_seconds) for o in outcomes] == [expected] * 3


def test_details_are_truncated_and_never_carry_the_token() -> None:
    body = envelope(40002, f"Access-Token {TOKEN} " + "z" * 900)
    outcome = tiktok.classify_response(response(200, body), [postback()], secrets=[TOKEN])[0]
    assert len(outcome.detail) <= 500
    assert TOKEN not in outcome.detail
