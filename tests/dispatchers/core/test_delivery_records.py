"""The dispatcher's records (dispatchers/core/delivery_records.py): results and dead-letter messages valid
against their schemas, nothing personal or secret echoed, a consumed record that is no postback refused."""

from __future__ import annotations

import base64
import functools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest

from dispatchers.core.delivery_records import (
    dead_letter_record,
    decode_postback,
    pending_state,
    result_record,
    undecodable_record,
    utc_iso,
)
from dispatchers.core.delivery_state import decode_delivery_state, encode_delivery_state
from dispatchers.core.outcome import Outcome, Verdict
from tests import factories as f
from tests.factories import Final

STARTED = datetime(2026, 5, 1, 12, 0, 0, 250_000, tzinfo=UTC)
FINISHED = STARTED + timedelta(seconds=1.5)
NOW = "2026-05-01T12:00:02.000Z"
EMAIL = "Someone@Example.com"
PHONE = "+447911123456"


@dataclass(frozen=True)
class Pending:
    postback: dict[str, Any]
    attempts: int
    first_attempt_at: datetime | None


@functools.cache
def _matched() -> dict[str, bytes]:
    """Each kind's postback as the worker writes it, for a conversion with every personal field."""
    rules = f.compiled("camp-1", f.s2s_entry(), f.google_entry(), f.meta_entry(), f.tiktok_entry(), f.microsoft_entry())
    event = f.conversion(
        "cv-1",
        click_ids={"gclid": "g1", "fbc": "fb.1.1.abc", "ttclid": "t1", "msclkid": "m1"},
        user={"email": EMAIL, "phone": PHONE, "external_id": "user-42", "ip": "203.0.113.9", "user_agent": "UA/1"},
    )
    result = f.processor(rules).process([f.source_record(event)])
    return {m.topic.removeprefix("postbacks."): m.value for m in result.messages if m.topic.startswith("postbacks.")}


def matched(kind: str) -> dict[str, Any]:
    value = _matched()[kind]
    assert f.schema_errors("matched-postback", orjson.loads(value)) == []
    return dict(orjson.loads(value))


def final(kind: str = "s2s", result: str = "delivered", outcome: Outcome | None = None, **fields: Any) -> Final:
    values: dict[str, Any] = {
        "postback": matched(kind),
        "result": result,
        "attempts": 2,
        "last_outcome": outcome or Outcome(Verdict.DELIVERED, "http_200", "200 OK", 200),
        "latency_seconds": 1.5,
        "first_attempt_at": STARTED,
        "finished_at": FINISHED,
    }
    values.update(fields)
    return Final(**values)


OUTCOMES = {
    "delivered": Outcome(Verdict.DELIVERED, "http_200", "200 OK", 200),
    "duplicate": Outcome(Verdict.DUPLICATE, "CLICK_CONVERSION_ALREADY_EXISTS", "already uploaded", 200),
    "rejected": Outcome(Verdict.REJECTED, "http_400", "400 Bad Request", 400),
    "precheck": Outcome(Verdict.REJECTED, "event_too_old", "older than 7 days", None),
    "gave_up": Outcome(Verdict.RETRY, "timeout", "no answer within 10s", None),
}
CASES = [
    pytest.param(kind, result, outcome, id=f"{kind}-{result}-{outcome}")
    for kind in f.KINDS
    for result, outcome in (
        ("delivered", "delivered"),
        ("delivered", "duplicate"),
        ("rejected", "rejected"),
        ("rejected", "precheck"),
        ("dead_lettered", "gave_up"),
    )
]


# --- postbacks.results ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "result", "outcome"), CASES)
def test_every_result_record_validates_against_its_schema(kind: str, result: str, outcome: str) -> None:
    record = result_record(final(kind, result, OUTCOMES[outcome]))
    assert f.schema_errors("delivery-result", record) == []
    assert record["result"] == result
    assert record["last_reason"] == OUTCOMES[outcome].reason


def test_a_result_record_holds_exactly_these_fields() -> None:
    postback = matched("s2s")
    record = result_record(final("s2s", "rejected", OUTCOMES["rejected"], attempts=3))
    assert record == {
        "schema_version": 1,
        "postback_id": postback["postback_id"],
        "kind": "s2s",
        "destination_id": "s2s:tracker.example",
        "conversion_id": "cv-1",
        "campaign_id": "camp-1",
        "entry_id": "src",
        "result": "rejected",
        "attempts": 3,
        "last_http_status": 400,
        "last_reason": "http_400",
        "last_detail": "400 Bad Request",
        "latency_seconds": 1.5,
        "first_attempt_at": "2026-05-01T12:00:00.250Z",
        "finished_at": "2026-05-01T12:00:01.750Z",
    }


