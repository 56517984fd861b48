"""A status update of a conversion taken in through the api (`PATCH /v1/conversions/{id}`). Pure.

The api keeps the non-personal fields of every conversion it took in on the compacted
`conversions.index` topic; an update is that record with the new fields, published again under
the same conversion_id and occurred_at, so the worker sees an update (contract §2.5). Personal data is
never kept, so an updated conversion carries no `user` block. A payout sent as a JSON number is
written as its decimal string, as intake writes it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import orjson

from schemas import load_schema
from schemas.errors import FieldError, InvalidInput
from streams.core.conversion import conversion_key, parse_conversion
from streams.core.decimals import format_decimal, parse_decimal
from streams.core.schema_checks import check_all

STATUSES = ("approved", "pending", "declined", "other")
UPDATABLE = ("status", "type", "payout", "currency")


def conversion_update_schema() -> dict[str, Any]:
    """The JSON Schema of the request body (the same rules as conversion.schema.json for each field)."""
    event = load_schema("conversion")["properties"]
    return {
        "type": "object",
        "required": ["status"],
        "properties": {
            "status": {"enum": list(STATUSES)},
            "type": event["type"],
            "payout": {key: value for key, value in event["payout"].items() if key != "description"},
            "currency": event["currency"],
        },
        "additionalProperties": False,
    }


def index_entry(event: Mapping[str, Any]) -> dict[str, Any]:
    """What `conversions.index` keeps of a conversion: everything but personal data."""
    return {name: value for name, value in event.items() if name != "user"}


def updated_conversion(indexed: Mapping[str, Any], body: Any, max_bytes: int) -> dict[str, Any]:
    """The conversion `indexed` with the update `body` applied; raises InvalidInput naming each bad field.

    A null `type`, `payout` or `currency` removes the field, so the conversion gets its default.
    """
    if not isinstance(body, dict):
        raise _invalid([FieldError("(body)", "must be a JSON object")])
    errors: list[FieldError] = []
    unknown = sorted(set(body) - set(UPDATABLE))
    if unknown:
        errors.append(FieldError("(body)", f"only {', '.join(UPDATABLE)} can be updated"))
    if body.get("status") not in STATUSES:
        errors.append(FieldError("status", "is required, one of " + ", ".join(STATUSES)))
    event = index_entry(indexed)
    for name in UPDATABLE:
        if name in body:
            if body[name] is None:
                event.pop(name, None)
            else:
                event[name] = body[name]
    event = _payout_as_text(event)
    errors += [e for e in check_all("conversion", event) if e.field != "status"]
    if errors:
        raise _invalid(errors)
    # The worker's own check, so that what is published here is never refused downstream.
    try:
        parse_conversion(conversion_key(event).encode("utf-8"), orjson.dumps(event), max_bytes)
    except InvalidInput as error:
        raise _invalid(error.errors or [FieldError(error.field or "(body)", error.message)]) from None
    return event


def _payout_as_text(event: dict[str, Any]) -> dict[str, Any]:
    """A payout given as a JSON number (the update's, or an older index entry's) as a decimal string:
    12.5 -> "12.5", 20 -> "20", 1e2 -> "100". The string then has to fit the conversion schema's
    decimal pattern (18 digits before the point, 12 after); a negative one is left to be refused."""
    payout = event.get("payout")
    if isinstance(payout, int | float) and not isinstance(payout, bool):
        with contextlib.suppress(ValueError):
            return {**event, "payout": format_decimal(parse_decimal(payout))}
    return event


def _invalid(errors: list[FieldError]) -> InvalidInput:
    summary = "; ".join(f"{e.field}: {e.message}" for e in errors[:5])
    return InvalidInput("invalid_value", summary, field=errors[0].field, errors=errors)
