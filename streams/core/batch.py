"""The matcher as a batch function: raw `conversions` records in, messages and state updates out.

No Kafka here: the worker (streams/worker.py) hands over a batch, produces the
returned messages, awaits their acks once for the whole batch, and only then writes the returned
fired-state, so a crash can repeat a postback (same postback_id, deduped by the dispatchers) but
never lose one.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson

from schemas.errors import InvalidInput
from streams.core.conversion import Conversion, parse_conversion
from streams.core.fired_record import FiredRecord
from streams.core.invalid_records import invalid_record, redact_key
from streams.core.matching import Fired, effective_status, evaluate_entries
from streams.core.messages import evaluation_record, matched_postback
from streams.core.offer_sources import OfferSource
from streams.core.pii import hashed_user_identifiers, phone_region
from streams.core.rules import CampaignRules

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SourceRecord:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None
    key: bytes | None
    value: bytes | None

    def position(self) -> dict[str, Any]:
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset}


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    topic: str
    key: bytes | None
    value: bytes | None  # None: a tombstone


@dataclass(frozen=True, slots=True)
class MatcherConfig:
    postback_topics: dict[str, str]  # kind -> topic
    invalid_topic: str
    evaluations_topic: str | None  # None: no evaluation records
    default_status: str
    max_conversion_bytes: int
    fired_retention_seconds: int
    default_phone_region: str | None = None  # DEFAULT_PHONE_REGION: the last resort for national phone numbers


class FiredStateReader(Protocol):
    def get(self, conversion_id: str, partition: int) -> FiredRecord | None: ...


@dataclass(slots=True)
class BatchResult:
    messages: list[OutgoingMessage] = field(default_factory=list)
    fired_updates: dict[str, FiredRecord] = field(default_factory=dict)
    consumed: int = 0
    invalid: Counter[str] = field(default_factory=Counter)
    matched: Counter[str] = field(default_factory=Counter)  # by kind
    filtered: Counter[str] = field(default_factory=Counter)  # by reason, no_rules included
    pii_unusable: Counter[tuple[str, str]] = field(default_factory=Counter)  # (field, reason): left out, not hashed


def utc_rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _kafka_time(timestamp_ms: int | None) -> str | None:
    if timestamp_ms is None or timestamp_ms < 0:
        return None
    return utc_rfc3339(datetime.fromtimestamp(timestamp_ms / 1000, UTC))


class ConversionBatchProcessor:
    def __init__(
        self,
        config: MatcherConfig,
        rules_for: Callable[[str], CampaignRules | None],
        offer_source_for: Callable[[str], OfferSource | None],
        fired_state: FiredStateReader,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._config = config
        self._rules_for = rules_for
        self._offer_source_for = offer_source_for
        self._fired_state = fired_state
        self._clock = clock

    def process(self, records: list[SourceRecord]) -> BatchResult:
        result = BatchResult()
        now = self._clock()
        stamp = utc_rfc3339(now)
        for record in records:
            result.consumed += 1
            try:
                conversion = parse_conversion(record.key, record.value, self._config.max_conversion_bytes)
            except InvalidInput as error:
                self._reject(result, record, error, stamp)
                continue
            mark = len(result.messages)
            # An earlier record of this batch may have fired for the same conversion: its messages
            # stay, so its fired-state update must stay too.
            fired_before = result.fired_updates.get(conversion.conversion_id)
            try:
                self._match(result, record, conversion, int(now.timestamp()), stamp)
            except Exception:
                # A bug must neither stop the stream nor lose the record: it is kept for replay.
                log.exception("matching failed", extra={"source": record.position()})
                del result.messages[mark:]
                if fired_before is None:
                    result.fired_updates.pop(conversion.conversion_id, None)
                else:
                    result.fired_updates[conversion.conversion_id] = fired_before
                failure = InvalidInput("processing_error", "the worker failed to match this conversion; see its log")
                self._reject(result, record, failure, stamp)
        return result

    def _reject(self, result: BatchResult, record: SourceRecord, error: InvalidInput, stamp: str) -> None:
        result.invalid[error.reason] += 1
        # DEBUG: the worker writes the one WARNING line per refused conversion once it is kept (README)
        log.debug(
            "invalid conversion",
            extra={"reason": error.reason, "error": error.message, "source": record.position()},
        )
        body = invalid_record(error, record.key, record.value, record.position(), stamp)
        key, _ = redact_key(record.key)
        result.messages.append(OutgoingMessage(self._config.invalid_topic, key, orjson.dumps(body)))

    def _already_fired(self, result: BatchResult, conversion_id: str, partition: int, now: int) -> FiredRecord | None:
        # The batch's own updates come first: a re-delivery may sit in the same batch.
        pending = result.fired_updates.get(conversion_id)
        if pending is not None:
            return pending
        stored = self._fired_state.get(conversion_id, partition)
        if stored is None or stored.is_expired(now, self._config.fired_retention_seconds):
            return None
        return stored

    def _match(self, result: BatchResult, record: SourceRecord, conversion: Conversion, now: int, stamp: str) -> None:
        config = self._config
        offer_source = self._offer_source_for(conversion.offer_source_id) if conversion.offer_source_id else None
        offer_default = offer_source.default_status if offer_source else None
        status, status_source = effective_status(conversion.status, offer_default, config.default_status)
        rules = self._rules_for(conversion.campaign_id)
        source = record.position()
        fired_messages: dict[str, dict[str, Any]] = {}
        decisions = None
        if rules is None:
            result.filtered["no_rules"] += 1
        else:
            previous = self._already_fired(result, conversion.conversion_id, record.partition, now)
            decisions = evaluate_entries(
                rules,
                conversion.conversion_id,
                conversion.type,
                status,
                conversion.payout,
                previous.postback_ids if previous else frozenset(),
            )
            fired = [d for d in decisions if isinstance(d, Fired)]
            for decision in decisions:
                if not isinstance(decision, Fired):
                    result.filtered[decision.reason] += 1
            if fired:
                region = phone_region(
                    conversion.country,
                    offer_source.default_region if offer_source else None,
                    config.default_phone_region,
                )
                hashed_user = hashed_user_identifiers(conversion.user, region)
                received_at = _kafka_time(record.timestamp_ms)
                key = conversion.conversion_id.encode("utf-8")
                for decision in fired:
                    message = matched_postback(
                        conversion, decision, status, status_source, hashed_user.identifiers, source, received_at, stamp
                    )
                    fired_messages[decision.postback_id] = message
                    topic = config.postback_topics[decision.entry.kind]
                    result.messages.append(OutgoingMessage(topic, key, orjson.dumps(message)))
                    result.matched[decision.entry.kind] += 1
                for name, reason in hashed_user.unusable.items():  # once per conversion, not per postback
                    result.pii_unusable[(name, reason)] += 1
                ids = frozenset(fired_messages)
                if previous is not None:
                    ids |= previous.postback_ids
                result.fired_updates[conversion.conversion_id] = FiredRecord(now, record.partition, ids)
        if config.evaluations_topic is not None:
            evaluation = evaluation_record(
                conversion, status, status_source, decisions, config.postback_topics, source, stamp
            )
            result.messages.append(
                OutgoingMessage(
                    config.evaluations_topic, conversion.conversion_id.encode("utf-8"), orjson.dumps(evaluation)
                )
            )
