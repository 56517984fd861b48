"""Completing conversions that arrive without a campaign from their click, pure.

A network calling a tracker often sends only the click id (`/postback?clickid=...&status=...`): the
click, recorded by the tracker or data platform, knows the campaign. Clicks are on the `clicks`
topic (key: click_id; schemas/click.schema.json), partitioned like `conversions`, and a conversion
without campaign_id is keyed by its click_id (`conversion_key`): both land on the same partition,
so the worker that owns conversions partition p finds the click in its own store of clicks
partition p (streams/click_join.py keeps it). This module decides, per batch:

- a conversion with a campaign goes on as it is;
- one without, whose click is known (and within the attribution window), goes on completed: the
  campaign, offer source, subs and platform click ids of the click, the conversion's own values
  winning; its record key becomes its conversion_id, as the matcher expects;
- one whose click is not known waits (an `AwaitingConversion`, kept in a changelog store, so that
  its offset can be committed: nothing stalls the partition) and is looked for again at every
  batch and every tick, in arrival order, until it is found or CLICK_GRACE_PERIOD has passed:
  then it goes to `conversions.invalid` with reason `unknown_click`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from schemas.errors import InvalidInput
from streams.core.batch import OutgoingMessage, SourceRecord
from streams.core.conversion import CLICK_ID_FIELDS
from streams.core.invalid_records import invalid_record, redact_key
from streams.core.schema_checks import check_fast

MAX_CLICK_BYTES = 65_536


@dataclass(frozen=True, slots=True)
class Click:
    click_id: str
    campaign_id: str
    offer_source_id: str | None
    clicked_at_unix: int
    click_ids: dict[str, str]
    subs: dict[str, str]


def parse_click(key: bytes | None, value: bytes | None) -> Click:
    """A `clicks` record as a Click, or InvalidInput saying why not (the key must be the click_id)."""
    if value is None:
        raise InvalidInput("not_object", "a click must be a JSON object, not a tombstone")
    if len(value) > MAX_CLICK_BYTES:
        raise InvalidInput("oversized", f"click is {len(value)} bytes; the limit is {MAX_CLICK_BYTES}")
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput("not_json", f"click is not JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise InvalidInput("not_object", "a click must be a JSON object")
    check_fast("click", data)
    if key is None or key != data["click_id"].encode("utf-8"):
        raise InvalidInput("key_mismatch", "a click's record key must equal its click_id", field="click_id")
    try:
        moment = datetime.fromisoformat(data["clicked_at"])
    except ValueError:
        raise InvalidInput("invalid_value", "clicked_at must be an RFC 3339 date-time", field="clicked_at") from None
    if moment.tzinfo is None:
        raise InvalidInput("invalid_value", "clicked_at must carry a time zone (RFC 3339)", field="clicked_at")
    click_ids = data.get("click_ids") or {}
    return Click(
        click_id=data["click_id"],
        campaign_id=data["campaign_id"],
        offer_source_id=data.get("offer_source_id") or None,
        clicked_at_unix=int(moment.timestamp()),
        click_ids={name: click_ids[name] for name in CLICK_ID_FIELDS if click_ids.get(name)},
        subs=dict(data.get("subs") or {}),
    )


def click_wanted(value: bytes | None) -> str | None:
    """The click_id of a conversion record that names no campaign, else None (a conversion with a
    campaign, or one the matcher refuses anyway: it says why)."""
    if value is None:
        return None
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict) or data.get("campaign_id"):
        return None
    click_id = data.get("click_id")
    return click_id if isinstance(click_id, str) and click_id else None


def completed_record(record: SourceRecord, click: Click) -> SourceRecord:
    """`record` completed from `click`, keyed by its conversion_id (the matcher's key): what the
    conversion says wins over what the click says; the position stays the record's own."""
    data: dict[str, Any] = orjson.loads(record.value or b"{}")
    data["campaign_id"] = click.campaign_id
    if not data.get("offer_source_id") and click.offer_source_id:
        data["offer_source_id"] = click.offer_source_id
    for section, from_click in (("click_ids", click.click_ids), ("subs", click.subs)):
        own = data.get(section)
        merged = {**from_click, **(own if isinstance(own, dict) else {})}
        if merged:
            data[section] = merged
    conversion_id = data.get("conversion_id")
    key = conversion_id.encode("utf-8") if isinstance(conversion_id, str) else record.key
    return SourceRecord(record.topic, record.partition, record.offset, record.timestamp_ms, key, orjson.dumps(data))


@dataclass(frozen=True, slots=True)
class AwaitingConversion:
    """A conversion record waiting for its click, as kept in the awaiting-click store."""

    record: SourceRecord
    click_id: str
    since_unix: int  # when the worker first saw it: the grace period runs from here

    def store_key(self) -> bytes:
        # Offsets zero-padded: the store lists a partition's keys in order, so arrival order is kept.
        return f"{self.record.offset:020d}".encode()

    def encode(self) -> bytes:
        record = self.record
        return orjson.dumps(
            {
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
                "timestamp_ms": record.timestamp_ms,
                "key": (record.key or b"").decode("utf-8"),
                "value": (record.value or b"").decode("utf-8"),
                "click_id": self.click_id,
                "since": self.since_unix,
            }
        )


def decode_awaiting(raw: bytes) -> AwaitingConversion:
    data = orjson.loads(raw)
    record = SourceRecord(
        data["topic"],
        data["partition"],
        data["offset"],
        data["timestamp_ms"],
        data["key"].encode("utf-8"),
        data["value"].encode("utf-8"),
    )
    return AwaitingConversion(record, data["click_id"], data["since"])


@dataclass(slots=True)
class JoinPlan:
    """What a batch (or a tick) does about clicks: `ready` goes to the matcher, in this order;
    `messages` (the `unknown_click` refusals) are produced with the batch's; `store_changes`
    (partition, key, value or None) go to the awaiting-click changelog once the batch's outputs
    are acknowledged."""

    ready: list[SourceRecord] = field(default_factory=list)
    messages: list[OutgoingMessage] = field(default_factory=list)
    store_changes: list[tuple[int, bytes, bytes | None]] = field(default_factory=list)
    completed: int = 0
    waiting: int = 0
    unknown: int = 0


@dataclass(frozen=True, slots=True)
class JoinConfig:
    invalid_topic: str
    attribution_window_seconds: int
    grace_period_seconds: float


def plan_join(
    config: JoinConfig,
    records: Iterable[SourceRecord],
    awaiting: Iterable[AwaitingConversion],
    click_for: Callable[[str, int], Click | None],
    now_unix: float,
    stamp: str,
) -> JoinPlan:
    """The plan for the conversions `records` of a batch and those `awaiting` their click (a
    partition's in arrival order; they go first: they arrived before the batch). `click_for(click_id,
    partition)` looks a click up in the store of the owned partition."""
    plan = JoinPlan()
    waiting_clicks: set[tuple[int, str]] = set()
    for entry in awaiting:
        record = entry.record
        click = _usable(click_for(entry.click_id, record.partition), config, now_unix)
        if click is not None:
            plan.ready.append(completed_record(record, click))
            plan.store_changes.append((record.partition, entry.store_key(), None))
            plan.completed += 1
        elif now_unix - entry.since_unix >= config.grace_period_seconds:
            plan.messages.append(_unknown_click(config, record, stamp))
            plan.store_changes.append((record.partition, entry.store_key(), None))
            plan.unknown += 1
        else:
            waiting_clicks.add((record.partition, entry.click_id))
            plan.waiting += 1
    for record in records:
        click_id = click_wanted(record.value)
        if click_id is None:
            plan.ready.append(record)
            continue
        click = None if (record.partition, click_id) in waiting_clicks else click_for(click_id, record.partition)
        click = _usable(click, config, now_unix)
        if click is not None:
            plan.ready.append(completed_record(record, click))
            plan.completed += 1
            continue
        # Waits behind the earlier versions of its click's conversions: an update never overtakes them.
        entry = AwaitingConversion(record, click_id, int(now_unix))
        plan.store_changes.append((record.partition, entry.store_key(), entry.encode()))
        waiting_clicks.add((record.partition, click_id))
        plan.waiting += 1
    return plan


def _usable(click: Click | None, config: JoinConfig, now_unix: float) -> Click | None:
    if click is None or now_unix - click.clicked_at_unix > config.attribution_window_seconds:
        return None
    return click


def _unknown_click(config: JoinConfig, record: SourceRecord, stamp: str) -> OutgoingMessage:
    error = InvalidInput(
        "unknown_click",
        f"no click with this click_id on the clicks topic within the grace period ({config.grace_period_seconds:g}s) "
        "and the attribution window; publish the click, or send the conversion with its campaign_id",
        field="click_id",
    )
    body = invalid_record(error, record.key, record.value, record.position(), stamp)
    key, _ = redact_key(record.key)
    return OutgoingMessage(config.invalid_topic, key, orjson.dumps(body))
