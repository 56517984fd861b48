from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from devtools.fakes.platforms import sample_postback
from dispatchers.core.http import HttpResponse
from dispatchers.core.outcome import Outcome, Verdict
from dispatchers.platforms import google_ads

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
OCCURRED = datetime(2026, 11, 20, 8, 30, 15, tzinfo=UTC)
TOKEN = "ya29.secret-access-token"
DEV_TOKEN = "dev-token-secret"


def postback(seq: int = 0, **overrides: Any) -> dict[str, Any]:
    return sample_postback("google_ads", OCCURRED, seq=seq, **overrides)


def build(postbacks: list[dict[str, Any]]) -> Any:
    return google_ads.build_request(
        postbacks, base_url="https://ads.test/", access_token=TOKEN, developer_token=DEV_TOKEN, api_version="v26"
    )


def response(status: int, body: Any = None, headers: dict[str, str] | None = None) -> HttpResponse:
    raw = body if isinstance(body, bytes) else b"" if body is None else orjson.dumps(body)
    return HttpResponse(status, headers or {}, raw)


def row_error(code: str, index: int | None, field: str = "conversionUploadError") -> dict[str, Any]:
    error: dict[str, Any] = {"errorCode": {field: code}, "message": f"{code} happened"}
    if index is not None:
        error["location"] = {
            "fieldPathElements": [{"fieldName": "conversions", "index": index}, {"fieldName": "gclid"}]
        }
    return error


def partial(*errors: dict[str, Any]) -> dict[str, Any]:
    failure = {"@type": "type.googleapis.com/google.ads.googleads.v21.errors.GoogleAdsFailure", "errors": list(errors)}
    return {"results": [], "partialFailureError": {"code": 3, "message": "failed", "details": [failure]}}


def request_error(status: int, *codes: tuple[str, str]) -> dict[str, Any]:
    errors = [{"errorCode": {field: code}, "message": code} for field, code in codes]
    return {"error": {"code": status, "status": "X", "details": [{"errors": errors}]}}


def test_build_request_url_headers_and_body() -> None:
    request = build([postback()])
    assert request.method == "POST"
    assert request.url == "https://ads.test/v26/customers/1234567890:uploadClickConversions"
    assert request.headers == {
        "Authorization": f"Bearer {TOKEN}",
        "developer-token": DEV_TOKEN,
        "Content-Type": "application/json",
    }
    assert request.timeout_seconds == google_ads.DEFAULT_TIMEOUT_SECONDS
    assert request.body is not None
    pb = postback()
    assert orjson.loads(request.body) == {
        "conversions": [
            {
                "conversionAction": "customers/1234567890/conversionActions/987654",
                "conversionDateTime": "2026-11-20 08:30:15+00:00",
                "conversionValue": 12.5,
                "currencyCode": "USD",
                "orderId": pb["postback_id"],
                "gclid": pb["click_ids"]["gclid"],
                "userIdentifiers": [
                    {"hashedEmail": pb["user"]["email_sha256"]},
                    {"hashedPhoneNumber": pb["user"]["phone_sha256"]},
                ],
            }
        ],
        "partialFailure": True,
    }


def test_login_customer_id_header_without_dashes() -> None:
    pb = postback()
    pb["entry"] = {**pb["entry"], "login_customer_id": "999-888-7777"}
    assert build([pb]).headers["login-customer-id"] == "9998887777"


def test_payout_goes_out_as_the_shortest_exact_number() -> None:
    body = build([postback(payout="0.1")]).body
    assert body is not None and b'"conversionValue":0.1,' in body


@pytest.mark.parametrize(
    ("ids", "expected"),
    [
        ({"gclid": "G", "gbraid": "B", "wbraid": "W"}, {"gclid": "G"}),
        ({"gbraid": "B", "wbraid": "W"}, {"gbraid": "B"}),
        ({"wbraid": "W"}, {"wbraid": "W"}),
        ({}, {}),
    ],
)
def test_one_click_id_per_row(ids: dict[str, str], expected: dict[str, str]) -> None:
    row = google_ads.conversion_row(postback(click_ids=ids))
    assert {k: row[k] for k in google_ads.CLICK_ID_FIELDS if k in row} == expected


