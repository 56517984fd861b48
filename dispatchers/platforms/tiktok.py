"""TikTok Events API 2.0: request builder and response classifier.

Contract (docs/destinations.md): `POST {base}/open_api/{version}/event/track/` (v1.3) with header
`Access-Token`; body `{"event_source": "web", "event_source_id": <pixel code>, "data": [{event,
event_time, event_id, user: {ttclid, external_id, email, phone, ip, user_agent}, properties: {value,
currency}}]}`, up to 1000 events, email/phone/external_id SHA-256 hashed. The answer is an envelope
`{code, message, request_id, data}`: code 0 is success, 40100 rate limited (unconfirmed). One bad
row fails the whole batch. TikTok dedups on (event, event_id) within 48 h.
docs/destinations.md names no documentation URL for TikTok; the facts above are the ones it lists.

Decisions:
- `api_version` (`v1.3`) is an argument: TIKTOK_API_VERSION, default and end dates in `api_versions`.
- `event_id` is the postback_id, so repeating a request whose outcome was unknown is safe.
- `event`: the entry's `event_names[type]`, else DEFAULT_EVENT_NAMES, else the type itself (TikTok
  accepts custom events).
- A postback needs something to match on: ttclid, hashed email/phone/external id, or IP together
  with user agent; otherwise `missing_user_data`.
- Any non-zero code except rate limiting (40100) and server-side codes (50000-59999) is REJECTED for
  every row of the request. The classifier only classifies: a caller that wants to save the good
  rows of a refused batch may resend them one by one.
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
    check_batch,
    click_ids,
    is_retryable_status,
    join_url,
    json_body,
    parse_json,
    payout_number,
    same_for_all,
    user_fields,
)
from schemas.kinds import OAUTH_KINDS

KIND = "tiktok"
USES_OAUTH = KIND in OAUTH_KINDS
MAX_BATCH = 1000
DEFAULT_TIMEOUT_SECONDS = 10.0
RATE_LIMITED_CODE = 40100
SERVER_ERROR_CODES = range(50000, 60000)
# Without Retry-After, a pause long enough for a per-minute quota window to roll over.
THROTTLE_PAUSE_SECONDS = 60.0

DEFAULT_EVENT_NAMES: Mapping[str, str] = {
    "conversion": "CompletePayment",
    "sale": "CompletePayment",
    "purchase": "CompletePayment",
    "deposit": "CompletePayment",
    "ftd": "CompletePayment",
    "lead": "SubmitForm",
    "registration": "CompleteRegistration",
    "signup": "CompleteRegistration",
    "install": "Download",
    "subscription": "Subscribe",
    "subscribe": "Subscribe",
}


def batch_key(postback: Postback) -> str:
    """Events share a request when they go to the same pixel with the same test_event_code."""
    entry = postback["entry"]
    return f"{entry['pixel_code']}|{entry.get('test_event_code') or ''}"


def event_name(postback: Postback) -> str:
    names = postback["entry"].get("event_names") or {}
    conversion_type: str = postback["type"]
    return str(names.get(conversion_type) or DEFAULT_EVENT_NAMES.get(conversion_type, conversion_type))


def precheck(postback: Postback, now: datetime) -> Outcome | None:
    """REJECTED when the event cannot be matched to anyone; None when it may be sent.

    `now` is unused (docs/destinations.md names no age limit for TikTok) but kept for one shared signature.
    """
    del now
    user = user_fields(postback)
    if click_ids(postback).get("ttclid"):
        return None
    if any(user.get(name) for name in ("email_sha256", "phone_sha256", "external_id_sha256")):
        return None
    if user.get("ip") and user.get("user_agent"):
        return None
    return Outcome(
        Verdict.REJECTED,
        "missing_user_data",
        "no ttclid, hashed email, phone or external id, and no IP with user agent",
    )


def event(postback: Postback) -> dict[str, Any]:
    ids = click_ids(postback)
    user = user_fields(postback)
    matched: dict[str, str] = {}
    for field, value in (
        ("ttclid", ids.get("ttclid")),
        ("external_id", user.get("external_id_sha256")),
        ("email", user.get("email_sha256")),
        # TikTok's phone hash is of the E.164 number with its "+".
        ("phone", user.get("phone_sha256")),
        ("ip", user.get("ip")),
        ("user_agent", user.get("user_agent")),
    ):
        if value:
            matched[field] = value
    return {
        "event": event_name(postback),
        "event_time": postback["occurred_at_unix"],
        "event_id": postback["postback_id"],
        "user": matched,
        "properties": {"value": payout_number(postback["payout"]), "currency": postback["currency"]},
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
    """One event/track request for postbacks that share a batch_key (at most MAX_BATCH); `api_version`: `v1.3`."""
    del developer_token  # none: the access token is all (kept for the one signature of every platform)
    check_batch(postbacks, MAX_BATCH, batch_key)
    entry = postbacks[0]["entry"]
    payload: dict[str, Any] = {
        "event_source": "web",
        "event_source_id": entry["pixel_code"],
        "data": [event(postback) for postback in postbacks],
    }
    if entry.get("test_event_code"):
        payload["test_event_code"] = entry["test_event_code"]
    headers = {"Access-Token": access_token, "Content-Type": "application/json"}
    url = join_url(base_url, f"/open_api/{api_version}/event/track/")
    return HttpRequest("POST", url, headers, json_body(payload), timeout_seconds)


def classify_response(
    response: HttpResponse,
    postbacks: Sequence[Postback],
    *,
    now: datetime | None = None,
    secrets: Iterable[str] = (),
) -> list[Outcome]:
    """One Outcome per postback; one bad row fails the batch, so all are the same."""
    return same_for_all(postbacks, _request_outcome(response, now, tuple(secrets)))


def _request_outcome(response: HttpResponse, now: datetime | None, secrets: tuple[str, ...]) -> Outcome:
    status = response.status
    detail = body_excerpt(response, secrets)
    retry_after = parse_retry_after_header(response.headers, now)
    body = parse_json(response.body)
    code = body.get("code") if isinstance(body, dict) else None
    if not isinstance(code, int) or isinstance(code, bool):
        code = None
    if status == 429 or code == RATE_LIMITED_CODE:
        pause = retry_after if retry_after is not None else THROTTLE_PAUSE_SECONDS
        return Outcome(Verdict.RETRY, "rate_limited", detail, http_status=status, retry_after_seconds=pause)
    if is_retryable_status(status):
        return Outcome(Verdict.RETRY, f"http_{status}", detail, http_status=status, retry_after_seconds=retry_after)
    if code is None:
        if 200 <= status <= 299:
            # No envelope means no verdict; event_id dedup makes a resend harmless.
            return Outcome(Verdict.RETRY, "unreadable_response", detail, http_status=status)
        return Outcome(Verdict.REJECTED, f"http_{status}", detail, http_status=status)
    if code == 0 and 200 <= status <= 299:
        return Outcome(Verdict.DELIVERED, f"http_{status}", "", http_status=status)
    reason = f"tiktok_{code}" if 0 <= code < 10**7 else "tiktok_error"
    if code in SERVER_ERROR_CODES:
        return Outcome(Verdict.RETRY, reason, detail, http_status=status, retry_after_seconds=retry_after)
    return Outcome(Verdict.REJECTED, reason, detail, http_status=status)
