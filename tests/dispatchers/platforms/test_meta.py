from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from devtools.fakes.platforms import sample_postback
from dispatchers.core.http import HttpResponse
from dispatchers.core.outcome import Verdict
from dispatchers.platforms import meta

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
OCCURRED = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)
TOKEN = "EAAB-secret-meta-token"


def postback(seq: int = 0, occurred: datetime = OCCURRED, **overrides: Any) -> dict[str, Any]:
    return sample_postback("meta", occurred, seq=seq, **overrides)


def with_entry(pb: dict[str, Any], **fields: Any) -> dict[str, Any]:
    pb["entry"] = {**pb["entry"], **fields}
    return pb


def build(postbacks: list[dict[str, Any]]) -> Any:
    return meta.build_request(postbacks, base_url="https://graph.test", access_token=TOKEN, api_version="v26.0")


def response(status: int, body: Any = None, headers: dict[str, str] | None = None) -> HttpResponse:
    raw = body if isinstance(body, bytes) else b"" if body is None else orjson.dumps(body)
    return HttpResponse(status, headers or {}, raw)


def error(code: int, **extra: Any) -> dict[str, Any]:
    return {"error": {"message": "m", "type": "OAuthException", "code": code, "fbtrace_id": "T", **extra}}


def test_build_request_url_headers_and_body() -> None:
    pb = postback()
    request = build([pb])
    assert request.method == "POST"
    assert request.url == "https://graph.test/v26.0/1122334455/events"
    assert TOKEN not in request.url
    assert request.headers == {"Content-Type": "application/json"}
    assert request.timeout_seconds == 1.5
    assert orjson.loads(request.body or b"") == {
        "access_token": TOKEN,
        "data": [
            {
                "event_name": "Purchase",
                "event_time": int(OCCURRED.timestamp()),
                "event_id": pb["postback_id"],
                "action_source": "system_generated",
                "user_data": {
                    "em": [pb["user"]["email_sha256"]],
                    "ph": [pb["user"]["phone_digits_sha256"]],
                    "external_id": [pb["user"]["external_id_sha256"]],
                    "client_ip_address": "203.0.113.7",
                    "client_user_agent": "Mozilla/5.0 (fake)",
                    "fbc": pb["click_ids"]["fbc"],
                    "fbp": pb["click_ids"]["fbp"],
                },
                "custom_data": {"value": 12.5, "currency": "USD"},
            }
        ],
    }


def test_test_event_code_and_action_source_from_the_entry() -> None:
    pb = with_entry(postback(), test_event_code="TEST123", action_source="physical_store")
    body = orjson.loads(build([pb]).body or b"")
    assert body["test_event_code"] == "TEST123"
    assert body["data"][0]["action_source"] == "physical_store"
    assert meta.batch_key(pb) == "1122334455|TEST123"
    assert meta.batch_key(postback()) == "1122334455|"


@pytest.mark.parametrize(
    ("conversion_type", "event_names", "expected"),
    [
        ("deposit", {"deposit": "CustomDeposit"}, "CustomDeposit"),
        ("lead", {}, "Lead"),
        ("conversion", {}, "Purchase"),
        ("registration", None, "CompleteRegistration"),
        ("chargeback", {}, "chargeback"),
    ],
)
def test_event_name(conversion_type: str, event_names: dict[str, str] | None, expected: str) -> None:
    pb = with_entry(postback(type=conversion_type), event_names=event_names)
    assert meta.event_name(pb) == expected


def test_user_data_leaves_out_what_is_missing() -> None:
    pb = postback(user={"ip": "198.51.100.1", "user_agent": "UA"}, click_ids={})
    assert meta.event(pb)["user_data"] == {"client_ip_address": "198.51.100.1", "client_user_agent": "UA"}


HASH = "a" * 64


