"""Microsoft Advertising ApplyOfflineConversions: request builder and response classifier.

Contract (docs/destinations.md): `POST {base}/CampaignManagement/{version}/OfflineConversions/Apply` (v13)
with headers `Authorization: Bearer`, `DeveloperToken`, `CustomerId`, `CustomerAccountId`; body
`{"OfflineConversions": [{ConversionName, ConversionTime, ConversionValue, ConversionCurrencyCode,
MicrosoftClickId}]}`, up to 1000 per call (unconfirmed). ConversionTime is UTC ISO 8601, not in the
future, within the 90-day conversion window. Row errors come back in `PartialErrors[]` (`Index`,
`Code`, `ErrorCode`, `Message`), request errors in `Errors[]`. The same MicrosoftClickId and
ConversionTime again is a duplicate that Microsoft ignores without an error.
https://learn.microsoft.com/en-us/advertising/campaign-management-service/offlineconversion?view=bingads-13

Decisions:
- `api_version` (`v13`) is an argument: MICROSOFT_ADS_API_VERSION, default and sunset dates in `api_versions`.
- ConversionTime is derived from occurred_at only (never clamped to "now"), so a repeated request
  carries the same (MicrosoftClickId, ConversionTime) and Microsoft ignores it as a duplicate.
  Microsoft answers such duplicates as successes, so no row is ever classified DUPLICATE here.
- An event slightly in the future (clock skew between tracker and dispatcher, up to
  FUTURE_SKEW_TOLERANCE) is RETRY `event_in_future` with the wait until it is not; further ahead is
  REJECTED. Older than 90 days is REJECTED `event_too_old`; no msclkid is `missing_click_id`.
- Any 401, and error 109 AuthenticationTokenExpired, is RETRY `auth_expired`: the caller refreshes
  the OAuth token and must treat a second `auth_expired` in a row as final.
- Errors 0 (InternalError) and 117 (CallRateExceeded) are RETRY, the latter with a 60 s hint.
- `ConversionName` must equal the goal's name exactly or Microsoft silently does not count the
  conversion; rules carry it verbatim and nothing here can detect a mismatch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from dispatchers.core.http import HttpRequest, HttpResponse
from dispatchers.core.outcome import Outcome, Verdict
from dispatchers.core.retry_policy import parse_retry_after_header
from dispatchers.platforms.common import (
    Postback,
    body_excerpt,
    bounded_code,
    check_batch,
    click_ids,
    is_retryable_status,
    join_url,
    json_body,
    parse_json,
    payout_number,
    require_aware,
    safe_detail,
    same_for_all,
    utc_from_unix,
)
from schemas.kinds import OAUTH_KINDS

KIND = "microsoft_ads"
USES_OAUTH = KIND in OAUTH_KINDS
MAX_BATCH = 1000
# A full batch of 1000 conversions is validated synchronously; allow it time.
DEFAULT_TIMEOUT_SECONDS = 30.0
MAX_CONVERSION_AGE = timedelta(days=90)
# Trackers' and our clocks differ by seconds to minutes; waiting that out beats losing the conversion.
FUTURE_SKEW_TOLERANCE = timedelta(minutes=15)
# Without Retry-After, long enough for Microsoft's per-minute call quota to recover.
THROTTLE_PAUSE_SECONDS = 60.0

TOKEN_EXPIRED_CODES = frozenset({"109", "AuthenticationTokenExpired"})
THROTTLED_CODES = frozenset({"117", "CallRateExceeded"})
INTERNAL_ERROR_CODES = frozenset({"0", "InternalError"})


def batch_key(postback: Postback) -> str:
    """Conversions share a request when they go to the same customer and account."""
    entry = postback["entry"]
    return f"{entry['customer_id']}|{entry['account_id']}"


def format_conversion_time(unix_seconds: int) -> str:
    """UTC ISO 8601 with a `Z`: `2026-11-22T06:57:26Z`."""
    return utc_from_unix(unix_seconds).strftime("%Y-%m-%dT%H:%M:%SZ")


def precheck(postback: Postback, now: datetime) -> Outcome | None:
    """An Outcome when the conversion must not be sent now; None when it may be.

    Call it right before each attempt: the 90-day window keeps moving.
    """
    require_aware(now)
    if not click_ids(postback).get("msclkid"):
        return Outcome(Verdict.REJECTED, "missing_click_id", "Microsoft Advertising needs the msclkid")
    occurred = utc_from_unix(postback["occurred_at_unix"])
    if occurred < now - MAX_CONVERSION_AGE:
        return Outcome(Verdict.REJECTED, "event_too_old", "the conversion is outside the 90-day conversion window")
    if occurred > now:
        ahead = occurred - now
        if ahead <= FUTURE_SKEW_TOLERANCE:
            return Outcome(
                Verdict.RETRY,
                "event_in_future",
                "ConversionTime is slightly ahead of our clock",
                retry_after_seconds=ahead.total_seconds() + 1.0,
            )
        return Outcome(Verdict.REJECTED, "event_in_future", "ConversionTime is in the future")
    return None


def offline_conversion(postback: Postback) -> dict[str, Any]:
    return {
        "ConversionName": postback["entry"]["conversion_name"],
        "ConversionTime": format_conversion_time(postback["occurred_at_unix"]),
        "ConversionValue": payout_number(postback["payout"]),
        "ConversionCurrencyCode": postback["currency"],
        "MicrosoftClickId": click_ids(postback)["msclkid"],
    }


def build_request(
    postbacks: Sequence[Postback],
    *,
    base_url: str,
    access_token: str,
    api_version: str,
    developer_token: str | None = None,
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
) -> HttpRequest:
    """One ApplyOfflineConversions request for postbacks that share a batch_key (at most MAX_BATCH).

    `api_version` as the URL path has it: `v13`.
    """
    if not developer_token:
        raise ValueError("Microsoft Advertising requests need a developer token")
    check_batch(postbacks, MAX_BATCH, batch_key)
    entry = postbacks[0]["entry"]
    headers = {
        "Authorization": f"Bearer {access_token}",
        "DeveloperToken": developer_token,
        "CustomerId": entry["customer_id"],
        "CustomerAccountId": entry["account_id"],
        "Content-Type": "application/json",
    }
    body = {"OfflineConversions": [offline_conversion(postback) for postback in postbacks]}
    url = join_url(base_url, f"/CampaignManagement/{api_version}/OfflineConversions/Apply")
    return HttpRequest("POST", url, headers, json_body(body), timeout_seconds)


def classify_response(
    response: HttpResponse,
    postbacks: Sequence[Postback],
    *,
    now: datetime | None = None,
    secrets: Iterable[str] = (),
) -> list[Outcome]:
    """One Outcome per postback, in request order."""
    secrets = tuple(secrets)
    status = response.status
    body = parse_json(response.body)
    request_errors = _errors(body, "Errors") + _errors(body, "OperationErrors")
    if not 200 <= status <= 299 or request_errors:
        return same_for_all(postbacks, _request_failure(response, request_errors, now, secrets))
    delivered = Outcome(Verdict.DELIVERED, f"http_{status}", "", http_status=status)
    outcomes = [delivered] * len(postbacks)
    unplaced: Outcome | None = None
    for error in _errors(body, "PartialErrors"):
        index = error.get("Index")
        rejected = Outcome(
            Verdict.REJECTED,
            bounded_code(_code_name(error), "row_error"),
            safe_detail(str(error.get("Message") or ""), secrets),
            http_status=status,
        )
        if isinstance(index, int) and not isinstance(index, bool) and 0 <= index < len(postbacks):
            outcomes[index] = rejected
        else:
            unplaced = unplaced or rejected
    if unplaced is not None:
        # An error that names no row could be about any of them: not knowing is not delivered.
        outcomes = [unplaced if outcome is delivered else outcome for outcome in outcomes]
    return outcomes


def _errors(body: Any, name: str) -> list[Mapping[str, Any]]:
    errors = body.get(name) if isinstance(body, dict) else None
    return [error for error in errors if isinstance(error, Mapping)] if isinstance(errors, list) else []


def _code_name(error: Mapping[str, Any]) -> object:
    return error.get("ErrorCode") or error.get("Code")


def _codes(error: Mapping[str, Any]) -> set[str]:
    return {str(error.get(name)) for name in ("Code", "ErrorCode") if error.get(name) is not None}


def _request_failure(
    response: HttpResponse, errors: list[Mapping[str, Any]], now: datetime | None, secrets: tuple[str, ...]
) -> Outcome:
    status = response.status
    detail = body_excerpt(response, secrets)
    retry_after = parse_retry_after_header(response.headers, now)
    codes = set().union(*(_codes(error) for error in errors)) if errors else set()
    if status == 401 or codes & TOKEN_EXPIRED_CODES:
        return Outcome(Verdict.RETRY, "auth_expired", detail, http_status=status)
    if status == 429 or codes & THROTTLED_CODES:
        pause = retry_after if retry_after is not None else THROTTLE_PAUSE_SECONDS
        return Outcome(Verdict.RETRY, "throttled", detail, http_status=status, retry_after_seconds=pause)
    first = bounded_code(_code_name(errors[0]), f"http_{status}") if errors else f"http_{status}"
    if is_retryable_status(status) or codes & INTERNAL_ERROR_CODES:
        return Outcome(Verdict.RETRY, first, detail, http_status=status, retry_after_seconds=retry_after)
    return Outcome(Verdict.REJECTED, first, detail, http_status=status)
