"""Replay requests and the delivery-state transitions they cause (dispatchers/core/replay.py), pure."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from dispatchers.core.delivery_records import (
    dead_letter_record,
    decided_state,
    final_state,
    result_record,
    shrink_delivery_state,
)
from dispatchers.core.delivery_state import (
    FIRST_CYCLE,
    DeliveryState,
    EmitRecord,
    ReplayCycle,
    decode_delivery_state,
    encode_delivery_state,
)
from dispatchers.core.outcome import Outcome, Verdict
from dispatchers.core.replay import (
    KEPT_REQUEST_IDS,
    InvalidReplayRequest,
    ReplayRequest,
    decide_replay,
    replay_pending_state,
    replay_request_record,
    split_replay_request,
)
from tests import factories as f
from tests.factories import Final

NOW = int(datetime.now(UTC).timestamp())
RECEIVED = datetime.now(UTC).isoformat()


def postback() -> dict[str, Any]:
    rules = f.compiled("camp-1", f.s2s_entry())
    messages = f.processor(rules).process(f.source_records([f.conversion("cv-1")])).messages
    value = next(m.value for m in messages if m.topic == "postbacks.s2s")
    assert value is not None
    decoded: dict[str, Any] = orjson.loads(value)
    return decoded


def ended(pb: dict[str, Any], result: str = "rejected", attempts: int = 2) -> Final:
    started = datetime.now(UTC) - timedelta(seconds=2)
    outcome = Outcome(Verdict.REJECTED, "http_400", "answered 400", 400)
    return Final(pb, result, attempts, outcome, 1.5, started, started + timedelta(seconds=1.5))


def final(result: str, cycle: ReplayCycle = FIRST_CYCLE, attempts: int = 2) -> DeliveryState:
    return decode_delivery_state(encode_delivery_state(final_state(attempts, result, NOW, cycle)))


def test_a_plain_postback_carries_no_request_and_a_request_splits_into_postback_and_request() -> None:
    pb = postback()
    assert split_replay_request(pb) == (pb, None)
    request = ReplayRequest("req-1", RECEIVED, "ops")
    record = replay_request_record(pb, request)
    assert f.schema_errors("matched-postback", record) == []
    original, found = split_replay_request(record)
    assert original == pb
    assert found == request


def test_a_request_record_replaces_an_earlier_request_and_masks_personal_data_in_requested_by() -> None:
    earlier = replay_request_record(postback(), ReplayRequest("old"))
    record = replay_request_record(earlier, ReplayRequest("new", None, "jane.doe@example.com"))
    assert record["replay"]["request_id"] == "new"
    assert "jane.doe@example.com" not in orjson.dumps(record).decode()


@pytest.mark.parametrize(
    "replay",
    [
        "req-1",
        None,
        {},
        {"request_id": ""},
        {"request_id": 7},
        {"request_id": "x" * 129},
        {"request_id": "r", "requested_by": 3},
    ],
)
def test_a_malformed_replay_object_is_refused(replay: Any) -> None:
    with pytest.raises(InvalidReplayRequest):
        split_replay_request({**postback(), "replay": replay})


@pytest.mark.parametrize(
    ("state", "in_flight", "decision"),
    [
        (final("rejected"), False, "start"),
        (final("dead_lettered"), False, "start"),
        (final("delivered"), False, "delivered"),
        (final("delivered", ReplayCycle(1, ("req-0",))), False, "delivered"),  # delivered by a replay
        (final("rejected", ReplayCycle(1, ("req-1",))), False, "duplicate"),  # the request read again
        (final("rejected", ReplayCycle(1, ("req-0",))), False, "start"),  # a second replay
        (final("rejected"), True, "not_final"),  # being delivered here
        (DeliveryState("pending", NOW, 1, RECEIVED, None, {"postback_id": "p"}), False, "not_final"),
        (DeliveryState("decided", NOW, 1, RECEIVED, "rejected"), False, "not_final"),
        (DeliveryState("pending", NOW, 1, RECEIVED, None, {}, (), ReplayCycle(1, ("req-1",))), True, "duplicate"),
        (None, False, "unknown"),
    ],
)
def test_what_a_replay_request_does(state: DeliveryState | None, in_flight: bool, decision: str) -> None:
    assert decide_replay(state, "req-1", in_flight) == decision


def test_a_replay_cycle_continues_the_attempts_numbers_the_replay_and_remembers_the_request() -> None:
    pb = postback()
    pending = replay_pending_state(final("dead_lettered", attempts=7), pb, "req-1", NOW, RECEIVED)
    state = decode_delivery_state(encode_delivery_state(pending))
    assert (state.status, state.attempts, state.postback, state.first_attempt_at) == ("pending", 7, pb, RECEIVED)
    assert state.cycle == ReplayCycle(1, ("req-1",))
    assert decide_replay(state, "req-1", False) == "duplicate"

    second = replay_pending_state(final("rejected", state.cycle, attempts=8), pb, "req-2", NOW, RECEIVED)
    assert second.cycle == ReplayCycle(2, ("req-1", "req-2"))


def test_the_request_ids_a_state_keeps_are_bounded() -> None:
    state = final("rejected")
    for n in range(KEPT_REQUEST_IDS + 5):
        pending = replay_pending_state(state, postback(), f"req-{n}", NOW, RECEIVED)
        state = final_state(pending.attempts, "rejected", NOW, pending.cycle)
    assert state.cycle.number == KEPT_REQUEST_IDS + 5
    assert state.cycle.requests == tuple(f"req-{n}" for n in range(5, KEPT_REQUEST_IDS + 5))


def test_a_replay_cycle_ends_with_records_marked_with_its_number_and_keeps_its_cycle_to_final() -> None:
    outcome = ended(postback(), "dead_lettered", attempts=9)
    result, dead = result_record(outcome, 2), dead_letter_record(outcome, 2)
    assert (result["replay"], dead["replay"], result["attempts"]) == (2, 2, 9)
    assert f.schema_errors("delivery-result", result) == []
    assert f.schema_errors("dead-letter", dead) == []
    assert "replay" not in result_record(outcome) and "replay" not in dead_letter_record(outcome)

    cycle = ReplayCycle(2, ("a", "b"))
    emit = (EmitRecord("results", 0, 0, result), EmitRecord("dead_letter", 0, 0, dead))
    decided = decode_delivery_state(encode_delivery_state(decided_state(outcome, emit, NOW, cycle)))
    assert decided.cycle == cycle
    shrunk = shrink_delivery_state(encode_delivery_state(decided))
    assert shrunk is not None and decode_delivery_state(shrunk).cycle == cycle
    assert final("rejected", cycle).cycle == cycle


def test_a_state_written_before_replays_existed_is_in_its_first_cycle() -> None:
    old = decode_delivery_state(b'{"s":"final","t":1,"a":1,"f":null,"r":"rejected","p":null}')
    assert old.cycle == FIRST_CYCLE
    assert b'"n"' not in encode_delivery_state(old)
