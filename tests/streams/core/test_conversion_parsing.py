"""Parsing `conversions` records (contract §3): every refusal has a bounded reason and never echoes the value."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson
import pytest

from schemas.errors import InvalidInput
from streams.core.conversion import parse_conversion
from tests import factories as f

MAX_BYTES = 65_536
SECRET_EMAIL = "leaky.person@private.example"


def refusal(value: bytes | None, key: bytes | None = b"cv-1", max_bytes: int = MAX_BYTES) -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        parse_conversion(key, value, max_bytes)
    return caught.value


def without(name: str) -> bytes:
    event = f.conversion("cv-1")
    del event[name]
    return orjson.dumps(event)


def event(**fields: Any) -> bytes:
    data = f.conversion("cv-1")
    data.update(fields)
    return orjson.dumps({k: v for k, v in data.items() if v is not ...})


INVALID = [
    # encoding and shape
    pytest.param(b"\xff\xfe{}", "not_utf8", None, id="not-utf8"),
    pytest.param(b'{"conversion_id": "\xc3\x28"}', "not_utf8", None, id="invalid-utf8-inside-json"),
    pytest.param(b"{nope", "not_json", None, id="not-json"),
    pytest.param(b"", "not_json", None, id="empty-bytes"),
    pytest.param(b'{"conversion_id": "cv-1",}', "not_json", None, id="trailing-comma"),
    pytest.param(b"[1, 2]", "not_object", None, id="json-array"),
    pytest.param(b'"cv-1"', "not_object", None, id="json-string"),
    pytest.param(b"42", "not_object", None, id="json-number"),
    pytest.param(b"null", "not_object", None, id="json-null"),
    pytest.param(None, "not_object", None, id="null-value"),
    # required fields
    pytest.param(without("conversion_id"), "missing_field", "conversion_id", id="missing-conversion_id"),
    pytest.param(without("click_id"), "missing_field", "click_id", id="missing-click_id"),
    # without campaign_id (completed from its click) the key must be the click_id, not the conversion_id
    pytest.param(without("campaign_id"), "key_mismatch", "click_id", id="missing-campaign_id-keyed-by-conversion"),
    pytest.param(event(campaign_id=""), "invalid_value", "campaign_id", id="campaign_id-empty"),
    pytest.param(without("occurred_at"), "missing_field", "occurred_at", id="missing-occurred_at"),
    pytest.param(b"{}", "missing_field", "conversion_id", id="empty-object"),
    # wrong types
    pytest.param(event(conversion_id=1), "wrong_type", "conversion_id", id="conversion_id-number"),
    pytest.param(event(click_id=None), "wrong_type", "click_id", id="click_id-null"),
    pytest.param(event(campaign_id=["camp-1"]), "wrong_type", "campaign_id", id="campaign_id-list"),
    pytest.param(event(type=5), "wrong_type", "type", id="type-number"),
    pytest.param(event(type=None), "wrong_type", "type", id="type-null-schema-says-string"),
    pytest.param(event(status=1), "wrong_type", "status", id="status-number"),
    pytest.param(event(payout=True), "wrong_type", "payout", id="payout-bool"),
    pytest.param(event(payout={"amount": 1}), "wrong_type", "payout", id="payout-object"),
    pytest.param(event(occurred_at=1_795_168_800), "wrong_type", "occurred_at", id="occurred_at-number"),
    pytest.param(event(user="someone"), "wrong_type", "user", id="user-string"),
    pytest.param(event(user={"email": 5}), "wrong_type", "user.email", id="user-email-number"),
    pytest.param(event(subs={"sub1": 7}), "wrong_type", "subs.sub1", id="sub-number"),
    pytest.param(event(click_ids=["g"]), "wrong_type", "click_ids", id="click_ids-list"),
    # invalid values
    pytest.param(event(status="paid"), "invalid_value", "status", id="unknown-status"),
    pytest.param(event(status="Approved"), "invalid_value", "status", id="status-case-sensitive"),
    pytest.param(event(payout=-1), "invalid_value", "payout", id="negative-payout-number"),
    pytest.param(event(payout=-0.01), "invalid_value", "payout", id="negative-payout-float"),
    pytest.param(event(payout="-1"), "invalid_value", "payout", id="negative-payout-string"),
    pytest.param(event(payout="-0.01"), "invalid_value", "payout", id="negative-payout-string-fraction"),
    pytest.param(event(payout="ten"), "invalid_value", "payout", id="payout-not-a-number"),
    pytest.param(event(payout="1e3"), "invalid_value", "payout", id="payout-exponent-string"),
    pytest.param(event(payout="NaN"), "invalid_value", "payout", id="payout-nan-string"),
    pytest.param(event(payout=""), "invalid_value", "payout", id="payout-empty-string"),
    pytest.param(event(currency="usd"), "invalid_value", "currency", id="currency-lowercase"),
    pytest.param(event(currency="US"), "invalid_value", "currency", id="currency-two-letters"),
    pytest.param(event(currency="EURO"), "invalid_value", "currency", id="currency-four-letters"),
    pytest.param(event(currency=""), "invalid_value", "currency", id="currency-empty"),
    pytest.param(event(country="GBR"), "invalid_value", "country", id="country-alpha-3"),
    pytest.param(event(country="G1"), "invalid_value", "country", id="country-with-digit"),
    pytest.param(event(country=""), "invalid_value", "country", id="country-empty"),
    pytest.param(event(country=44), "wrong_type", "country", id="country-number"),
    pytest.param(event(occurred_at="2026-11-20T10:00:00"), "invalid_value", "occurred_at", id="occurred_at-no-tz"),
    pytest.param(event(occurred_at="2026-11-20"), "invalid_value", "occurred_at", id="occurred_at-date-only"),
    pytest.param(event(occurred_at="yesterday"), "invalid_value", "occurred_at", id="occurred_at-malformed"),
    pytest.param(event(occurred_at="2026-13-20T10:00:00Z"), "invalid_value", "occurred_at", id="occurred_at-month-13"),
    pytest.param(event(occurred_at="2026-02-30T10:00:00Z"), "invalid_value", "occurred_at", id="occurred_at-feb-30"),
    pytest.param(event(occurred_at="20/11/2026 10:00"), "invalid_value", "occurred_at", id="occurred_at-local-format"),
    pytest.param(event(conversion_id=""), "invalid_value", "conversion_id", id="conversion_id-empty"),
    pytest.param(event(type=""), "invalid_value", "type", id="type-empty"),
    pytest.param(event(subs={"bad key": "x"}), "invalid_value", "subs", id="sub-key-with-space"),
    pytest.param(event(click_ids={"unknown": "x"}), "invalid_value", "click_ids", id="unknown-click-id"),
    pytest.param(event(user={"name": "Jane"}), "invalid_value", "user", id="unknown-user-field"),
    pytest.param(event(click_id="c" * 513), "invalid_value", "click_id", id="click_id-too-long"),
]


@pytest.mark.parametrize(("value", "reason", "field"), INVALID)
def test_invalid_conversion(value: bytes | None, reason: str, field: str | None) -> None:
    error = refusal(value)
    assert (error.reason, error.field) == (reason, field)
    assert error.message
    assert str(error).startswith(reason + ": ")


@pytest.mark.parametrize(
    ("max_bytes", "reason"),
    [
        pytest.param(None, None, id="at-the-limit-accepted"),
        pytest.param(-1, "oversized", id="one-byte-over"),
    ],
)
def test_oversized(max_bytes: int | None, reason: str | None) -> None:
    value = event(subs={"pad": "x" * 300})
    limit = len(value) + (max_bytes or 0)
    if reason is None:
        assert parse_conversion(b"cv-1", value, limit).conversion_id == "cv-1"
    else:
        error = refusal(value, max_bytes=limit)
        assert error.reason == reason
        assert str(limit) in error.message


def test_oversized_is_checked_before_decoding() -> None:
    assert refusal(b"\xff" * 100, max_bytes=50).reason == "oversized"


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(b"cv-2", id="other-id"),
        pytest.param(None, id="null-key"),
        pytest.param(b"", id="empty-key"),
        pytest.param(b"CV-1", id="case-differs"),
        pytest.param(b"cv-1 ", id="trailing-space"),
    ],
)
def test_key_must_equal_conversion_id(key: bytes | None) -> None:
    error = refusal(event(), key=key)
    assert (error.reason, error.field) == ("key_mismatch", "conversion_id")


def test_unicode_key_equal_to_conversion_id_is_accepted() -> None:
    value = orjson.dumps(f.conversion("conversión-1"))
    assert parse_conversion("conversión-1".encode(), value, MAX_BYTES).conversion_id == "conversión-1"


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(event(conversion_id=[SECRET_EMAIL]), id="email-as-wrong-typed-id"),
        pytest.param(event(click_id={"email": SECRET_EMAIL}), id="email-in-object-click_id"),
        pytest.param(event(status=SECRET_EMAIL), id="email-as-status"),
        pytest.param(event(currency=SECRET_EMAIL), id="email-as-currency"),
        pytest.param(event(payout=SECRET_EMAIL), id="email-as-payout"),
        pytest.param(event(occurred_at=SECRET_EMAIL), id="email-as-occurred_at"),
        pytest.param(event(type=[SECRET_EMAIL]), id="email-in-list-type"),
        pytest.param(event(user=SECRET_EMAIL), id="email-as-user"),
        pytest.param(event(user={"email": [SECRET_EMAIL]}), id="email-wrong-typed-in-user"),
        pytest.param(event(user={"email": SECRET_EMAIL + "x" * 600}), id="email-too-long"),
        pytest.param(event(user={SECRET_EMAIL: "x"}), id="email-as-unknown-user-field"),
        pytest.param(event(click_ids={SECRET_EMAIL: "x"}), id="email-as-unknown-click-id"),
        pytest.param(event(subs={SECRET_EMAIL + " ": "x"}), id="email-as-bad-sub-key"),
        pytest.param(event(subs={"sub1": [SECRET_EMAIL]}), id="email-in-wrong-typed-sub"),
        pytest.param(b'{"conversion_id": "' + SECRET_EMAIL.encode() + b'", oops}', id="email-in-broken-json"),
        pytest.param(orjson.dumps(SECRET_EMAIL), id="email-as-whole-value"),
    ],
)
def test_error_messages_never_contain_the_value(value: bytes) -> None:
    error = refusal(value)
    texts = [error.message, str(error), error.field or "", *(e.field + e.message for e in error.errors)]
    for text in texts:
        assert "leaky.person" not in text, text
        assert "private.example" not in text, text


def test_every_error_lists_its_fields() -> None:
    error = refusal(without("click_id"))
    assert [(e.field, e.message) for e in error.errors] == [("click_id", "is required")]


# --- defaults --------------------------------------------------------------------------------------


def test_defaults_of_a_minimal_conversion() -> None:
    minimal = {"conversion_id": "cv-1", "click_id": "clk", "campaign_id": "camp-1", "occurred_at": f.OCCURRED_AT}
    conversion = parse_conversion(b"cv-1", orjson.dumps(minimal), MAX_BYTES)
    assert conversion.type == "conversion"
    assert conversion.currency == "USD"
    assert conversion.payout == Decimal(0)
    assert conversion.payout_text == "0"
    assert conversion.status is None  # resolved to the effective status by the matcher (contract §2.2)
    assert conversion.offer_source_id is None
    assert conversion.transaction_id is None
    assert (conversion.click_ids, conversion.user, conversion.subs) == ({}, {}, {})
    assert conversion.occurred_at_unix == f.OCCURRED_AT_UNIX


@pytest.mark.parametrize(
    ("fields", "attribute", "expected"),
    [
        pytest.param({"currency": None}, "currency", "USD", id="currency-null"),
        pytest.param({"payout": None}, "payout", Decimal(0), id="payout-null"),
        pytest.param({"status": None}, "status", None, id="status-null"),
        pytest.param({"offer_source_id": ""}, "offer_source_id", None, id="offer-source-empty"),
        pytest.param({"transaction_id": ""}, "transaction_id", None, id="transaction-empty"),
        pytest.param({"click_ids": None, "user": None, "subs": None}, "subs", {}, id="sections-null"),
        pytest.param({"click_ids": {"gclid": "G", "fbc": None, "fbp": ""}}, "click_ids", {"gclid": "G"}, id="ids"),
        pytest.param({"user": {"email": "a@b.co", "phone": None}}, "user", {"email": "a@b.co"}, id="user"),
        pytest.param({"type": "Custom Event"}, "type", "Custom Event", id="custom-type-kept"),
        pytest.param({"country": "gb"}, "country", "GB", id="country-upper-cased"),
        pytest.param({"country": "US"}, "country", "US", id="country"),
        pytest.param({"country": None}, "country", None, id="country-null"),
        pytest.param({"country": ...}, "country", None, id="country-absent"),
        pytest.param({"payout": "0012.50"}, "payout", Decimal("12.50"), id="payout-leading-zeros"),
        pytest.param({"payout": 0.1}, "payout", Decimal("0.1"), id="float-payout-exact"),
        pytest.param({"payout": 12.345}, "payout", Decimal("12.345"), id="float-12.345-exact"),
        pytest.param({"payout": 7}, "payout", Decimal(7), id="integer-payout"),
        pytest.param({"payout": "0"}, "payout", Decimal(0), id="zero-payout"),
        pytest.param({"extra": {"nested": True}}, "conversion_id", "cv-1", id="unknown-top-level-field-ignored"),
    ],
)
def test_defaults_and_kept_values(fields: dict[str, Any], attribute: str, expected: Any) -> None:
    conversion = parse_conversion(b"cv-1", event(**fields), MAX_BYTES)
    assert getattr(conversion, attribute) == expected


def test_payout_text_is_plain_decimal() -> None:
    assert parse_conversion(b"cv-1", event(payout=0.1), MAX_BYTES).payout_text == "0.1"
    assert parse_conversion(b"cv-1", event(payout="10.00"), MAX_BYTES).payout_text == "10"
