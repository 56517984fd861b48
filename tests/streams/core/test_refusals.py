"""The worker's refusals (streams/core/refusals.py): the `.invalid` message of a compacted record that does not
parse, and the context of a refused conversion's log line."""

from __future__ import annotations

import base64
from collections.abc import Callable
from types import EllipsisType
from typing import Any

import orjson
import pytest

from schemas.errors import InvalidInput
from streams.core.batch import SourceRecord
from streams.core.invalid_records import invalid_record
from streams.core.offer_sources import MAX_OFFER_SOURCE_BYTES, parse_offer_source
from streams.core.refusals import MAX_LOGGED_KEY_CHARS, compacted_refusal, refusal_log_context
from streams.core.rules import MAX_RULES_BYTES, parse_campaign_rules
from tests import factories as f

REJECTED_AT = "2026-05-01T12:00:00.000Z"
EMAIL = "someone@example.com"
RULES = orjson.dumps(f.campaign("camp-1", f.s2s_entry()))
OFFER_SOURCE = orjson.dumps({"offer_source_id": "os-1", "default_status": "approved"})
TOPICS: dict[str, tuple[Callable[[bytes | None, bytes], Any], bytes, bytes]] = {
    # topic: (parser, the key of a valid record, a valid value)
    "campaign-rules": (parse_campaign_rules, b"camp-1", RULES),
    "offer-sources": (parse_offer_source, b"os-1", OFFER_SOURCE),
}


def key_of(topic: str, key: bytes | EllipsisType | None) -> bytes | None:
    """`...`: the key a valid record of the topic has."""
    return TOPICS[topic][1] if key is ... else key


def refusal(topic: str, value: bytes | None, key: bytes | EllipsisType | None = ...) -> Any:
    record = SourceRecord(topic, 2, 17, None, key_of(topic, key), value)
    return compacted_refusal(TOPICS[topic][0], record, f"{topic}.invalid", REJECTED_AT)


@pytest.mark.parametrize("topic", TOPICS)
def test_a_valid_record_and_a_tombstone_are_no_refusal(topic: str) -> None:
    assert refusal(topic, TOPICS[topic][2]) is None
    assert refusal(topic, None) is None  # a deletion, always valid


def _rules(**changes: Any) -> bytes:
    return orjson.dumps({**f.campaign("camp-1", f.s2s_entry()), **changes})


@pytest.mark.parametrize(
    ("topic", "value", "key", "reason"),
    [
        pytest.param("campaign-rules", b"{nope", ..., "not_json", id="rules-not-json"),
        pytest.param("campaign-rules", b"\xff\xfe{}", ..., "not_utf8", id="rules-not-utf8"),
        pytest.param("campaign-rules", b"[]", ..., "invalid_rule", id="rules-not-an-object"),
        pytest.param("campaign-rules", b'"camp-1"', ..., "invalid_rule", id="rules-a-string"),
        pytest.param("campaign-rules", b"{}", ..., "invalid_rule", id="rules-missing-fields"),
        pytest.param("campaign-rules", _rules(postbacks="no"), ..., "invalid_rule", id="rules-wrong-type"),
        pytest.param("campaign-rules", RULES, b"camp-2", "invalid_rule", id="rules-key-mismatch"),
        pytest.param("campaign-rules", b" " * (MAX_RULES_BYTES + 1), ..., "oversized", id="rules-oversized"),
        pytest.param("offer-sources", b"{nope", ..., "not_json", id="offer-source-not-json"),
        pytest.param("offer-sources", b"\xed\xa0\x80", ..., "not_utf8", id="offer-source-not-utf8"),
        pytest.param("offer-sources", b"[1]", ..., "invalid_rule", id="offer-source-not-an-object"),
        pytest.param("offer-sources", OFFER_SOURCE, b"os-2", "invalid_rule", id="offer-source-key-mismatch"),
        pytest.param(
            "offer-sources",
            orjson.dumps({"offer_source_id": "os-1", "default_status": "approved", "default_region": "UK"}),
            ...,
            "invalid_rule",
            id="offer-source-unknown-region",
        ),
        pytest.param(
            "offer-sources", b" " * (MAX_OFFER_SOURCE_BYTES + 1), ..., "oversized", id="offer-source-oversized"
        ),
    ],
)
def test_a_record_that_does_not_parse_becomes_its_invalid_record(
    topic: str, value: bytes, key: bytes | EllipsisType, reason: str
) -> None:
    found = refusal(topic, value, key)
    assert found is not None
    message, error = found
    assert isinstance(error, InvalidInput)
    assert error.reason == reason
    assert (message.topic, message.key) == (f"{topic}.invalid", key_of(topic, key))
    body = orjson.loads(message.value)
    assert f.schema_errors("invalid-record", body) == []
    assert body["source"] == {"topic": topic, "partition": 2, "offset": 17}
    assert body["error"]["reason"] == reason
    assert body["rejected_at"] == REJECTED_AT
    # the same record the conversions' refusals get (streams/core/invalid_records.py)
    assert body == invalid_record(error, key_of(topic, key), value, body["source"], REJECTED_AT)


def test_a_refused_rule_keeps_no_raw_personal_data_in_its_value() -> None:
    value = _rules(owner=EMAIL, postbacks="no")
    message, _ = refusal("campaign-rules", value)
    assert EMAIL not in message.value.decode()
    assert "text:email" in orjson.loads(message.value)["redacted_fields"]


def test_a_refused_rule_keyed_by_personal_data_is_written_under_its_hash() -> None:
    message, _ = refusal("campaign-rules", b"{nope", EMAIL.encode())
    assert EMAIL not in orjson.loads(message.value)["key"]  # holds: the record's key field is hashed
    assert message.key is not None and EMAIL.encode() not in message.key


# --- the log line of a refused conversion -----------------------------------------------------------------


def _refused(key: bytes | None) -> dict[str, Any]:
    error = InvalidInput("not_json", "conversion is not JSON")
    return invalid_record(error, key, b"{oops", {"topic": "conversions", "partition": 3, "offset": 41}, REJECTED_AT)


POSITION = {"reason": "not_json", "topic": "conversions", "partition": 3, "offset": 41}


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        pytest.param(b"cv-17", {**POSITION, "conversion_id": "cv-17"}, id="text-key-is-the-conversion-id"),
        pytest.param(
            b"c" * MAX_LOGGED_KEY_CHARS, {**POSITION, "conversion_id": "c" * MAX_LOGGED_KEY_CHARS}, id="longest-id"
        ),
        pytest.param(b"c" * (MAX_LOGGED_KEY_CHARS + 1), POSITION, id="longer-than-an-id"),
        pytest.param(b"\xff\xfe", POSITION, id="not-utf8-key"),
        pytest.param(None, POSITION, id="no-key"),
        pytest.param(b"", POSITION, id="empty-key"),
    ],
)
def test_a_refused_conversions_log_context_is_its_reason_position_and_id(
    key: bytes | None, expected: dict[str, Any]
) -> None:
    assert refusal_log_context(_refused(key)) == expected


def test_a_refused_conversions_log_context_never_holds_its_value() -> None:
    context = refusal_log_context(_refused(b"cv-1"))
    assert "oops" not in str(context)
    assert base64.b64encode(b"{oops").decode() not in str(context)