def test_no_user_identifiers_when_user_has_no_hashes() -> None:
    assert "userIdentifiers" not in google_ads.conversion_row(postback(user={}))


@pytest.mark.parametrize(
    ("click_ids", "user", "reason"),
    [
        ({"gclid": "G"}, {}, None),
        ({"gbraid": "B"}, {}, None),
        ({"wbraid": "W"}, {}, None),
        ({}, {"email_sha256": "a" * 64}, None),
        ({}, {"phone_sha256": "a" * 64}, None),
        ({}, {"external_id_sha256": "a" * 64}, "missing_click_id"),
        ({"msclkid": "M"}, {}, "missing_click_id"),
    ],
)
def test_precheck(click_ids: dict[str, str], user: dict[str, str], reason: str | None) -> None:
    outcome = google_ads.precheck(postback(click_ids=click_ids, user=user), NOW)
    assert (outcome.reason if outcome else None) == reason
    assert outcome is None or outcome.verdict is Verdict.REJECTED


def test_batch_key_and_limits() -> None:
    pb = postback()
    assert google_ads.batch_key(pb) == "1234567890|"
    other = postback(1)
    other["entry"] = {**other["entry"], "customer_id": "5555555555"}
    with pytest.raises(ValueError):
        build([pb, other])
    with pytest.raises(ValueError):
        build([postback(i) for i in range(google_ads.MAX_BATCH + 1)])
    assert (
        len(orjson.loads(build([postback(i) for i in range(google_ads.MAX_BATCH)]).body or b"")["conversions"]) == 2000
    )


def outcomes_of(resp: HttpResponse, n: int = 3) -> list[tuple[Verdict, str, float | None]]:
    result = google_ads.classify_response(resp, [postback(i) for i in range(n)], now=NOW, secrets=[TOKEN])
    assert len(result) == n
    return [(o.verdict, o.reason, o.retry_after_seconds) for o in result]


D = Verdict.DELIVERED
R = Verdict.RETRY
X = Verdict.REJECTED


