"""What the four ad-platform builders and classifiers share: batching, money, time, safe details.

Everything here is pure: no I/O and no clock reads (callers pass `now`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson

from dispatchers.core.http import HttpResponse
from dispatchers.core.outcome import Outcome, Verdict
from dispatchers.core.retry_policy import parse_retry_after_header

Postback = Mapping[str, Any]

DETAIL_LIMIT = 500
REDACTED = "[redacted]"
_BOUNDED_CODE = re.compile(r"^[A-Za-z0-9_]{1,64}$")
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
# Responses (or proxies in front of them) sometimes echo the request: scrub anything shaped like a
# credential even when the caller did not hand us the exact secret.
_CREDENTIAL_PATTERNS = (
    re.compile(r"(access_token=)[^&\s\"']+", re.IGNORECASE),
    re.compile(r"(\"(?:access_token|refresh_token|client_secret)\"\s*:\s*\")[^\"]*", re.IGNORECASE),
    re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]+", re.IGNORECASE),
)
# Statuses contract §4 retries besides 5xx.
_RETRYABLE_STATUSES = frozenset({408, 425, 429})


def is_retryable_status(status: int) -> bool:
    return status in _RETRYABLE_STATUSES or 500 <= status <= 599


def is_sha256_hex(value: object) -> bool:
    return isinstance(value, str) and _SHA256_HEX.match(value) is not None


def bounded_code(value: object, fallback: str) -> str:
    """A platform error code usable as an Outcome reason, or `fallback` when it looks unbounded."""
    text = str(value) if isinstance(value, str | int) and not isinstance(value, bool) else ""
    return text if _BOUNDED_CODE.match(text) else fallback


def require_aware(now: datetime) -> datetime:
    """Reject naive datetimes: comparing them with UTC timestamps silently uses the host's zone."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    return now


def utc_from_unix(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


def payout_number(payout: str) -> float:
    """The exact decimal string of a postback as the JSON number the platforms take.

    Postbacks keep money as exact decimal strings; the APIs want a JSON number (Google's
    conversionValue is a double anyway). The float is made only here, at the boundary, and
    orjson writes the shortest text that reads back as it, so "12.5" goes out as 12.5 and
    "0.1" as 0.1; only amounts beyond ~15 significant digits would lose precision.
    """
    try:
        value = Decimal(payout)
    except (InvalidOperation, TypeError):
        raise ValueError("payout must be a decimal string") from None
    number = float(value)
    if not value.is_finite() or not math.isfinite(number) or number < 0:
        raise ValueError("payout must be a finite, non-negative decimal")
    return number


def json_body(payload: Mapping[str, Any]) -> bytes:
    return orjson.dumps(payload)


def parse_json(body: bytes) -> Any:
    """The decoded body, or None when it is not JSON (HTML error pages from proxies, empty bodies)."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    for secret in secrets:
        # Very short "secrets" would blank out ordinary words; real tokens are long.
        if len(secret) >= 6:
            text = text.replace(secret, REDACTED)
    for pattern in _CREDENTIAL_PATTERNS:
        text = pattern.sub(lambda match: match.group(1) + REDACTED, text)
    return text


def safe_detail(text: str, secrets: Iterable[str] = ()) -> str:
    """Redacted first, truncated second, so a credential cut at the limit cannot leak half-visible."""
    cleaned = redact(text, secrets)
    if len(cleaned) <= DETAIL_LIMIT:
        return cleaned
    return cleaned[: DETAIL_LIMIT - 1] + "…"


def body_excerpt(response: HttpResponse, secrets: Iterable[str] = ()) -> str:
    return safe_detail(response.body.decode("utf-8", errors="replace"), secrets)


def same_for_all(postbacks: Sequence[Postback], outcome: Outcome) -> list[Outcome]:
    return [outcome] * len(postbacks)


def status_outcome(
    response: HttpResponse,
    *,
    reason: str | None = None,
    secrets: Iterable[str] = (),
    now: datetime | None = None,
    default_retry_after: float | None = None,
) -> Outcome:
    """contract §4 by status alone: 2xx delivered; 408, 425, 429, 5xx retried; other statuses rejected."""
    status = response.status
    detail = body_excerpt(response, secrets)
    code = reason or f"http_{status}"
    if 200 <= status <= 299:
        return Outcome(Verdict.DELIVERED, code, detail, http_status=status)
    if is_retryable_status(status):
        retry_after = parse_retry_after_header(response.headers, now)
        return Outcome(
            Verdict.RETRY,
            code,
            detail,
            http_status=status,
            retry_after_seconds=retry_after if retry_after is not None else default_retry_after,
        )
    return Outcome(Verdict.REJECTED, code, detail, http_status=status)


def check_batch(postbacks: Sequence[Postback], max_batch: int, batch_key: Callable[[Postback], str]) -> None:
    """Refuse batches the platform would refuse whole, before anything is sent.

    These are programming errors of the caller, not properties of a postback, so they raise.
    Repeated postback ids are refused because they are the platforms' dedup keys: Google rejects
    both rows (DUPLICATE_ORDER_ID), the others silently drop one, and outcomes would not map 1:1.
    """
    if not postbacks:
        raise ValueError("a batch needs at least one postback")
    if len(postbacks) > max_batch:
        raise ValueError(f"a batch holds at most {max_batch} postbacks, got {len(postbacks)}")
    keys = {batch_key(postback) for postback in postbacks}
    if len(keys) != 1:
        raise ValueError(f"postbacks of one batch must share a batch key, got {len(keys)} keys")
    ids = [postback["postback_id"] for postback in postbacks]
    if len(set(ids)) != len(ids):
        raise ValueError("a batch must not repeat a postback_id")


def group_batches(
    postbacks: Iterable[Postback], batch_key: Callable[[Postback], str], max_batch: int
) -> list[list[Postback]]:
    """Postbacks grouped by batch key (first-seen order) and cut into requests of at most `max_batch`."""
    groups: dict[str, list[list[Postback]]] = {}
    for postback in postbacks:
        chunks = groups.setdefault(batch_key(postback), [[]])
        if len(chunks[-1]) >= max_batch:
            chunks.append([])
        chunks[-1].append(postback)
    return [chunk for chunks in groups.values() for chunk in chunks]


def join_url(base_url: str, path: str) -> str:
    return base_url.rstrip("/") + path


def user_fields(postback: Postback) -> Mapping[str, str]:
    user = postback.get("user")
    return user if isinstance(user, Mapping) else {}


def click_ids(postback: Postback) -> Mapping[str, str]:
    ids = postback.get("click_ids")
    return ids if isinstance(ids, Mapping) else {}
