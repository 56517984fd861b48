"""The records a dispatcher writes, pure: `postbacks.results`, `postbacks.dead-letter` (also for a
consumed record that is no postback of its topic), the delivery states (`pending` written back,
`decided` with the records that report it, `final`), and the bounded versions of them written when
Kafka refuses a record as too large (`shrink_delivery_state`, `bounded_result`, `bounded_dead_letter`).

The dispatcher (dispatchers/dispatcher.py) decodes each consumed record with `decode_postback` and
writes what these build; the schedulers' FinalOutcome and PendingPostback (dispatchers/engine/)
fit the protocols below.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Protocol

import orjson

from dispatchers.core.delivery_state import (
    FIRST_CYCLE,
    DeliveryState,
    EmitRecord,
    ReplayCycle,
    decode_delivery_state,
    encode_delivery_state,
)
from dispatchers.core.outcome import Outcome, Verdict
from schemas.redaction import keep_copy, keep_key, scrub

SCHEMA_VERSION = 1
# The fields every matched postback has as strings (schemas/matched-postback.schema.json); S2S ones also these.
POSTBACK_STRING_FIELDS = ("postback_id", "destination_id", "kind", "conversion_id", "campaign_id", "entry_id")
S2S_STRING_FIELDS = ("url", "method")


class Finished(Protocol):
    """How one postback ended (dispatchers/engine/scheduler_core.FinalOutcome)."""

    @property
    def postback(self) -> dict[str, Any]: ...
    @property
    def result(self) -> str: ...
    @property
    def attempts(self) -> int: ...
    @property
    def last_outcome(self) -> Outcome: ...
    @property
    def latency_seconds(self) -> float: ...
    @property
    def first_attempt_at(self) -> datetime: ...
    @property
    def finished_at(self) -> datetime: ...


class Unfinished(Protocol):
    """A postback not final yet (dispatchers/engine/scheduler_core.PendingPostback)."""

    @property
    def postback(self) -> dict[str, Any]: ...
    @property
    def attempts(self) -> int: ...
    @property
    def first_attempt_at(self) -> datetime | None: ...


def utc_iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def result_record(final: Finished, replay: int = 0) -> dict[str, Any]:
    """The `postbacks.results` message (schemas/delivery-result.schema.json); `replay`: the number of the
    delivery cycle it ends (absent for the first one)."""
    postback = final.postback
    outcome = final.last_outcome
    record: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "postback_id": postback["postback_id"],
        "kind": postback["kind"],
        "destination_id": postback["destination_id"],
        "conversion_id": postback["conversion_id"],
        "campaign_id": postback["campaign_id"],
        "entry_id": postback["entry_id"],
        "result": final.result,
        "attempts": final.attempts,
        "last_http_status": outcome.http_status,
        "last_reason": outcome.reason,
        # A destination's answer may echo the request (its URL with a `token=`) or a person's data.
        "last_detail": scrub(outcome.detail),
        "latency_seconds": round(max(final.latency_seconds, 0.0), 6),
        "first_attempt_at": utc_iso(final.first_attempt_at),
        "finished_at": utc_iso(final.finished_at),
    }
    if replay:
        record["replay"] = replay
    return record


def dead_letter_record(final: Finished, replay: int = 0) -> dict[str, Any]:
    """The `postbacks.dead-letter` message (schemas/dead-letter.schema.json), marked like its results record."""
    outcome = final.last_outcome
    record: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "postback_id": final.postback["postback_id"],
        "result": final.result,
        "reason": outcome.reason,
        "detail": scrub(outcome.detail),
        "last_http_status": outcome.http_status,
        "attempts": final.attempts,
        "dead_lettered_at": utc_iso(final.finished_at),
        "postback": final.postback,
    }
    if replay:
        record["replay"] = replay
    return record


def decided_state(
    final: Finished, emit: tuple[EmitRecord, ...], now: int, cycle: ReplayCycle = FIRST_CYCLE
) -> DeliveryState:
    """The state written as soon as a postback's outcome is known, before its records are: see delivery_state."""
    first = utc_iso(final.first_attempt_at)
    return DeliveryState("decided", now, final.attempts, first, final.result, None, emit, cycle)


def final_state(attempts: int, result: str | None, now: int, cycle: ReplayCycle = FIRST_CYCLE) -> DeliveryState:
    """The state once the records reporting the outcome are acknowledged (with its cycle: a replay continues
    its attempts and numbers, and knows the replay requests already taken)."""
    return DeliveryState("final", now, attempts, None, result, None, (), cycle)


