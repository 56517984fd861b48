"""`.invalid` records (contract §3, 5): the refused input kept for replay, its reason, its position, no raw PII."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import orjson
import pytest

from schemas.errors import FieldError, InvalidInput
from streams.core.invalid_records import invalid_record, redact_personal_data
from tests import factories as f

SOURCE = {"topic": "conversions", "partition": 4, "offset": 1234}
REJECTED_AT = "2026-11-20T10:00:05.000Z"
ERROR = InvalidInput("invalid_value", "status must be one of ...", field="status")


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def record(value: bytes | None, key: bytes | None = b"cv-1", error: InvalidInput = ERROR) -> dict[str, Any]:
    body = invalid_record(error, key, value, dict(SOURCE), REJECTED_AT)
    assert f.schema_errors("invalid-record", body) == []
    return body


@pytest.mark.parametrize(
    ("value", "expected_value", "encoding"),
    [
        pytest.param(b"{nope", "{nope", "text", id="text"),
        pytest.param('{"type": "dépôt", "x": '.encode(), '{"type": "dépôt", "x": ', "text", id="utf-8-text"),
        pytest.param(b"", "", "text", id="empty"),
        pytest.param(b"\xff\xfe\x00bin", base64.b64encode(b"\xff\xfe\x00bin").decode(), "base64", id="not-utf8"),
        pytest.param(None, None, "null", id="null"),
    ],
)
def test_original_value_is_kept(value: bytes | None, expected_value: str | None, encoding: str) -> None:
    body = record(value)
    assert (body["value"], body["value_encoding"]) == (expected_value, encoding)
    assert body["redacted_fields"] == []
    if encoding == "base64":
        assert base64.b64decode(body["value"]) == value


def test_json_without_personal_data_is_kept_byte_for_byte() -> None:
    value = b'{ "conversion_id": "cv-1",  "status": "paid", "payout": 0.1 }'
    assert record(value)["value"] == value.decode()


@pytest.mark.parametrize(
    ("key", "expected_key", "key_encoding"),
    [
        pytest.param(b"cv-1", "cv-1", "text", id="text"),
        pytest.param("conversión".encode(), "conversión", "text", id="utf-8"),
        pytest.param(b"\xff\x00", base64.b64encode(b"\xff\x00").decode(), "base64", id="not-utf8"),
        pytest.param(None, None, None, id="null"),
    ],
)
def test_original_key_is_kept(key: bytes | None, expected_key: str | None, key_encoding: str | None) -> None:
    body = record(b"{}", key=key)
    assert body["key"] == expected_key
    assert body.get("key_encoding") == key_encoding


def test_source_position_error_and_time_are_kept() -> None:
    error = InvalidInput(
        "missing_field",
        "missing required field(s): click_id, occurred_at",
        field="click_id",
        errors=[FieldError("click_id", "is required"), FieldError("occurred_at", "is required")],
    )
    body = record(b"{}", error=error)
    assert body["source"] == SOURCE
    assert body["rejected_at"] == REJECTED_AT
    assert body["schema_version"] == 1
    assert body["error"] == {
        "reason": "missing_field",
        "message": "missing required field(s): click_id, occurred_at",
        "field": "click_id",
        "errors": [
            {"field": "click_id", "message": "is required"},
            {"field": "occurred_at", "message": "is required"},
        ],
    }


def test_error_without_field_list() -> None:
    body = record(b"x", error=InvalidInput("not_json", "record value is not JSON"))
    assert body["error"] == {"reason": "not_json", "message": "record value is not JSON", "field": None}


# --- personal data ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("user", "expected_user", "redacted"),
    [
        pytest.param(
            {"email": " Bob@Example.com "},
            {"email": "sha256:" + sha("bob@example.com")},
            ["user.email"],
            id="email-normalised-and-hashed",
        ),
        pytest.param(
            {"phone": "+1 (415) 555-2671"},
            {"phone": "sha256:" + sha("+14155552671")},
            ["user.phone"],
            id="phone-e164-hashed",
        ),
        pytest.param({"phone": " 123 "}, {"phone": "sha256:" + sha("123")}, ["user.phone"], id="unparseable-phone"),
        pytest.param(
            {"external_id": "CRM-9"}, {"external_id": "sha256:" + sha("crm-9")}, ["user.external_id"], id="external-id"
        ),
        pytest.param({"ip": " 203.0.113.9"}, {"ip": "sha256:" + sha("203.0.113.9")}, ["user.ip"], id="ip"),
        pytest.param({"email": 42}, {"email": "[redacted]"}, ["user.email"], id="wrong-typed-email"),
        pytest.param({"phone": ["+14155552671"]}, {"phone": "[redacted]"}, ["user.phone"], id="wrong-typed-phone"),
        pytest.param(
            {"email": "a@b.co", "phone": "+14155552671", "external_id": "X", "ip": "1.2.3.4", "user_agent": "UA"},
            {
                "email": "sha256:" + sha("a@b.co"),
                "phone": "sha256:" + sha("+14155552671"),
                "external_id": "sha256:" + sha("x"),
                "ip": "sha256:" + sha("1.2.3.4"),
                "user_agent": "UA",
            },
            ["user.email", "user.phone", "user.external_id", "user.ip"],
            id="all",
        ),
        pytest.param({"email": "", "phone": None}, {"email": "", "phone": None}, [], id="empty-and-null-kept"),
        pytest.param("bob@example.com", "[redacted]", ["user"], id="user-not-an-object"),
        pytest.param(["bob@example.com"], "[redacted]", ["user"], id="user-a-list"),
    ],
)
def test_personal_fields_are_redacted_and_listed(user: Any, expected_user: Any, redacted: list[str]) -> None:
    original = f.conversion("cv-1", status="paid", user=user)
    body = record(orjson.dumps(original))
    assert body["redacted_fields"] == redacted
    kept = orjson.loads(body["value"])
    assert kept["user"] == expected_user
    assert {k: v for k, v in kept.items() if k != "user"} == {k: v for k, v in original.items() if k != "user"}
    assert "bob@example.com" not in body["value"].lower()


@pytest.mark.parametrize(
    ("value", "expected", "redacted"),
    [
        pytest.param(b"not json bob@example.com", "not json [email redacted]", ["text:email"], id="not-json"),
        pytest.param(
            b'{"user": {"email": "a.b+c@mail.example.org"}, oops',
            '{"user": {"email": "[email redacted]"}, oops',
            ["text:email"],
            id="broken-json",
        ),
        pytest.param(b"x@y.co and Z@W.ORG", "[email redacted] and [email redacted]", ["text:email"], id="two-emails"),
        pytest.param(b'"bob@example.com"', '"[email redacted]"', ["text:email"], id="json-string"),
        pytest.param(b'["bob@example.com"]', '["[email redacted]"]', ["text:email"], id="json-array"),
        pytest.param(b"no personal data @ all", "no personal data @ all", [], id="nothing-to-mask"),
    ],
)
def test_emails_in_text_are_masked(value: bytes, expected: str, redacted: list[str]) -> None:
    body = record(value)
    assert (body["value"], body["value_encoding"], body["redacted_fields"]) == (expected, "text", redacted)


def test_redact_personal_data_of_binary_is_base64() -> None:
    assert redact_personal_data(b"\x80") == (base64.b64encode(b"\x80").decode(), "base64", [])


# --- through the processor -----------------------------------------------------------------------------


def test_processor_writes_invalid_conversions_with_their_position_and_no_raw_pii() -> None:
    email = "Private.Person@Example.com"
    values: list[dict[str, Any] | bytes | None] = [
        f.conversion("cv-1", status="paid", user={"email": email, "phone": "+1 415 555 2671"}),
        b"\xff\xfenot utf8",
        None,
        b"{broken " + email.encode(),
        f.conversion("cv-5", user=email),
    ]
    records = [f.source_record(value, key=f"k-{i}", partition=2, offset=100 + i) for i, value in enumerate(values)]
    result = f.processor(f.compiled("camp-1", f.s2s_entry())).process(records)
    assert {m.topic for m in result.messages} == {"conversions.invalid"}
    assert [m.key for m in result.messages] == [f"k-{i}".encode() for i in range(5)]
    bodies = [orjson.loads(m.value) for m in result.messages]
    for i, body in enumerate(bodies):
        assert f.schema_errors("invalid-record", body) == []
        assert body["source"] == {"topic": "conversions", "partition": 2, "offset": 100 + i}
        assert body["rejected_at"] == f.MATCHED_AT.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    for message in result.messages:
        assert b"private.person" not in message.value.lower()
        assert b"555 2671" not in message.value
    assert [b["error"]["reason"] for b in bodies] == [
        "invalid_value",
        "not_utf8",
        "not_object",
        "not_json",
        "wrong_type",
    ]
    assert result.invalid == {"invalid_value": 1, "not_utf8": 1, "not_object": 1, "not_json": 1, "wrong_type": 1}
    assert bodies[0]["redacted_fields"] == ["user.email", "user.phone"]
    assert bodies[4]["redacted_fields"] == ["user"]


# --- bounded records and personal data in every form (issue 8: defects 1 and 7) -----------------------

# What the worker's producer can always write: far below Kafka's default 1 MiB message limit.
RECORD_LIMIT = 256 * 1024


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(b"\x01" * 200_000, id="control-bytes-escape-to-six"),
        pytest.param(b"\xff" * 200_000, id="not-utf8-as-base64"),
        pytest.param(orjson.dumps({"conversion_id": "cv-1", "subs": {"s": "x" * 1_200_000}}), id="huge-json"),
        pytest.param(b'{"user": {"email": "' + b"a" * 900_000 + b'@example.com"}}', id="huge-with-pii"),
    ],
)
def test_a_record_too_large_to_keep_is_shrunk_to_a_bounded_useful_one(value: bytes) -> None:
    error = InvalidInput("oversized", "the record is larger than MAX_CONVERSION_BYTES")
    body = record(value, error=error)
    assert len(orjson.dumps(body)) < RECORD_LIMIT
    assert body["value_truncated"] is True
    assert body["value_bytes"] == len(value)
    assert body["value_sha256"] == hashlib.sha256(value).hexdigest()
    assert body["error"]["reason"] == "oversized"
    assert body["source"] == SOURCE
    assert body["value"]  # a prefix, to recognise it by
    assert b"@example.com" not in orjson.dumps(body)


def test_a_value_within_the_limit_is_kept_whole() -> None:
    value = orjson.dumps({"conversion_id": "cv-1", "subs": {"s": "x" * 60_000}})
    body = record(value)
    assert body["value"] == value.decode()
    assert "value_truncated" not in body


@pytest.mark.parametrize(
    ("value", "secret_parts", "redacted"),
    [
        pytest.param(b"call +44 7911 123456 from 203.0.113.9", [b"7911", b"203.0.113"], ["text:ip", "text:phone"]),
        pytest.param(b"clickid=1&ip=2001:db8:85a3::8a2e:370:7334", [b"2001:db8"], ["text:ip"]),
        pytest.param(b"phone (415) 555-2671 end", [b"555-2671"], ["text:phone"]),
        pytest.param(b'["x", "bob@example.com", "10.1.2.3"]', [b"bob@", b"10.1.2.3"], ["text:email", "text:ip"]),
    ],
)
def test_phones_and_ips_in_text_are_masked(value: bytes, secret_parts: list[bytes], redacted: list[str]) -> None:
    body = record(value)
    assert sorted(body["redacted_fields"]) == sorted(redacted)
    for part in secret_parts:
        assert part not in orjson.dumps(body)


def test_personal_data_inside_a_value_that_is_not_utf8_is_masked_and_the_other_bytes_kept() -> None:
    value = b"\xff\xfe user=bob@example.com phone=+1 415 555 2671 ip=198.51.100.7 \x80"
    body = record(value, error=InvalidInput("not_utf8", "record value is not UTF-8"))
    assert body["value_encoding"] == "base64"
    kept = base64.b64decode(body["value"])
    assert kept.startswith(b"\xff\xfe user=") and kept.endswith(b" \x80")
    for part in (b"bob@example.com", b"555 2671", b"198.51.100.7"):
        assert part not in kept
    assert sorted(body["redacted_fields"]) == ["text:email", "text:ip", "text:phone"]


def test_unknown_user_fields_are_hashed_too() -> None:
    original = f.conversion(
        "cv-1", status="paid", user={"name": "Bob Smith", "address": {"city": "X"}, "user_agent": "UA"}
    )
    body = record(orjson.dumps(original))
    kept = orjson.loads(body["value"])
    assert kept["user"] == {"name": "sha256:" + sha("Bob Smith"), "address": "[redacted]", "user_agent": "UA"}
    assert body["redacted_fields"] == ["user.name", "user.address"]


def test_emails_and_ips_elsewhere_in_a_json_object_are_masked() -> None:
    original = f.conversion("cv-1", status="paid", subs={"sub1": "bob@example.com", "sub2": "from 203.0.113.9"})
    body = record(orjson.dumps(original))
    kept = orjson.loads(body["value"])
    assert kept["subs"] == {"sub1": "[email redacted]", "sub2": "from [ip redacted]"}
    assert body["redacted_fields"] == ["text:email", "text:ip"]
    assert kept["occurred_at"] == original["occurred_at"]  # a time of day is not an IPv6 address


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(b"bob@example.com", id="email"),
        pytest.param(b"+14155552671", id="phone"),
        pytest.param(b"203.0.113.9", id="ip"),
        pytest.param(b"k" * 5000, id="longer-than-any-id"),
    ],
)
def test_a_key_holding_personal_data_is_kept_as_its_hash_in_the_record_and_as_the_kafka_key(key: bytes) -> None:
    body = record(b"{}", key=key)
    expected = "sha256:" + hashlib.sha256(key).hexdigest()
    assert (body["key"], body["key_encoding"], body["redacted_fields"]) == (expected, "text", ["key"])
    result = f.processor(f.compiled("camp-1", f.s2s_entry())).process([f.source_record(b"{nope", key=key)])
    [message] = result.messages
    assert message.key == expected.encode()
    assert key not in message.value


def test_masking_hostile_text_takes_linear_time() -> None:
    """A megabyte built to make a backtracking pattern quadratic is masked about as fast as it is scanned."""
    import time

    hostile = [
        "a" * 1_000_000,
        "a." * 500_000,
        "@" * 1_000_000,
        "a@" * 500_000,
        "1." * 500_000,
        "1:" * 500_000,
        "1 " * 500_000,
        ("x" * 60 + "@") * 16_000,
    ]
    for text in hostile:
        started = time.perf_counter()
        text.replace("@", "@").lower()  # a baseline in the same run: two linear passes over the text
        baseline = time.perf_counter() - started
        started = time.perf_counter()
        invalid_records_mask(text)
        took = time.perf_counter() - started
        # Linear regexes over 1 MB take tens of milliseconds; a quadratic one, minutes.
        assert took < max(2.0, 2000 * baseline), (text[:12], took, baseline)


def invalid_records_mask(text: str) -> str:
    from streams.core.invalid_records import mask_text

    return mask_text(text)[0]