@pytest.mark.parametrize(
    ("occurred", "entry", "click_ids", "user", "reason"),
    [
        (OCCURRED, {}, {"fbc": "F"}, {}, None),
        (OCCURRED, {}, {"fbp": "F"}, {}, None),
        (OCCURRED, {}, {}, {"email_sha256": HASH}, None),
        (OCCURRED, {}, {}, {"phone_digits_sha256": HASH}, None),
        (OCCURRED, {}, {}, {"external_id_sha256": HASH}, None),
        (OCCURRED, {}, {}, {"ip": "1.2.3.4", "user_agent": "UA"}, None),
        (OCCURRED, {}, {}, {"ip": "1.2.3.4"}, "missing_user_data"),
        (OCCURRED, {}, {"gclid": "G"}, {"phone_sha256": HASH}, "missing_user_data"),
        (NOW - timedelta(days=7, seconds=1), {}, {"fbc": "F"}, {}, "event_too_old"),
        (NOW - timedelta(days=6, hours=23, minutes=55), {}, {"fbc": "F"}, {}, "event_too_old"),
        (NOW - timedelta(days=6, hours=23), {}, {"fbc": "F"}, {}, None),
        (OCCURRED, {"action_source": "website"}, {"fbc": "F"}, {"user_agent": "UA"}, "website_needs_source_url"),
        (OCCURRED, {"action_source": "app"}, {"fbc": "F"}, {}, None),
    ],
)
def test_precheck(
    occurred: datetime, entry: dict[str, Any], click_ids: dict[str, str], user: dict[str, str], reason: str | None
) -> None:
    pb = with_entry(postback(occurred=occurred, click_ids=click_ids, user=user), **entry)
    outcome = meta.precheck(pb, NOW)
    assert (outcome.reason if outcome else None) == reason
    assert outcome is None or outcome.verdict is Verdict.REJECTED


def test_precheck_needs_an_aware_now() -> None:
    with pytest.raises(ValueError):
        meta.precheck(postback(), datetime(2026, 11, 22))


def test_batch_limits() -> None:
    with pytest.raises(ValueError):
        build([postback(i) for i in range(meta.MAX_BATCH + 1)])
    other = with_entry(postback(1), pixel_id="999")
    with pytest.raises(ValueError):
        build([postback(), other])


D = Verdict.DELIVERED
R = Verdict.RETRY
X = Verdict.REJECTED


@pytest.mark.parametrize(
    ("resp", "expected"),
    [
        (response(200, {"events_received": 2, "messages": [], "fbtrace_id": "T"}), (D, "http_200", None)),
        (response(200, {"events_received": 1, "messages": []}), (R, "events_received_mismatch", None)),
        (response(200, b"ok"), (D, "http_200", None)),
        (response(500, error(1)), (R, "temporary_error", None)),
        (response(503, error(2), {"retry-after": "5"}), (R, "temporary_error", 5.0)),
        (response(400, error(4)), (R, "throttled", 60.0)),
        (response(400, error(17), {"retry-after": "12"}), (R, "throttled", 12.0)),
        (response(403, error(32)), (R, "throttled", 60.0)),
        (response(400, error(613)), (R, "throttled", 60.0)),
        (response(400, error(80004)), (R, "throttled", 60.0)),
        (response(400, error(190, error_subcode=463)), (X, "invalid_token", None)),
        (response(401, error(190)), (X, "invalid_token", None)),
        (response(400, error(100, error_subcode=2804003)), (X, "meta_error_100", None)),
        (response(400, error(100, is_transient=True)), (R, "temporary_error", None)),
        (response(500, error(100)), (R, "meta_error_100", None)),
        (response(200, error(100)), (X, "meta_error_100", None)),
        (response(400, error("x")), (X, "http_400", None)),  # type: ignore[arg-type]
        (response(404, b"not found"), (X, "http_404", None)),
        (response(502, b"<html>"), (R, "http_502", None)),
        (response(429, None, {"retry-after": "9"}), (R, "http_429", 9.0)),
    ],
)
def test_classify_response(resp: HttpResponse, expected: tuple[Verdict, str, float | None]) -> None:
    outcomes = meta.classify_response(resp, [postback(0), postback(1)], now=NOW)
    assert [(o.verdict, o.reason, o.retry_after_seconds) for o in outcomes] == [expected] * 2
    assert all(o.http_status == resp.status for o in outcomes)


def test_details_are_truncated_and_never_carry_the_token() -> None:
    body = {"error": {"code": 100, "message": f"bad request ?access_token={TOKEN} " + "y" * 900}}
    outcome = meta.classify_response(response(400, body), [postback()], secrets=[TOKEN])[0]
    assert len(outcome.detail) <= 500
    assert TOKEN not in outcome.detail
    outcome = meta.classify_response(response(400, body), [postback()])[0]
    assert TOKEN not in outcome.detail
