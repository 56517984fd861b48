"""Offer sources: the default status of conversions that arrive without one (contract §2.2), the
default region their phone numbers are read in when a conversion has no `country`, and the status
map intake reads their network's statuses with (the worker does not use it)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import orjson

from schemas.errors import FieldError, InvalidInput, InvalidReason
from schemas.status_maps import folded, status_map_errors
from streams.core.pii import is_known_region
from streams.core.schema_checks import check_all

MAX_OFFER_SOURCE_BYTES = 65_536


@dataclass(frozen=True, slots=True)
class OfferSource:
    offer_source_id: str
    default_status: str
    default_region: str | None = None  # ISO 3166-1 alpha-2, upper-cased
    # status text (folded, schemas/status_maps.py) -> status: how intake reads this network's statuses
    status_map: Mapping[str, str] = field(default_factory=dict)


def parse_offer_source(key: bytes | None, value: bytes) -> OfferSource:
    if len(value) > MAX_OFFER_SOURCE_BYTES:
        raise InvalidInput("oversized", f"offer source is {len(value)} bytes; the limit is {MAX_OFFER_SOURCE_BYTES}")
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        reason: InvalidReason = "not_utf8" if "utf-8" in exc.msg.lower() else "not_json"
        raise InvalidInput(reason, f"offer source is not JSON ({exc.msg})") from None
    errors = (
        check_all("offer-source", data)
        if isinstance(data, dict)
        else [FieldError("(record)", "an offer source must be a JSON object")]
    )
    if not errors and key is not None and key != data["offer_source_id"].encode("utf-8"):
        errors = [FieldError("offer_source_id", "must equal the record key")]
    region = data.get("default_region") if not errors else None
    if region and not is_known_region(region):
        # `UK` for GB, say: refused here, where the operator who published it reads the answer
        errors = [FieldError("default_region", "must be an ISO 3166-1 alpha-2 country code, such as GB")]
    if not errors and "status_map" in data:
        # what the schema cannot say: keys equal but for case agree, canonical statuses map to themselves
        errors = status_map_errors(data["status_map"], "status_map")
    if errors:
        summary = "; ".join(f"{e.field}: {e.message}" for e in errors)
        raise InvalidInput("invalid_rule", summary, field=errors[0].field, errors=errors)
    return OfferSource(
        data["offer_source_id"],
        data["default_status"],
        region.upper() if region else None,
        folded(data.get("status_map") or {}),
    )
