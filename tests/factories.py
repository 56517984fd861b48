"""Test data: valid messages with overridable fields, and in-memory stand-ins for the matcher's I/O."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import EllipsisType
from typing import Any

import jsonschema
import orjson

from dispatchers.core.outcome import Outcome
from schemas import load_schema
from streams.core.batch import ConversionBatchProcessor, MatcherConfig, SourceRecord
from streams.core.fired_record import FiredRecord
from streams.core.offer_sources import OfferSource
from streams.core.rules import CampaignRules, compile_campaign_rules, validate_campaign_rules

# Every timestamp that meets an age rule (Meta refuses events older than 7 days, Microsoft older than
# 90, the fired-state forgets after its retention) is derived from the clock when the tests start, never
# written as a date: a fixed date passes today and fails weeks later. `make test` also runs the
# time-dependent tests as if it were 60 days later (tests/clock_shift) to catch the next one at once.
_STARTED = datetime.now(UTC).replace(microsecond=0)
OCCURRED_AT_DATETIME = _STARTED - timedelta(hours=1)
OCCURRED_AT = OCCURRED_AT_DATETIME.strftime("%Y-%m-%dT%H:%M:%SZ")
OCCURRED_AT_UNIX = int(OCCURRED_AT_DATETIME.timestamp())
MATCHED_AT = OCCURRED_AT_DATETIME + timedelta(seconds=5)
KINDS = ("s2s", "google_ads", "meta", "tiktok", "microsoft_ads")
POSTBACK_TOPICS = {kind: f"postbacks.{kind}" for kind in KINDS}


def conversion(conversion_id: str = "cv-1", campaign_id: str = "camp-1", **fields: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "conversion_id": conversion_id,
        "click_id": f"click-{conversion_id}",
        "campaign_id": campaign_id,
        "type": "deposit",
        "status": "approved",
        "payout": "10.00",
        "currency": "USD",
        "occurred_at": OCCURRED_AT,
    }
    event.update(fields)
    return {k: v for k, v in event.items() if v is not ...}


def s2s_entry(entry_id: str = "src", **fields: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": entry_id,
        "kind": "s2s",
        "url": "https://tracker.example/postback?cid={clickid}&status={status}&payout={payout}&type={type}",
    }
    entry.update(fields)
    return entry


def meta_entry(entry_id: str = "fb", **fields: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": entry_id,
        "kind": "meta",
        "pixel_id": "1234567890",
        "credentials": "META_MAIN",
        "event_names": {"deposit": "Purchase", "lead": "Lead"},
    }
    entry.update(fields)
    return entry


def google_entry(entry_id: str = "gads", **fields: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": entry_id,
        "kind": "google_ads",
        "customer_id": "123-456-7890",
        "conversion_action": "customers/1234567890/conversionActions/42",
        "credentials": "GADS_MAIN",
    }
    entry.update(fields)
    return entry


def tiktok_entry(entry_id: str = "tt", **fields: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": entry_id,
        "kind": "tiktok",
        "pixel_code": "CABC123",
        "credentials": "TIKTOK_MAIN",
        "event_names": {"deposit": "CompletePayment"},
    }
    entry.update(fields)
    return entry


def microsoft_entry(entry_id: str = "msads", **fields: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": entry_id,
        "kind": "microsoft_ads",
        "customer_id": "1111111",
        "account_id": "2222222",
        "conversion_name": "Deposit",
        "credentials": "MSADS_MAIN",
    }
    entry.update(fields)
    return entry


def conditional(**conditions: Any) -> dict[str, Any]:
    return {"enabled": True, **conditions}


def campaign(campaign_id: str = "camp-1", *entries: dict[str, Any]) -> dict[str, Any]:
    return {"campaign_id": campaign_id, "postbacks": list(entries)}


def compiled(campaign_id: str = "camp-1", *entries: dict[str, Any]) -> CampaignRules:
    """Compiled rules of a campaign; fails the test at once when the document is not valid."""
    document = campaign(campaign_id, *entries)
    errors = validate_campaign_rules(document)
    assert errors == [], errors
    return compile_campaign_rules(document)


def source_record(
    value: dict[str, Any] | bytes | None,
    key: bytes | str | EllipsisType | None = ...,
    *,
    topic: str = "conversions",
    partition: int = 0,
    offset: int = 0,
    timestamp_ms: int | None = (OCCURRED_AT_UNIX + 1) * 1000,
) -> SourceRecord:
    """A `conversions` record; the key (`...`: not given) is the value's conversion_id, as producers send it."""
    raw = orjson.dumps(value) if isinstance(value, dict) else value
    if key is ...:
        key = value.get("conversion_id") if isinstance(value, dict) else None
    raw_key = key.encode("utf-8") if isinstance(key, str) else key
    return SourceRecord(topic, partition, offset, timestamp_ms, raw_key, raw)


