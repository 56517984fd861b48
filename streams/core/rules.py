"""Campaign rules: validated when published, compiled once into what the matcher needs.

Validation is the schema (`schemas/campaign-rules.schema.json`) plus what a schema cannot say:
unique entry ids, a conditional entry must set a condition (contract §2.4), URL templates with known
macros only (contract §3), fields that belong to the entry's kind.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson

from schemas.errors import FieldError, InvalidInput, InvalidReason
from streams.core.decimals import HUNDRED, parse_decimal
from streams.core.schema_checks import check_all
from streams.core.url_template import TemplateError, UrlTemplate, compile_url_template

STATUSES = ("approved", "pending", "declined", "other")
MAX_RULES_BYTES = 1_048_576

_COMMON_FIELDS = frozenset({"id", "kind", "enabled", "conditional", "payout_percent"})
_KIND_FIELDS: dict[str, frozenset[str]] = {
    "s2s": frozenset({"url", "method", "status_names", "type_names", "success_status_codes", "success_body_pattern"}),
    "google_ads": frozenset({"customer_id", "login_customer_id", "conversion_action", "credentials"}),
    "meta": frozenset({"pixel_id", "credentials", "event_names", "action_source", "test_event_code"}),
    "tiktok": frozenset({"pixel_code", "credentials", "event_names", "test_event_code"}),
    "microsoft_ads": frozenset({"customer_id", "account_id", "conversion_name", "credentials"}),
}


@dataclass(frozen=True, slots=True)
class Condition:
    """The conditions of an enabled `conditional`; None means "not set" for each (contract §2.4)."""

    types: frozenset[str] | None
    statuses: frozenset[str] | None
    min_payout: Decimal | None


@dataclass(frozen=True, slots=True)
class PostbackEntry:
    id: str
    kind: str
    enabled: bool
    condition: Condition | None  # None: the entry fires for every conversion (contract §2.3)
    payout_percent: Decimal
    destination_id: str
    url_template: UrlTemplate | None
    method: str | None
    status_names: Mapping[str, str]
    type_names: Mapping[str, str]
    spec: Mapping[str, Any]  # the entry as published; rules carry secret names, never secrets


@dataclass(frozen=True, slots=True)
class CampaignRules:
    campaign_id: str
    entries: tuple[PostbackEntry, ...]


def parse_campaign_rules(key: bytes | None, value: bytes) -> CampaignRules:
    """Decode, validate and compile one `campaign-rules` record; raises InvalidInput("invalid_rule")."""
    if len(value) > MAX_RULES_BYTES:
        raise InvalidInput("oversized", f"rules are {len(value)} bytes; the limit is {MAX_RULES_BYTES}")
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        reason: InvalidReason = "not_utf8" if "utf-8" in exc.msg.lower() else "not_json"
        raise InvalidInput(reason, f"rules are not JSON ({exc.msg})") from None
    errors = validate_campaign_rules(data)
    if not errors and key is not None and key != data["campaign_id"].encode("utf-8"):
        errors = [FieldError("campaign_id", "must equal the record key")]
    if errors:
        summary = "; ".join(f"{e.field}: {e.message}" for e in errors[:5])
        raise InvalidInput("invalid_rule", summary, field=errors[0].field, errors=errors)
    return compile_campaign_rules(data)


def validate_campaign_rules(data: Any) -> list[FieldError]:
    """Every problem with a campaign-rules document, each naming its field (empty: valid)."""
    if not isinstance(data, dict):
        return [FieldError("(record)", "campaign rules must be a JSON object")]
    errors = check_all("campaign-rules", data)
    if errors:
        return errors
    seen: set[str] = set()
    for index, entry in enumerate(data["postbacks"]):
        where = f"postbacks.{index}"
        if entry["id"] in seen:
            errors.append(FieldError(f"{where}.id", "repeats an id used earlier in this campaign"))
        seen.add(entry["id"])
        errors.extend(_entry_errors(where, entry))
    return errors


def _entry_errors(where: str, entry: dict[str, Any]) -> list[FieldError]:
    errors: list[FieldError] = []
    kind = entry["kind"]
    foreign = sorted(set(entry) - _COMMON_FIELDS - _KIND_FIELDS[kind])
    if foreign:
        errors.append(FieldError(where, f"fields {', '.join(foreign)} do not apply to kind {kind}"))
    conditional = entry.get("conditional") or {}
    if conditional.get("enabled") and not any(
        conditional.get(name) is not None for name in ("types", "statuses", "min_payout")
    ):
        errors.append(
            FieldError(f"{where}.conditional", "is enabled but sets no condition (types, statuses or min_payout)")
        )
    if kind == "s2s":
        try:
            compile_url_template(entry["url"])
        except TemplateError as exc:
            errors.append(FieldError(f"{where}.url", str(exc)))
        pattern = entry.get("success_body_pattern")
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as exc:
                errors.append(FieldError(f"{where}.success_body_pattern", f"is not a regular expression ({exc})"))
    percent = entry.get("payout_percent")
    if percent is not None and parse_decimal(percent) > 1000:
        errors.append(FieldError(f"{where}.payout_percent", "must be at most 1000"))
    return errors


def compile_campaign_rules(data: dict[str, Any]) -> CampaignRules:
    """Compile a document that validate_campaign_rules accepted."""
    return CampaignRules(
        campaign_id=data["campaign_id"],
        entries=tuple(_compile_entry(entry) for entry in data["postbacks"]),
    )


def _compile_entry(entry: dict[str, Any]) -> PostbackEntry:
    conditional = entry.get("conditional") or {}
    condition: Condition | None = None
    if conditional.get("enabled"):
        types = conditional.get("types")
        statuses = conditional.get("statuses")
        min_payout = conditional.get("min_payout")
        condition = Condition(
            types=frozenset(types) if types else None,
            statuses=frozenset(statuses) if statuses else None,
            min_payout=None if min_payout is None else parse_decimal(min_payout),
        )
    percent = entry.get("payout_percent")
    template = compile_url_template(entry["url"]) if entry["kind"] == "s2s" else None
    return PostbackEntry(
        id=entry["id"],
        kind=entry["kind"],
        enabled=entry.get("enabled", True),
        condition=condition,
        payout_percent=HUNDRED if percent is None else parse_decimal(percent),
        destination_id=destination_id(entry, template),
        url_template=template,
        method=entry.get("method", "GET") if entry["kind"] == "s2s" else None,
        status_names=entry.get("status_names") or {},
        type_names=entry.get("type_names") or {},
        spec=entry,
    )


def destination_id(entry: Mapping[str, Any], template: UrlTemplate | None) -> str:
    """The physical destination an entry delivers to: what dispatchers isolate and batch by."""
    kind = entry["kind"]
    if kind == "s2s":
        assert template is not None
        return f"s2s:{template.host}"
    if kind == "google_ads":
        return "google_ads:" + str(entry["customer_id"]).replace("-", "")
    if kind == "meta":
        return f"meta:{entry['pixel_id']}"
    if kind == "tiktok":
        return f"tiktok:{entry['pixel_code']}"
    return f"microsoft_ads:{entry['account_id']}"
