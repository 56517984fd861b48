"""Conversion intake, the way affiliate networks call a tracker: postback fields -> a conversion event.

Pure: no I/O. Networks fill a postback URL's macros and call it (`?clickid=...&status=...&sum=...`);
every field arrives as text, an unfilled macro often as an empty value, and extra macros nobody
asked for are common. So: an empty value counts as absent, unknown fields are ignored, and each
documented field is checked against its own rule (`PARAMETERS`, also the OpenAPI description), so
an error names the field the caller sent (`clickid`, `sum`), not the event field it becomes.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

from streams.conversion import CLICK_ID_FIELDS, DEFAULT_TYPE, parse_conversion
from streams.errors import FieldError, InvalidInput

STATUSES = ("approved", "pending", "declined", "other")
REQUIRED = ("clickid", "campaign_id")
SUB_FIELDS = tuple(f"sub{n}" for n in range(1, 21))
# The decimal strings conversion.schema.json accepts, or nothing (an unfilled payout macro)
_DECIMAL_OR_EMPTY = r"^([0-9]{1,18}(\.[0-9]{1,12})?)?$"


def _text(max_length: int, min_length: int = 0) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string", "maxLength": max_length}
    if min_length:
        schema["minLength"] = min_length
    return schema


# Every field intake reads, with the JSON Schema of its value (lengths as in conversion.schema.json).
PARAMETERS: dict[str, dict[str, Any]] = {
    "clickid": _text(512, 1),
    "campaign_id": _text(256, 1),
    "conversion_id": _text(256),
    "offer_source_id": _text(256),
    "type": _text(128),
    "status": {"type": "string", "enum": ["", *STATUSES]},
    "payout": {"type": "string", "pattern": _DECIMAL_OR_EMPTY},
    "sum": {"type": "string", "pattern": _DECIMAL_OR_EMPTY},
    "currency": {"type": "string", "pattern": "^([A-Z]{3})?$"},
    "txid": _text(512),
    **{name: _text(512) for name in CLICK_ID_FIELDS},
    **{name: _text(1024) for name in SUB_FIELDS},
}

# A fixed namespace: the same (campaign, click, type, txid) yields the same id on every replica, forever.
CONVERSION_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://postback-router.dev/conversion-id")


def derive_conversion_id(campaign_id: str, click_id: str, type_: str, transaction_id: str | None) -> str:
    """The conversion_id of a postback that names none.

    A repeated postback for the same click, type and transaction (a status change, a re-sent call)
    is then an update of the same conversion (SPEC 2.5), while a second type for the same click
    (lead, then deposit) or another transaction (a second deposit) is a conversion of its own.
    """
    # \x1f (unit separator) cannot be confused with text inside a field, unlike a printable separator
    name = "\x1f".join((campaign_id, click_id, type_, transaction_id or ""))
    return str(uuid.uuid5(CONVERSION_ID_NAMESPACE, name))


def conversion_from_postback(fields: Mapping[str, str], received_at: datetime, max_bytes: int) -> dict[str, Any]:
    """The conversion event for a postback's fields; raises InvalidInput naming every failing field.

    `occurred_at` is `received_at` (networks do not send the time of the conversion in a usable
    form). `payout` wins over `sum` when both are given; both are checked.
    """
    errors = parameter_errors(fields)
    if errors:
        raise _invalid(errors)

    def get(name: str) -> str | None:
        return fields.get(name) or None

    click_id = get("clickid") or ""
    campaign_id = get("campaign_id") or ""
    type_ = get("type") or DEFAULT_TYPE
    transaction_id = get("txid")
    event: dict[str, Any] = {
        "conversion_id": get("conversion_id") or derive_conversion_id(campaign_id, click_id, type_, transaction_id),
        "click_id": click_id,
        "campaign_id": campaign_id,
        "offer_source_id": get("offer_source_id"),
        "type": type_,
        "status": get("status"),
        "payout": get("payout") or get("sum"),
        "currency": get("currency"),
        "transaction_id": transaction_id,
        "occurred_at": received_at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "click_ids": {name: fields[name] for name in CLICK_ID_FIELDS if fields.get(name)},
        "subs": {name: fields[name] for name in SUB_FIELDS if fields.get(name)},
    }
    event = {name: value for name, value in event.items() if value not in (None, {})}
    # The worker's own check, so that what is accepted here is never refused downstream.
    try:
        parse_conversion(event["conversion_id"].encode("utf-8"), orjson.dumps(event), max_bytes)
    except InvalidInput as error:
        raise _invalid([FieldError(parameter_name(e.field), e.message) for e in _field_errors(error)]) from None
    return event


def parameter_errors(fields: Mapping[str, str]) -> list[FieldError]:
    """Every documented field whose value breaks its rule, and every required field that is missing."""
    errors = [FieldError(name, "is required") for name in REQUIRED if not fields.get(name)]
    for name, schema in PARAMETERS.items():
        value = fields.get(name)
        if not value:
            continue
        if len(value) > schema.get("maxLength", len(value)):
            errors.append(FieldError(name, f"must be at most {schema['maxLength']} characters"))
        elif "enum" in schema and value not in schema["enum"]:
            errors.append(FieldError(name, "must be one of " + ", ".join(v for v in schema["enum"] if v)))
        elif "pattern" in schema and not re.fullmatch(schema["pattern"], value):  # "$" alone allows a final \n
            errors.append(FieldError(name, _PATTERN_MESSAGES[name]))
    return errors


_PATTERN_MESSAGES = {
    "payout": "must be a decimal number such as 12.50 (at most 18 digits before the point and 12 after)",
    "sum": "must be a decimal number such as 12.50 (at most 18 digits before the point and 12 after)",
    "currency": "must be an ISO 4217 code in capitals, such as USD",
}

_EVENT_TO_PARAMETER = {"click_id": "clickid", "transaction_id": "txid"}


def parameter_name(event_field: str | None) -> str:
    """The intake field an event field came from: click_id -> clickid, click_ids.gclid -> gclid."""
    if event_field is None:
        return "(request)"
    head, _, tail = event_field.partition(".")
    if head in ("click_ids", "subs") and tail:
        return tail
    return _EVENT_TO_PARAMETER.get(event_field, event_field)


def _field_errors(error: InvalidInput) -> list[FieldError]:
    return error.errors or [FieldError(error.field or "(request)", error.message)]


def _invalid(errors: list[FieldError]) -> InvalidInput:
    summary = "; ".join(f"{e.field}: {e.message}" for e in errors[:5])
    return InvalidInput("invalid_value", summary, field=errors[0].field, errors=errors)
