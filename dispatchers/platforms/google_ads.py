"""Google Ads UploadClickConversions: request builder and response classifier.

Contract (docs/destinations.md): `POST {base}/{version}/customers/{customer_id}:uploadClickConversions`
with `Authorization: Bearer <OAuth token>`, `developer-token` and optional `login-customer-id`; body
`{"conversions": [...], "partialFailure": true}` with at most 2000 ClickConversions. Row errors come
back in `partialFailureError` (a GoogleAdsFailure whose errors carry the row index in
`location.fieldPathElements`); request errors as `{"error": {code, status, details[GoogleAdsFailure]}}`.
https://developers.google.com/google-ads/api/reference/rpc/latest/ConversionUploadErrorEnum.ConversionUploadError ,
https://developers.google.com/google-ads/api/docs/best-practices/understand-api-errors

Decisions:
- `orderId` is the postback_id, so a request whose outcome was unknown is safe to repeat: Google
  answers the repeat with CLICK_CONVERSION_ALREADY_EXISTS / ORDER_ID_ALREADY_IN_USE (DUPLICATE).
- One click id per row, gclid before gbraid before wbraid (Google refuses gbraid with wbraid).
- A postback without any click id is still sent when it has a hashed email or phone: enhanced
  conversions for leads match on those. If the conversion action is not set up for that, Google
  fails just that row (partial failure), never the batch. Without either: `missing_click_id`.
- `api_version` (`v26`) is an argument: GOOGLE_ADS_API_VERSION, default and sunset dates in `api_versions`.
  Google turns each version off about a year after its release (HTTP 400 `UNSUPPORTED_VERSION`).
- Any 401 is RETRY `auth_expired` (the OAuth token expired or was revoked), except authentication
  errors a new token cannot fix (developer token, not an Ads user), which are REJECTED. The
  classifier is stateless: the caller refreshes the token and must treat a second `auth_expired` in
  a row as final.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
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
    safe_detail,
    same_for_all,
    status_outcome,
    user_fields,
    utc_from_unix,
)
from schemas.kinds import OAUTH_KINDS

KIND = "google_ads"
USES_OAUTH = KIND in OAUTH_KINDS
MAX_BATCH = 2000
# A full batch of 2000 rows is processed synchronously by Google and can take several seconds.
DEFAULT_TIMEOUT_SECONDS = 30.0
CLICK_ID_FIELDS = ("gclid", "gbraid", "wbraid")

DUPLICATE_CODES = frozenset({"CLICK_CONVERSION_ALREADY_EXISTS", "ORDER_ID_ALREADY_IN_USE"})
TRANSIENT_CODES = frozenset(
    {
        "TRANSIENT_ERROR",
        "INTERNAL_ERROR",
        "DEADLINE_EXCEEDED",
        "RESOURCE_EXHAUSTED",
        "RESOURCE_TEMPORARILY_EXHAUSTED",
        "CONCURRENT_MODIFICATION",
    }
)
# Google says to retry these after 6 hours (the click or the conversion action is too recent).
RETRY_LATER_CODES: Mapping[str, float] = {
    "TOO_RECENT_EVENT": 6 * 3600.0,
    "TOO_RECENT_CONVERSION_ACTION": 6 * 3600.0,
}
# 401s a refreshed OAuth token would fix; other authentication errors are configuration problems.
TOKEN_AUTH_CODES = frozenset({"OAUTH_TOKEN_EXPIRED", "OAUTH_TOKEN_INVALID", "OAUTH_TOKEN_REVOKED"})


def _digits(customer_id: str) -> str:
    return customer_id.replace("-", "")


def batch_key(postback: Postback) -> str:
    """Rows share a request when they go to the same customer through the same manager account."""
    entry = postback["entry"]
    return f"{_digits(entry['customer_id'])}|{_digits(entry.get('login_customer_id') or '')}"


def format_conversion_time(unix_seconds: int) -> str:
    """`yyyy-mm-dd hh:mm:ss+00:00`: Google requires the offset, UTC keeps it unambiguous."""
    return utc_from_unix(unix_seconds).strftime("%Y-%m-%d %H:%M:%S+00:00")


def precheck(postback: Postback, now: datetime) -> Outcome | None:
    """REJECTED when the row is certain to fail; None when it may be sent.

    `now` is unused (Google's click-through window depends on the click time, which postbacks do not
    carry; Google reports EXPIRED_EVENT per row) but kept so all platforms share one signature.
    """
    del now
    ids = click_ids(postback)
    user = user_fields(postback)
    if any(ids.get(name) for name in CLICK_ID_FIELDS):
        return None
    if user.get("email_sha256") or user.get("phone_sha256"):
        return None
    return Outcome(
        Verdict.REJECTED,
        "missing_click_id",
        "no gclid, gbraid or wbraid and no hashed email or phone for enhanced conversions",
    )


def conversion_row(postback: Postback) -> dict[str, Any]:
    entry = postback["entry"]
    row: dict[str, Any] = {
        "conversionAction": entry["conversion_action"],
        "conversionDateTime": format_conversion_time(postback["occurred_at_unix"]),
        "conversionValue": payout_number(postback["payout"]),
        "currencyCode": postback["currency"],
        "orderId": postback["postback_id"],
    }
    ids = click_ids(postback)
    for name in CLICK_ID_FIELDS:
        if ids.get(name):
            row[name] = ids[name]
            break
    user = user_fields(postback)
    identifiers = []
    if user.get("email_sha256"):
        identifiers.append({"hashedEmail": user["email_sha256"]})
    if user.get("phone_sha256"):
        identifiers.append({"hashedPhoneNumber": user["phone_sha256"]})
    if identifiers:
        row["userIdentifiers"] = identifiers
    return row


def build_request(
    postbacks: Sequence[Postback],
    *,
    base_url: str,
    access_token: str,
    api_version: str,
    developer_token: str | None = None,
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
) -> HttpRequest:
    """One UploadClickConversions request for postbacks that share a batch_key (at most MAX_BATCH).

    `api_version` as the URL path has it: `v26` (api_versions.normalize_version).
    """
    if not developer_token:
        raise ValueError("Google Ads requests need a developer token")
    check_batch(postbacks, MAX_BATCH, batch_key)
    entry = postbacks[0]["entry"]
    headers = {
        "Authorization": f"Bearer {access_token}",
        "developer-token": developer_token,
        "Content-Type": "application/json",
    }
    login_customer_id = entry.get("login_customer_id")
    if login_customer_id:
        headers["login-customer-id"] = _digits(login_customer_id)
    path = f"/{api_version}/customers/{_digits(entry['customer_id'])}:uploadClickConversions"
    body = {"conversions": [conversion_row(postback) for postback in postbacks], "partialFailure": True}
    return HttpRequest("POST", join_url(base_url, path), headers, json_body(body), timeout_seconds)


def classify_response(
    response: HttpResponse,
    postbacks: Sequence[Postback],
    *,
    now: datetime | None = None,
    secrets: Iterable[str] = (),
) -> list[Outcome]:
    """One Outcome per postback, in request order.

    `now` resolves an HTTP-date Retry-After (else the response's Date header is used); `secrets`
    (the tokens just sent) are scrubbed from every detail.
    """
    secrets = tuple(secrets)
    body = parse_json(response.body)
    if not 200 <= response.status <= 299:
        return same_for_all(postbacks, _request_failure(response, body, now, secrets))
    failure = body.get("partialFailureError") if isinstance(body, dict) else None
    errors_by_row, unplaced = _row_errors(failure, len(postbacks))
    delivered = Outcome(Verdict.DELIVERED, f"http_{response.status}", "", http_status=response.status)
    outcomes: list[Outcome] = []
    for index in range(len(postbacks)):
        row_errors = errors_by_row.get(index, []) + unplaced
        outcomes.append(_row_outcome(row_errors, response.status, secrets) if row_errors else delivered)
    return outcomes


def _request_failure(response: HttpResponse, body: Any, now: datetime | None, secrets: tuple[str, ...]) -> Outcome:
    errors = _failure_errors(body.get("error") if isinstance(body, dict) else None)
    codes = [_error_code(error) for error in errors]
    first = next((code for code in codes if code), None)
    detail = body_excerpt(response, secrets)
    status = response.status
    retry_after = parse_retry_after_header(response.headers, now)
    if status == 401:
        lasting = next((code for code in _auth_codes(errors) if code not in TOKEN_AUTH_CODES), None)
        if lasting is not None:
            return Outcome(Verdict.REJECTED, bounded_code(lasting, "http_401"), detail, http_status=status)
        return Outcome(Verdict.RETRY, "auth_expired", detail, http_status=status)
    transient = next((code for code in codes if code in TRANSIENT_CODES), None)
    if transient is not None:
        return Outcome(Verdict.RETRY, transient, detail, http_status=status, retry_after_seconds=retry_after)
    if status == 429:
        return Outcome(
            Verdict.RETRY,
            bounded_code(first, "RESOURCE_EXHAUSTED"),
            detail,
            http_status=status,
            retry_after_seconds=retry_after,
        )
    reason = bounded_code(first, f"http_{status}") if first else f"http_{status}"
    if is_retryable_status(status):
        return Outcome(Verdict.RETRY, reason, detail, http_status=status, retry_after_seconds=retry_after)
    return status_outcome(response, reason=reason, secrets=secrets, now=now)


def _auth_codes(errors: list[Mapping[str, Any]]) -> list[str]:
    codes: list[str] = []
    for error in errors:
        code = error.get("errorCode")
        if isinstance(code, Mapping) and isinstance(code.get("authenticationError"), str):
            codes.append(code["authenticationError"])
    return codes


def _failure_errors(failure: Any) -> list[Mapping[str, Any]]:
    """The `errors` of every GoogleAdsFailure in a google.rpc.Status's details."""
    if not isinstance(failure, Mapping):
        return []
    found: list[Mapping[str, Any]] = []
    details = failure.get("details")
    for detail in details if isinstance(details, list) else []:
        errors = detail.get("errors") if isinstance(detail, Mapping) else None
        if isinstance(errors, list):
            found.extend(error for error in errors if isinstance(error, Mapping))
    return found


def _error_code(error: Mapping[str, Any]) -> str | None:
    """`{"conversionUploadError": "CLICK_NOT_FOUND"}` -> "CLICK_NOT_FOUND"."""
    code = error.get("errorCode")
    if not isinstance(code, Mapping):
        return None
    for value in code.values():
        if isinstance(value, str):
            return value
    return None


def _row_index(error: Mapping[str, Any]) -> int | None:
    location = error.get("location")
    elements = location.get("fieldPathElements") if isinstance(location, Mapping) else None
    for element in elements if isinstance(elements, list) else []:
        if isinstance(element, Mapping) and element.get("fieldName") == "conversions":
            index = element.get("index")
            if isinstance(index, int) and not isinstance(index, bool):
                return index
    return None


def _row_errors(failure: Any, size: int) -> tuple[dict[int, list[Mapping[str, Any]]], list[Mapping[str, Any]]]:
    """Errors by row index, plus errors that name no valid row (applied to every row: unknown is not ok)."""
    by_row: dict[int, list[Mapping[str, Any]]] = {}
    unplaced: list[Mapping[str, Any]] = []
    for error in _failure_errors(failure):
        index = _row_index(error)
        if index is not None and 0 <= index < size:
            by_row.setdefault(index, []).append(error)
        else:
            unplaced.append(error)
    return by_row, unplaced


def _row_outcome(errors: list[Mapping[str, Any]], status: int, secrets: tuple[str, ...]) -> Outcome:
    """Several errors on one row: a duplicate wins (Google has the conversion), then permanent, then retry."""
    described = [(bounded_code(_error_code(error), "row_error"), error) for error in errors]

    def detail_of(error: Mapping[str, Any]) -> str:
        message = error.get("message")
        return safe_detail(message if isinstance(message, str) else "", secrets)

    for code, error in described:
        if code in DUPLICATE_CODES:
            return Outcome(Verdict.DUPLICATE, code, detail_of(error), http_status=status)
    for code, error in described:
        if code not in TRANSIENT_CODES and code not in RETRY_LATER_CODES:
            return Outcome(Verdict.REJECTED, code, detail_of(error), http_status=status)
    code, error = described[0]
    return Outcome(
        Verdict.RETRY, code, detail_of(error), http_status=status, retry_after_seconds=RETRY_LATER_CODES.get(code)
    )