def source_records(values: Iterable[dict[str, Any] | bytes | None], partition: int = 0) -> list[SourceRecord]:
    return [source_record(value, partition=partition, offset=offset) for offset, value in enumerate(values)]


class InMemoryFiredState:
    """The fired-state table as a dict; `apply` writes a batch's updates as the worker does after the acks."""

    def __init__(self) -> None:
        self.records: dict[str, FiredRecord] = {}
        self.reads: list[tuple[str, int]] = []

    def get(self, conversion_id: str, partition: int) -> FiredRecord | None:
        self.reads.append((conversion_id, partition))
        return self.records.get(conversion_id)

    def apply(self, updates: dict[str, FiredRecord]) -> None:
        self.records.update(updates)


def matcher_config(
    *,
    default_status: str = "approved",
    evaluations: bool = True,
    max_conversion_bytes: int = 65_536,
    default_phone_region: str | None = None,
) -> MatcherConfig:
    return MatcherConfig(
        postback_topics=dict(POSTBACK_TOPICS),
        invalid_topic="conversions.invalid",
        evaluations_topic="conversions.evaluated" if evaluations else None,
        default_status=default_status,
        max_conversion_bytes=max_conversion_bytes,
        fired_retention_seconds=90 * 86_400,
        default_phone_region=default_phone_region,
    )


def processor(
    *rules: CampaignRules,
    offer_sources: dict[str, str | OfferSource] | None = None,
    fired_state: InMemoryFiredState | None = None,
    config: MatcherConfig | None = None,
    rules_for: Callable[[str], CampaignRules | None] | None = None,
) -> ConversionBatchProcessor:
    """A matcher over in-memory tables: campaign rules, offer sources (an id -> its default status, or
    an OfferSource), fired-state."""
    by_campaign = {r.campaign_id: r for r in rules}
    sources = {
        source_id: OfferSource(source_id, source) if isinstance(source, str) else source
        for source_id, source in (offer_sources or {}).items()
    }
    return ConversionBatchProcessor(
        config or matcher_config(),
        rules_for or by_campaign.get,
        sources.get,
        fired_state if fired_state is not None else InMemoryFiredState(),
        clock=lambda: MATCHED_AT,
    )


# RFC 3339 date-time (section 5.6): jsonschema checks "date-time" only with the optional
# rfc3339-validator package installed, so the tests bring their own check.
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


def _is_rfc3339(value: object) -> bool:
    if not isinstance(value, str):
        return True
    if not _RFC3339.match(value):
        return False
    try:
        datetime.fromisoformat(value.upper())
    except ValueError:
        return False
    return True


@functools.cache
def schema_validator(name: str) -> jsonschema.protocols.Validator:
    """A Draft 2020-12 validator for `schemas/<name>.schema.json` that checks formats, date-time included."""
    schema = load_schema(name)
    validator_class = jsonschema.Draft202012Validator
    validator_class.check_schema(schema)
    format_checker = jsonschema.FormatChecker()
    format_checker.checks("date-time")(_is_rfc3339)
    return validator_class(schema, format_checker=format_checker)


def schema_errors(name: str, message: Any) -> list[str]:
    """Every violation of the named schema by `message`, as readable lines (empty: valid)."""
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in schema_validator(name).iter_errors(message)]


@dataclass(frozen=True)
class Final:
    """What the schedulers report (dispatchers/engine FinalOutcome): the fields the delivery builders read."""

    postback: dict[str, Any]
    result: str
    attempts: int
    last_outcome: Outcome
    latency_seconds: float
    first_attempt_at: datetime
    finished_at: datetime