@pytest.mark.parametrize(
    ("latency", "expected"),
    [
        pytest.param(1.23456789, 1.234568, id="rounded-to-microseconds"),
        pytest.param(-0.5, 0.0, id="negative-clock-step-is-zero"),
        pytest.param(0.0, 0.0, id="zero"),
    ],
)
def test_latency_is_never_negative_and_rounded(latency: float, expected: float) -> None:
    record = result_record(final(latency_seconds=latency))
    assert record["latency_seconds"] == expected
    assert f.schema_errors("delivery-result", record) == []


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        pytest.param(datetime(2026, 5, 1, 12, 0, tzinfo=UTC), "2026-05-01T12:00:00.000Z", id="utc"),
        pytest.param(
            datetime(2026, 5, 1, 14, 0, tzinfo=timezone(timedelta(hours=2))), "2026-05-01T12:00:00.000Z", id="cest"
        ),
        pytest.param(
            datetime(2026, 5, 1, 12, 0, 0, 999_999, tzinfo=UTC), "2026-05-01T12:00:00.999Z", id="truncated-ms"
        ),
    ],
)
def test_times_are_utc_milliseconds(moment: datetime, expected: str) -> None:
    assert utc_iso(moment) == expected
    record = result_record(final(first_attempt_at=moment, finished_at=moment))
    assert record["first_attempt_at"] == record["finished_at"] == expected


@pytest.mark.parametrize("kind", f.KINDS)
def test_a_result_record_echoes_nothing_personal_or_secret(kind: str) -> None:
    postback = matched(kind)
    text = orjson.dumps(result_record(final(kind))).decode()
    for value in (
        EMAIL,
        EMAIL.lower(),
        PHONE,
        "user-42",
        "203.0.113.9",
        "UA/1",
        *postback["user"].values(),
        *postback.get("click_ids", {}).values(),
        postback["click_id"],
        postback["entry"].get("credentials", "(none)"),
        postback.get("url", "(none)"),
    ):
        assert str(value) not in text, value


# --- postbacks.dead-letter -----------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "result", "outcome"), [c for c in CASES if c.values[1] != "delivered"])
def test_every_dead_letter_record_validates_against_its_schema(kind: str, result: str, outcome: str) -> None:
    record = dead_letter_record(final(kind, result, OUTCOMES[outcome]))
    assert f.schema_errors("dead-letter", record) == []
    assert (record["result"], record["reason"], record["detail"]) == (
        result,
        OUTCOMES[outcome].reason,
        OUTCOMES[outcome].detail,
    )


def test_a_dead_letter_record_keeps_the_postback_as_consumed_and_the_last_response() -> None:
    postback = matched("meta")
    record = dead_letter_record(final("meta", "rejected", OUTCOMES["precheck"], attempts=0))
    assert record == {
        "schema_version": 1,
        "postback_id": postback["postback_id"],
        "result": "rejected",
        "reason": "event_too_old",
        "detail": "older than 7 days",
        "last_http_status": None,
        "attempts": 0,
        "dead_lettered_at": "2026-05-01T12:00:01.750Z",
        "postback": postback,  # for replay: hashed identifiers only (the worker hashed them), no secret
    }
    text = orjson.dumps(record).decode()
    for raw in (EMAIL, EMAIL.lower(), PHONE, "user-42"):
        assert raw not in text


# --- the pending state written back at a drain -------------------------------------------------------


@pytest.mark.parametrize(
    ("first_attempt_at", "expected_first"),
    [
        pytest.param(None, None, id="never-attempted"),
        pytest.param(STARTED, "2026-05-01T12:00:00.250Z", id="attempted"),
    ],
)
def test_a_pending_state_keeps_the_postback_and_its_attempts(
    first_attempt_at: datetime | None, expected_first: str | None
) -> None:
    postback = matched("google_ads")
    state = pending_state(Pending(postback, 4, first_attempt_at), 1_777_000_000)
    assert (state.status, state.updated_at, state.attempts, state.first_attempt_at, state.result) == (
        "pending",
        1_777_000_000,
        4,
        expected_first,
        None,
    )
    assert state.postback == postback
    assert decode_delivery_state(encode_delivery_state(state)) == state
    if expected_first is not None:  # the dispatcher resumes it with datetime.fromisoformat
        assert datetime.fromisoformat(expected_first) == STARTED


# --- a consumed record: a postback of this topic's kind, or refused ----------------------------------


@pytest.mark.parametrize("kind", f.KINDS)
def test_a_matched_postback_of_the_topics_kind_decodes(kind: str) -> None:
    assert decode_postback(_matched()[kind], kind) == matched(kind)


