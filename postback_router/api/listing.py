"""The lists (`GET /v1/campaigns`, `GET /v1/offer-sources`): prefix filter and cursor pagination. Pure.

Items are ordered by id (Unicode code points, as Python compares strings). The cursor is the last id
of a page, base64url-encoded without padding: opaque to clients, and stable while documents are
added or deleted (a page starts after the id, whatever happened before it).
"""

from __future__ import annotations

import base64
import binascii
import bisect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from schemas.errors import FieldError

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_PREFIX_LENGTH = 256  # the longest id
QUERY_FIELDS = frozenset({"prefix", "limit", "cursor"})


@dataclass(frozen=True, slots=True)
class ListQuery:
    prefix: str
    after: str | None  # the id the page starts after
    limit: int


@dataclass(frozen=True, slots=True)
class Listed:
    """One document of a compacted view, with the time of the record that wrote it (when the view knows it)."""

    key: str
    document: Mapping[str, Any]
    changed_at_ms: int | None


def encode_cursor(key: str) -> str:
    return base64.urlsafe_b64encode(key.encode("utf-8")).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> str:
    """The id a cursor stands for; ValueError when it is not base64url.

    A cursor is only a position: one the api did not give out (bytes that are not UTF-8 among them)
    starts the page at the position it names, like any other, rather than failing.
    """
    try:
        raw = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("is not a cursor this api gave out (base64url)") from None
    return raw.decode("utf-8", errors="replace")


def parse_list_query(query: Mapping[str, str]) -> tuple[ListQuery | None, list[FieldError]]:
    """The query of a list route, or what is wrong with it (each problem naming its parameter)."""
    errors: list[FieldError] = []
    prefix = query.get("prefix", "")
    if len(prefix) > MAX_PREFIX_LENGTH:
        errors.append(FieldError("prefix", f"must be at most {MAX_PREFIX_LENGTH} characters"))
    limit = DEFAULT_LIMIT
    raw_limit = query.get("limit")
    if raw_limit is not None:
        if raw_limit.isascii() and raw_limit.isdigit() and 1 <= int(raw_limit) <= MAX_LIMIT:
            limit = int(raw_limit)
        else:
            errors.append(FieldError("limit", f"must be a whole number from 1 to {MAX_LIMIT}"))
    after = None
    raw_cursor = query.get("cursor")
    if raw_cursor is not None:
        try:
            after = decode_cursor(raw_cursor)
        except ValueError as exc:
            errors.append(FieldError("cursor", str(exc)))
    if errors:
        return None, errors
    return ListQuery(prefix, after, limit), []


def page_of_keys(sorted_keys: Sequence[str], prefix: str, after: str | None, limit: int) -> list[str]:
    """Up to `limit` keys that start with `prefix` and come after `after`, in order (O(log n + limit))."""
    start = bisect.bisect_left(sorted_keys, prefix)
    if after is not None and after >= prefix:
        start = max(start, bisect.bisect_right(sorted_keys, after))
    page: list[str] = []
    for key in sorted_keys[start : start + limit]:
        if not key.startswith(prefix):
            break
        page.append(key)
    return page


def list_answer(listed: Sequence[Listed], limit: int, item: Callable[[Listed], dict[str, Any]]) -> dict[str, Any]:
    """`{"items", "next_cursor"}` from up to limit + 1 documents: the extra one says a next page exists."""
    shown = listed[:limit]
    more = len(listed) > limit
    return {
        "items": [item(entry) for entry in shown],
        "next_cursor": encode_cursor(shown[-1].key) if more and shown else None,
    }


def campaign_item(listed: Listed) -> dict[str, Any]:
    postbacks = listed.document.get("postbacks") or []
    conditional = sum(1 for entry in postbacks if (entry.get("conditional") or {}).get("enabled"))
    return {
        "campaign_id": listed.key,
        "postbacks": len(postbacks),
        "conditional": conditional,
        "enabled": sum(1 for entry in postbacks if entry.get("enabled", True)),
        "changed_at": _rfc3339(listed.changed_at_ms),
    }


def offer_source_item(listed: Listed) -> dict[str, Any]:
    document = listed.document
    return {
        "offer_source_id": listed.key,
        "default_status": document.get("default_status"),
        "default_region": document.get("default_region"),
        "changed_at": _rfc3339(listed.changed_at_ms),
    }


def _rfc3339(timestamp_ms: int | None) -> str | None:
    if timestamp_ms is None or timestamp_ms < 0:
        return None
    moment = datetime.fromtimestamp(timestamp_ms / 1000, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
