"""Meta Conversions API: request builder and response classifier.

Contract (docs/destinations.md): `POST {base}/{version}/{pixel_id}/events` with `access_token`,
body `{"data": [...], "test_event_code"?}`, at most 1000 events; success `{events_received,
messages, fbtrace_id}`; errors `{"error": {message, type, code, error_subcode, fbtrace_id}}` with
codes 1, 2 temporary, 4, 17 (and 32, 613, 80004) throttling, 190 invalid token. One event older
than 7 days fails the whole request. Recommended request timeout 1.5 s.
https://developers.facebook.com/docs/marketing-api/conversions-api/using-the-api ,
https://developers.facebook.com/docs/graph-api/guides/error-handling

Decisions:
- `api_version` (`v26.0`) is an argument: META_GRAPH_API_VERSION, default and expiry dates in `api_versions`.
- `access_token` travels as a field of the JSON body (the Graph API takes parameters there as well
  as in the query string) so it never appears in a URL, where logs and exception texts pick it up.
- `event_id` is the postback_id: Meta dedups on (event_name, event_id) for 48 h, so repeating a
  request whose outcome was unknown is safe, and so is a whole-batch RETRY.
- `event_name`: the entry's `event_names[type]`, else DEFAULT_EVENT_NAMES, else the type itself
  (Meta accepts custom event names; guessing a standard event for an unknown type would be wrong).
- `action_source`: the entry's, else `system_generated` (valid without browser fields). `website`
  needs `client_user_agent` and `event_source_url`; postbacks carry no page URL, so a website entry
  is refused per postback (`website_needs_source_url`) rather than failing whole batches.
- A postback needs something to match on: fbc, fbp, hashed email/phone/external id, or client IP
  together with user agent; otherwise `missing_user_data`.
- Error 190 (invalid token) is REJECTED `invalid_token`: CAPI tokens are long-lived system-user
  tokens that no refresh fixes; an operator must replace the secret.
- Throttling (4, 17, 32, 613, 80004) is RETRY `throttled`, with Retry-After or a 60 s hint.
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
    check_batch,
    click_ids,
    is_retryable_status,
    join_url,
    json_body,
    parse_json,
    payout_number,
    require_aware,
    same_for_all,
    status_outcome,
    user_fields,
)
from schemas.kinds import OAUTH_KINDS

KIND = "meta"
USES_OAUTH = KIND in OAUTH_KINDS
MAX_BATCH = 1000
# docs/destinations.md: Meta recommends 1.5 s; a timeout is retried and event_id makes the repeat harmless.
DEFAULT_TIMEOUT_SECONDS = 1.5
DEFAULT_ACTION_SOURCE = "system_generated"
MAX_EVENT_AGE = timedelta(days=7)
# Refuse events this much before the 7-day line: the request may be sent a little after the check,
# Meta's clock may differ from ours, and one late event fails every event of the batch.
EVENT_AGE_MARGIN = timedelta(minutes=10)
# Without Retry-After, a pause long enough for Meta's rolling rate-limit windows to move.
THROTTLE_PAUSE_SECONDS = 60.0

DEFAULT_EVENT_NAMES: Mapping[str, str] = {
    "conversion": "Purchase",
    "sale": "Purchase",
    "purchase": "Purchase",
    "deposit": "Purchase",
    "ftd": "Purchase",
    "lead": "Lead",
    "registration": "CompleteRegistration",
    "signup": "CompleteRegistration",
    "install": "CompleteRegistration",
    "subscription": "Subscribe",
    "subscribe": "Subscribe",
    "trial": "StartTrial",
}
TEMPORARY_CODES = frozenset({1, 2})
THROTTLING_CODES = frozenset({4, 17, 32, 613, 80004})
INVALID_TOKEN_CODE = 190


def batch_key(postback: Postback) -> str:
    """Events share a request when they go to the same pixel with the same test_event_code."""
    entry = postback["entry"]
    return f"{entry['pixel_id']}|{entry.get('test_event_code') or ''}"


def event_name(postback: Postback) -> str:
    names = postback["entry"].get("event_names") or {}
    conversion_type: str = postback["type"]
    return str(names.get(conversion_type) or DEFAULT_EVENT_NAMES.get(conversion_type, conversion_type))


def action_source(postback: Postback) -> str:
    return str(postback["entry"].get("action_source") or DEFAULT_ACTION_SOURCE)


def precheck(postback: Postback, now: datetime) -> Outcome | None:
    """REJECTED for an event that would fail its whole batch or cannot match; None when it may be sent.

    Call it right before each attempt: an event that passed yesterday may be too old today.
    """
    require_aware(now)
    cutoff = now - MAX_EVENT_AGE + EVENT_AGE_MARGIN
    if postback["occurred_at_unix"] < cutoff.timestamp():
        return Outcome(Verdict.REJECTED, "event_too_old", "Meta refuses events older than 7 days")
    if action_source(postback) == "website":
        return Outcome(
            Verdict.REJECTED,
            "website_needs_source_url",
            "action_source website needs event_source_url, which postbacks do not carry",
        )
    if not _has_match_keys(postback):
        return Outcome(
            Verdict.REJECTED,
            "missing_user_data",
            "no fbc, fbp, hashed email, phone or external id, and no client IP with user agent",
        )
    return None


def _has_match_keys(postback: Postback) -> bool:
    ids = click_ids(postback)
    user = user_fields(postback)
    if ids.get("fbc") or ids.get("fbp"):
        return True
    if any(user.get(name) for name in ("email_sha256", "phone_digits_sha256", "external_id_sha256")):
        return True
    return bool(user.get("ip") and user.get("user_agent"))


def event(postback: Postback) -> dict[str, Any]:
    ids = click_ids(postback)
    user = user_fields(postback)
    user_data: dict[str, Any] = {}
    # Meta's phone hash is of the digits without "+", unlike Google's and TikTok's.
    for field, name in (("em", "email_sha256"), ("ph", "phone_digits_sha256"), ("external_id", "external_id_sha256")):
        if user.get(name):
            user_data[field] = [user[name]]
    for field, value in (
        ("client_ip_address", user.get("ip")),
        ("client_user_agent", user.get("user_agent")),
        ("fbc", ids.get("fbc")),
        ("fbp", ids.get("fbp")),
    ):
        if value:
            user_data[field] = value
    return {
        "event_name": event_name(postback),
        "event_time": postback["occurred_at_unix"],
        "event_id": postback["postback_id"],
        "action_source": action_source(postback),
        "user_data": user_data,
        "custom_data": {"value": payout_number(postback["payout"]), "currency": postback["currency"]},
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
    """One events request for postbacks that share a batch_key (at most MAX_BATCH); `api_version`: `v26.0`."""
    del developer_token  # none: the access token is all (kept for the one signature of every platform)
    check_batch(postbacks, MAX_BATCH, batch_key)
    entry = postbacks[0]["entry"]
    payload: dict[str, Any] = {"data": [event(postback) for postback in postbacks], "access_token": access_token}
    if entry.get("test_event_code"):
        payload["test_event_code"] = entry["test_event_code"]
    url = join_url(base_url, f"/{api_version}/{entry['pixel_id']}/events")
    return HttpRequest("POST", url, {"Content-Type": "application/json"}, json_body(payload), timeout_seconds)


def classify_response(
    response: HttpResponse,
    postbacks: Sequence[Postback],
    *,
    now: datetime | None = None,
    secrets: Iterable[str] = (),
) -> list[Outcome]:
    """One Outcome per postback; Meta accepts or refuses a request as a whole, so all are the same."""
    return same_for_all(postbacks, _request_outcome(response, len(postbacks), now, tuple(secrets)))


def _request_outcome(response: HttpResponse, size: int, now: datetime | None, secrets: tuple[str, ...]) -> Outcome:
    body = parse_json(response.body)
    error = body.get("error") if isinstance(body, dict) else None
    status = response.status
    detail = body_excerpt(response, secrets)
    if not isinstance(error, dict):
        received = body.get("events_received") if isinstance(body, dict) else None
        if 200 <= status <= 299 and isinstance(received, int) and received != size:
            # Meta does not say which events it dropped; event_id dedup makes resending all of them safe.
            return Outcome(Verdict.RETRY, "events_received_mismatch", detail, http_status=status)
        return status_outcome(response, secrets=secrets, now=now)
    code = error.get("code")
    retry_after = parse_retry_after_header(response.headers, now)
    if code in THROTTLING_CODES:
        pause = retry_after if retry_after is not None else THROTTLE_PAUSE_SECONDS
        return Outcome(Verdict.RETRY, "throttled", detail, http_status=status, retry_after_seconds=pause)
    if code in TEMPORARY_CODES or error.get("is_transient") is True:
        return Outcome(Verdict.RETRY, "temporary_error", detail, http_status=status, retry_after_seconds=retry_after)
    if code == INVALID_TOKEN_CODE:
        return Outcome(Verdict.REJECTED, "invalid_token", detail, http_status=status)
    reason = f"meta_error_{code}" if isinstance(code, int) and 0 <= code < 10**7 else f"http_{status}"
    if is_retryable_status(status):
        return Outcome(Verdict.RETRY, reason, detail, http_status=status, retry_after_seconds=retry_after)
    # An error object is an error even under a 2xx.
    return Outcome(Verdict.REJECTED, reason, detail, http_status=status)