def _s2s(**changes: Any) -> bytes:
    postback = matched("s2s")
    postback.update(changes)
    return orjson.dumps({k: v for k, v in postback.items() if v is not ...})


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        pytest.param(None, "s2s", id="tombstone"),
        pytest.param(b"", "s2s", id="empty"),
        pytest.param(b"\xff\xfe{}", "s2s", id="not-utf8"),
        pytest.param(b'{"postback_id": "\xed\xa0\x80"}', "s2s", id="encoded-surrogate"),
        pytest.param(b"{nope", "s2s", id="not-json"),
        pytest.param(b"[1, 2]", "s2s", id="array"),
        pytest.param(b'"postback"', "s2s", id="string"),
        pytest.param(b"42", "s2s", id="number"),
        pytest.param(b"null", "s2s", id="json-null"),
        pytest.param(b"{}", "s2s", id="empty-object"),
        pytest.param(_s2s(), "meta", id="another-kind"),
        pytest.param(_s2s(kind="meta"), "s2s", id="kind-field-mismatch"),
        pytest.param(_s2s(url=...), "s2s", id="s2s-without-url"),
        pytest.param(_s2s(method=...), "s2s", id="s2s-without-method"),
        pytest.param(_s2s(postback_id=42), "s2s", id="postback-id-not-a-string"),
        pytest.param(_s2s(destination_id=None), "s2s", id="destination-null"),
        pytest.param(_s2s(entry_id=...), "s2s", id="entry-id-missing"),
    ],
)
def test_a_record_that_is_no_postback_of_the_topics_kind_is_refused(value: bytes | None, kind: str) -> None:
    assert decode_postback(value, kind) is None


def test_an_ad_platform_postback_needs_no_url() -> None:
    postback = matched("tiktok")
    assert "url" not in postback
    assert decode_postback(orjson.dumps(postback), "tiktok") == postback


@pytest.mark.parametrize(
    ("key", "value", "expected_id", "expected_original"),
    [
        pytest.param(b"pb-1", b"{nope", "pb-1", "{nope", id="not-json"),
        pytest.param(b"pb-1", b"[1]", "pb-1", "[1]", id="not-an-object"),
        pytest.param(b"pb-1", '{"kind": "méta"}'.encode(), "pb-1", '{"kind": "méta"}', id="utf8-text"),
        pytest.param(b"pb-1", b"\xff\xfe\x00", "pb-1", base64.b64encode(b"\xff\xfe\x00").decode(), id="not-utf8"),
        pytest.param(b"pb-1", None, "pb-1", "", id="tombstone"),
        pytest.param(None, b"{}", "", "{}", id="no-key"),
        pytest.param(b"\xffpb", b"{}", "\ufffdpb", "{}", id="key-not-utf8"),
    ],
)
def test_an_undecodable_record_is_dead_lettered_with_its_bytes(
    key: bytes | None, value: bytes | None, expected_id: str, expected_original: str
) -> None:
    kafka_key, record = undecodable_record(key, value, NOW)
    assert kafka_key == key
    assert f.schema_errors("dead-letter", record) == []
    assert record == {
        "schema_version": 1,
        "postback_id": expected_id,
        "result": "rejected",
        "reason": "invalid_message",
        "detail": "not a matched postback of this topic's kind (see schemas/matched-postback.schema.json)",
        "last_http_status": None,
        "attempts": 0,
        "dead_lettered_at": NOW,
        "postback": None,
        "original_value": expected_original,
    }


# What issue 8 fixed (defect 7 and 1): no raw personal data, and a bounded copy, as the worker's .invalid
# records have (both from schemas/redaction.py).


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(orjson.dumps({"user": {"email": EMAIL, "phone": PHONE}}), id="a-conversion-on-a-postback-topic"),
        pytest.param(f"email={EMAIL}".encode(), id="text"),
    ],
)
def test_an_undecodable_record_echoes_no_raw_personal_data(value: bytes) -> None:
    _, record = undecodable_record(b"pb-1", value, NOW)
    text = orjson.dumps(record).decode()
    assert EMAIL not in text and PHONE not in text


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(b"x" * 1_000_000, id="text-near-1MiB"),
        pytest.param(b"\xff" * 800_000, id="not-utf8-grows-by-base64"),
        pytest.param(b"\x01" * 200_000, id="control-bytes-grow-six-fold-in-json"),
    ],
)
def test_an_undecodable_record_stays_within_what_the_producer_can_write(value: bytes) -> None:
    _, record = undecodable_record(b"pb-1", value, NOW)
    # bounded like the worker's refusals (a redacted prefix, its size and hash), well under aiokafka's
    # default max_request_size (1 MiB): a record the producer refuses is retried forever, stalling the partition
    assert len(orjson.dumps(record)) <= 256 * 1024


@pytest.mark.parametrize(
    "detail",
    [
        pytest.param("403: invalid request https://source.example/cb?cid=1&token=abc123secret", id="url-token"),
        pytest.param('{"error": "bad key", "api_key": "abc123secret"}', id="json-credential"),
        pytest.param(f"unknown customer {EMAIL} (+1 415 555 2671)", id="personal-data"),
    ],
)
def test_a_destinations_answer_echoed_in_results_and_dead_letter_is_scrubbed(detail: str) -> None:
    """Issue 8, defect 7: a response body that echoes the request's credential or a person's data."""
    done = final("s2s", "rejected", Outcome(Verdict.REJECTED, "http_403", detail, http_status=403))
    for record in (result_record(done), dead_letter_record(done)):
        written = orjson.dumps(record).decode()
        assert "abc123secret" not in written
        assert EMAIL not in written and "555 2671" not in written
    assert result_record(done)["last_detail"].startswith(detail[:10])
