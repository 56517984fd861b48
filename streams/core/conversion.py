"""Parsing a raw `conversions` record into a Conversion, or an InvalidInput saying why not."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson

from schemas.errors import InvalidInput
from streams.core.decimals import format_decimal, parse_decimal
from streams.core.schema_checks import check_fast

DEFAULT_TYPE = "conversion"
DEFAULT_CURRENCY = "USD"
CLICK_ID_FIELDS = ("external_id", "gclid", "gbraid", "wbraid", "fbc", "fbp", "ttclid", "msclkid")
USER_FIELDS = ("email", "phone", "ip", "user_agent", "external_id")


@dataclass(frozen=True, slots=True)
class Conversion:
    conversion_id: str
    click_id: str
    campaign_id: str  # "" only before the click join completed it (see parse_conversion)
    offer_source_id: str | None
    type: str
    status: str | None
    payout: Decimal
    currency: str
    transaction_id: str | None
    occurred_at: str
    occurred_at_unix: int
    click_ids: dict[str, str]
    user: dict[str, str]
    subs: dict[str, str]
    country: str | None = None  # ISO 3166-1 alpha-2, upper-cased: the region of a national-format phone

    @property
    def payout_text(self) -> str:
        return format_decimal(self.payout)


def parse_conversion(key: bytes | None, value: bytes | None, max_bytes: int, *, indexed: bool = False) -> Conversion:
    """Decode, validate against `schemas/conversion.schema.json`, and apply the defaults of contract §3.

    The record key must be the conversion_id: the fired-state is partitioned by it, so a record
    under another key could fire twice (contract §2.5). A conversion without campaign_id is keyed by
    its click_id instead (`conversion_key`), so that it lands on its click's partition; its
    `campaign_id` is then "" until the worker completes it from the click (streams/click_join.py).
    `indexed`: a `conversions.index` entry, keyed by its conversion_id whatever its campaign.
    """
    if value is None:
        raise InvalidInput("not_object", "record value is null; a conversion must be a JSON object")
    if len(value) > max_bytes:
        raise InvalidInput("oversized", f"record value is {len(value)} bytes; the limit is {max_bytes}")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput("not_utf8", "record value is not UTF-8") from None
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput("not_json", f"record value is not JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise InvalidInput("not_object", f"a conversion must be a JSON object, not {type(data).__name__}")
    check_fast("conversion", data)
    return _conversion_from_valid(key, data, indexed)


def conversion_key(conversion: Mapping[str, Any]) -> str:
    """The record key of a (valid) conversion on the `conversions` topic: its conversion_id, or its
    click_id when it has no campaign_id (it must land on the partition of its click, `clicks` being
    keyed by click_id and partitioned like `conversions`)."""
    return str(conversion["conversion_id"] if conversion.get("campaign_id") else conversion["click_id"])


def _conversion_from_valid(key: bytes | None, data: dict[str, Any], indexed: bool) -> Conversion:
    conversion_id: str = data["conversion_id"]
    expected = conversion_id if indexed else conversion_key(data)
    if key is None or key != expected.encode("utf-8"):
        if data.get("campaign_id") or indexed:
            message, field = (
                "record key must equal conversion_id (the fired-state is partitioned by it)",
                "conversion_id",
            )
        else:
            message, field = "a conversion without campaign_id must be keyed by its click_id", "click_id"
        raise InvalidInput("key_mismatch", message, field=field)
    occurred_at: str = data["occurred_at"]
    try:
        moment = datetime.fromisoformat(occurred_at)
    except ValueError:
        raise InvalidInput("invalid_value", "occurred_at must be an RFC 3339 date-time", field="occurred_at") from None
    if moment.tzinfo is None:
        raise InvalidInput("invalid_value", "occurred_at must carry a time zone (RFC 3339)", field="occurred_at")
    payout_raw = data.get("payout")
    try:
        payout = Decimal(0) if payout_raw is None else parse_decimal(payout_raw)
    except ValueError as exc:
        raise InvalidInput("invalid_value", f"payout {exc}", field="payout") from None
    return Conversion(
        conversion_id=conversion_id,
        click_id=data["click_id"],
        campaign_id=data.get("campaign_id") or "",
        offer_source_id=data.get("offer_source_id") or None,
        type=data.get("type") or DEFAULT_TYPE,
        status=data.get("status"),
        payout=payout,
        currency=data.get("currency") or DEFAULT_CURRENCY,
        transaction_id=data.get("transaction_id") or None,
        occurred_at=occurred_at,
        occurred_at_unix=int(moment.timestamp()),
        click_ids=_present(data.get("click_ids"), CLICK_ID_FIELDS),
        user=_present(data.get("user"), USER_FIELDS),
        subs=dict(data.get("subs") or {}),
        country=(data.get("country") or "").upper() or None,
    )


def _present(section: dict[str, Any] | None, names: tuple[str, ...]) -> dict[str, str]:
    if not section:
        return {}
    return {name: section[name] for name in names if section.get(name)}