# The outcome of a postback whose `pending` state Kafka refuses (larger than the state changelog takes):
# it cannot be kept for its retries, so it is not sent at all; its dead-letter record keeps a bounded copy.
UNKEEPABLE_REASON = "postback_too_large"


def unkeepable_outcome(error: str) -> Outcome:
    return Outcome(
        Verdict.REJECTED,
        UNKEEPABLE_REASON,
        f"the postback is larger than the delivery-state changelog accepts ({error}): not sent",
    )


def bounded_result(result: dict[str, Any]) -> dict[str, Any]:
    """A results record Kafka refused as too large, without its only free text (`last_detail`)."""
    return {name: value for name, value in result.items() if name != "last_detail"}


def bounded_dead_letter(dead: dict[str, Any]) -> dict[str, Any]:
    """A dead-letter record Kafka refused as too large (or one to keep inside a `decided` state that was):
    the postback replaced by its bounded, redacted copy (schemas/redaction.py), `detail` shortened."""
    postback = dead.get("postback")
    bounded = {**dead, "postback": None, "detail": str(dead.get("detail", ""))[:DETAIL_KEPT_CHARS]}
    if postback is not None:
        copy = keep_copy(orjson.dumps(postback))
        bounded["original_value"] = copy.text
        if copy.truncated:
            bounded.update(original_truncated=True, original_bytes=copy.size, original_sha256=copy.sha256)
    return bounded


# What a bounded dead-letter record keeps of its `detail` (a destination's answer is at most 300 already).
DETAIL_KEPT_CHARS = 300


def shrink_delivery_state(raw: bytes) -> bytes | None:
    """A delivery state Kafka refused as too large, made small: a `decided` one keeps its dead-letter record
    bounded (`bounded_dead_letter`); a `pending` one cannot be (its postback is what is delivered): None."""
    state = decode_delivery_state(raw)
    if state.status != "decided":
        return None
    emit = tuple(
        EmitRecord(
            e.role, e.partition, e.from_offset, bounded_dead_letter(e.value) if e.role == "dead_letter" else e.value
        )
        for e in state.emit
    )
    return encode_delivery_state(
        DeliveryState(
            state.status,
            state.updated_at,
            state.attempts,
            state.first_attempt_at,
            state.result,
            None,
            emit,
            state.cycle,
        )
    )


def pending_state(item: Unfinished, now: int, cycle: ReplayCycle = FIRST_CYCLE) -> DeliveryState:
    """The state a postback still pending at a drain is written back with, to be resumed by the next owner."""
    first = utc_iso(item.first_attempt_at) if item.first_attempt_at else None
    return DeliveryState("pending", now, item.attempts, first, None, item.postback, (), cycle)


def decode_postback(value: bytes | None, kind: str) -> dict[str, Any] | None:
    """The matched postback of a `postbacks.<kind>` record; None when it is none (not UTF-8, not JSON,
    not an object, another kind, a required field missing or not a string)."""
    try:
        postback = orjson.loads(value) if value is not None else None
    except orjson.JSONDecodeError:
        return None
    if not isinstance(postback, dict):
        return None
    required = POSTBACK_STRING_FIELDS + (S2S_STRING_FIELDS if kind == "s2s" else ())
    if postback.get("kind") != kind or not all(isinstance(postback.get(name), str) for name in required):
        return None
    return postback


def undecodable_record(key: bytes | None, value: bytes | None, now: str) -> tuple[bytes | None, dict[str, Any]]:
    """(Kafka key, dead-letter message) of a consumed record `decode_postback` refused: no trustworthy
    postback_id (its key stands in), no result record; its bytes kept as text, or base64 when not UTF-8,
    with credentials and personal data masked and the copy bounded (schemas/redaction.py); a key
    holding personal data is replaced by its hash."""
    key, _ = keep_key(key)
    pid = key.decode("utf-8", "replace") if key else ""
    copy = keep_copy(value or b"")
    dead: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "postback_id": pid,
        "result": "rejected",
        "reason": "invalid_message",
        "detail": "not a matched postback of this topic's kind (see schemas/matched-postback.schema.json)",
        "last_http_status": None,
        "attempts": 0,
        "dead_lettered_at": now,
        "postback": None,
        "original_value": copy.text,
    }
    if copy.truncated:
        dead.update(original_truncated=True, original_bytes=copy.size, original_sha256=copy.sha256)
    return key, dead