@pytest.mark.parametrize(
    ("resp", "expected"),
    [
        (response(200, {"results": [{}, {}, {}]}), [(D, "http_200", None)] * 3),
        (response(200, {"results": [], "partialFailureError": {}}), [(D, "http_200", None)] * 3),
        (response(200, None), [(D, "http_200", None)] * 3),
        (
            response(
                200,
                partial(
                    row_error("EXPIRED_EVENT", 0),
                    row_error("CLICK_NOT_FOUND", 1),
                    row_error("CLICK_CONVERSION_ALREADY_EXISTS", 2),
                ),
            ),
            [
                (X, "EXPIRED_EVENT", None),
                (X, "CLICK_NOT_FOUND", None),
                (Verdict.DUPLICATE, "CLICK_CONVERSION_ALREADY_EXISTS", None),
            ],
        ),
        (
            response(200, partial(row_error("ORDER_ID_ALREADY_IN_USE", 1))),
            [(D, "http_200", None), (Verdict.DUPLICATE, "ORDER_ID_ALREADY_IN_USE", None), (D, "http_200", None)],
        ),
        (
            response(200, partial(row_error("TOO_RECENT_EVENT", 0))),
            [(R, "TOO_RECENT_EVENT", 21600.0), (D, "http_200", None), (D, "http_200", None)],
        ),
        (
            response(200, partial(row_error("TRANSIENT_ERROR", 2, "internalError"))),
            [(D, "http_200", None), (D, "http_200", None), (R, "TRANSIENT_ERROR", None)],
        ),
        (
            response(200, partial(row_error("TRANSIENT_ERROR", 0, "internalError"), row_error("CLICK_NOT_FOUND", 0))),
            [(X, "CLICK_NOT_FOUND", None), (D, "http_200", None), (D, "http_200", None)],
        ),
        (
            response(200, partial(row_error("CLICK_NOT_FOUND", 1), row_error("CLICK_CONVERSION_ALREADY_EXISTS", 1))),
            [
                (D, "http_200", None),
                (Verdict.DUPLICATE, "CLICK_CONVERSION_ALREADY_EXISTS", None),
                (D, "http_200", None),
            ],
        ),
        # An error that names no row, or a row that is not in the request, could be about any row.
        (response(200, partial(row_error("UNKNOWN", None))), [(X, "UNKNOWN", None)] * 3),
        (response(200, partial(row_error("CLICK_NOT_FOUND", 7))), [(X, "CLICK_NOT_FOUND", None)] * 3),
        (
            response(200, partial(row_error("weird code!", 0))),
            [(X, "row_error", None), (D, "http_200", None), (D, "http_200", None)],
        ),
        (
            response(429, request_error(429, ("quotaError", "RESOURCE_EXHAUSTED")), {"retry-after": "7"}),
            [(R, "RESOURCE_EXHAUSTED", 7.0)] * 3,
        ),
        (response(429, None, {"retry-after": "Sun, 22 Nov 2026 12:01:00 GMT"}), [(R, "RESOURCE_EXHAUSTED", 60.0)] * 3),
        (response(500, request_error(500, ("internalError", "INTERNAL_ERROR"))), [(R, "INTERNAL_ERROR", None)] * 3),
        (response(503, request_error(503, ("internalError", "TRANSIENT_ERROR"))), [(R, "TRANSIENT_ERROR", None)] * 3),
        (response(504, None, {"retry-after": "3"}), [(R, "http_504", 3.0)] * 3),
        (response(502, b"<html>bad gateway</html>"), [(R, "http_502", None)] * 3),
        (
            response(409, request_error(409, ("databaseError", "CONCURRENT_MODIFICATION"))),
            [(R, "CONCURRENT_MODIFICATION", None)] * 3,
        ),
        (
            response(401, request_error(401, ("authenticationError", "OAUTH_TOKEN_EXPIRED"))),
            [(R, "auth_expired", None)] * 3,
        ),
        (response(401, {"error": {"code": 401, "status": "UNAUTHENTICATED"}}), [(R, "auth_expired", None)] * 3),
        (response(401, None), [(R, "auth_expired", None)] * 3),
        (
            response(401, request_error(401, ("authenticationError", "DEVELOPER_TOKEN_INVALID"))),
            [(X, "DEVELOPER_TOKEN_INVALID", None)] * 3,
        ),
        (
            response(400, request_error(400, ("conversionUploadError", "TOO_MANY_CONVERSIONS_IN_REQUEST"))),
            [(X, "TOO_MANY_CONVERSIONS_IN_REQUEST", None)] * 3,
        ),
        (
            response(403, request_error(403, ("authorizationError", "USER_PERMISSION_DENIED"))),
            [(X, "USER_PERMISSION_DENIED", None)] * 3,
        ),
        (response(404, None), [(X, "http_404", None)] * 3),
    ],
)
def test_classify_response(resp: HttpResponse, expected: list[tuple[Verdict, str, float | None]]) -> None:
    assert outcomes_of(resp) == expected


def test_classify_keeps_http_status_and_row_message() -> None:
    resp = response(200, partial(row_error("CLICK_NOT_FOUND", 0)))
    first = google_ads.classify_response(resp, [postback()])[0]
    assert first == Outcome(Verdict.REJECTED, "CLICK_NOT_FOUND", "CLICK_NOT_FOUND happened", http_status=200)


def test_details_are_truncated_and_never_carry_the_token() -> None:
    body = {"error": {"code": 400, "message": f"echo Bearer {TOKEN} " + "x" * 2000}}
    resp = HttpResponse(400, {}, orjson.dumps(body))
    for outcome in google_ads.classify_response(resp, [postback()], secrets=[TOKEN, DEV_TOKEN]):
        assert len(outcome.detail) <= 500
        assert TOKEN not in outcome.detail and "secret-access" not in outcome.detail
