"""The `decided` delivery state and the bounded records (dispatchers/core/delivery_state.py,
delivery_records.py): what a restart reads back to report a postback exactly once, and what is written
when Kafka refuses a record as too large."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from dispatchers.core.delivery_records import (
    UNKEEPABLE_REASON,
    bounded_dead_letter,
    bounded_result,
    dead_letter_record,
    decided_state,
    final_state,
    pending_state,
    result_record,
    shrink_delivery_state,
    unkeepable_outcome,
)
from dispatchers.core.delivery_state import EmitRecord, decode_delivery_state, encode_delivery_state
from dispatchers.core.outcome import Outcome, Verdict
from tests import factories as f
from tests.factories import Final

# a start time with a fraction of a second, as encoded states keep it; derived from now (no absolute dates)
STARTED = datetime.now(UTC).replace(microsecond=250_000)


def postback(**extra: Any) -> dict[str, Any]:
    rules = f.compiled("camp-1", f.s2s_entry())
    messages = f.processor(rules).process(f.source_records([f.conversion("cv-1")])).messages
    value = next(m.value for m in messages if m.topic == "postbacks.s2s")
    assert value is not None
    return {**orjson.loads(value), **extra}


def rejected(pb: dict[str, Any], outcome: Outcome | None = None) -> Final:
    outcome = outcome or Outcome(Verdict.REJECTED, "http_400", "tracker.example answered 400: ERROR", 400)
    return Final(pb, "rejected", 2, outcome, 1.5, STARTED, STARTED + timedelta(seconds=1.5))


def test_a_decided_state_keeps_the_records_to_write_byte_for_byte() -> None:
    final = rejected(postback())
    emit = (
        EmitRecord("results", 3, 120, result_record(final)),
        EmitRecord("dead_letter", 1, 7, dead_letter_record(final)),
    )
    raw = encode_delivery_state(decided_state(final, emit, 1_777_000_000))
    state = decode_delivery_state(raw)
    assert (state.status, state.result, state.attempts, state.postback) == ("decided", "rejected", 2, None)
    assert state.emit == emit
    assert [orjson.dumps(e.value) for e in state.emit] == [orjson.dumps(e.value) for e in emit]


def test_pending_and_final_states_read_as_before() -> None:
    @dataclass(frozen=True)
    class Pending:
        postback: dict[str, Any]
        attempts: int
        first_attempt_at: datetime | None

    pending = decode_delivery_state(encode_delivery_state(pending_state(Pending(postback(), 1, STARTED), 5)))
    assert (pending.status, pending.attempts, pending.emit) == ("pending", 1, ())
    final = decode_delivery_state(encode_delivery_state(final_state(2, "delivered", 6)))
    assert (final.status, final.result, final.postback, final.emit) == ("final", "delivered", None, ())
    # a state written before `decided` existed (no "e") still reads
    old = decode_delivery_state(b'{"s":"final","t":1,"a":1,"f":null,"r":"delivered","p":null}')
    assert old.emit == ()


def test_a_postback_too_large_to_keep_gets_a_bounded_dead_letter_record_valid_against_its_schema() -> None:
    big = postback(padding="x" * 2_000_000)
    final = rejected(big, unkeepable_outcome("MessageSizeTooLargeError"))
    dead = bounded_dead_letter(dead_letter_record(final))
    assert len(orjson.dumps(dead)) < 8 * 1024
    assert dead["postback"] is None
    assert dead["reason"] == UNKEEPABLE_REASON
    assert dead["original_truncated"] is True and dead["original_bytes"] > 2_000_000
    assert f.schema_errors("dead-letter", dead) == []
    assert f.schema_errors("delivery-result", result_record(final)) == []


def test_a_results_record_refused_loses_only_its_detail() -> None:
    record = result_record(rejected(postback()))
    bounded = bounded_result(record)
    assert "last_detail" not in bounded
    assert {k: v for k, v in record.items() if k != "last_detail"} == bounded
    assert f.schema_errors("delivery-result", bounded) == []


def test_a_decided_state_refused_is_shrunk_and_a_pending_one_cannot_be() -> None:
    final = rejected(postback(padding="x" * 2_000_000))
    emit = (
        EmitRecord("results", 0, 0, result_record(final)),
        EmitRecord("dead_letter", 0, 0, dead_letter_record(final)),
    )
    smaller = shrink_delivery_state(encode_delivery_state(decided_state(final, emit, 1)))
    assert smaller is not None and len(smaller) < 16 * 1024
    state = decode_delivery_state(smaller)
    assert state.status == "decided"
    assert state.emit[0] == emit[0]
    assert state.emit[1].value["postback"] is None and state.emit[1].value["original_truncated"] is True

    @dataclass(frozen=True)
    class Pending:
        postback: dict[str, Any]
        attempts: int
        first_attempt_at: datetime | None

    raw_pending = encode_delivery_state(pending_state(Pending(final.postback, 0, None), 1))
    assert shrink_delivery_state(raw_pending) is None
