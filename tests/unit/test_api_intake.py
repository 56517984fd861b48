"""Conversion intake (postback_router/api/intake.py): postback fields -> a conversion event."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from postback_router.api.intake import PARAMETERS, conversion_from_postback, derive_conversion_id
from streams.errors import InvalidInput
from streams.schema_checks import full_validator

RECEIVED_AT = datetime(2026, 11, 22, 9, 1, 2, 345678, tzinfo=UTC)
MAX_BYTES = 65_536


def take_in(**fields: str) -> dict[str, Any]:
    return conversion_from_postback(fields, RECEIVED_AT, MAX_BYTES)


def failing_fields(**fields: str) -> dict[str, str]:
    with pytest.raises(InvalidInput) as caught:
        take_in(**fields)
    return {error.field: error.message for error in caught.value.errors}


def test_fields_map_to_a_conversion_event() -> None:
    event = take_in(
        clickid="rt-1",
        campaign_id="casino-de",
        type="deposit",
        status="pending",
        payout="40.10",
        currency="EUR",
        txid="tx-9",
        conversion_id="cv-1",
        offer_source_id="os-1",
        sub1="a b",
        sub20="z",
        gclid="g-1",
        external_id="src-1",
        fbc="fb.1.1.abc",
    )
    assert event == {
        "conversion_id": "cv-1",
        "click_id": "rt-1",
        "campaign_id": "casino-de",
        "offer_source_id": "os-1",
        "type": "deposit",
        "status": "pending",
        "payout": "40.10",  # kept exactly as sent: a decimal string, never a float
        "currency": "EUR",
        "transaction_id": "tx-9",
        "occurred_at": "2026-11-22T09:01:02.345Z",
        "click_ids": {"external_id": "src-1", "gclid": "g-1", "fbc": "fb.1.1.abc"},
        "subs": {"sub1": "a b", "sub20": "z"},
    }
    assert list(full_validator("conversion").iter_errors(event)) == []


def test_the_minimal_postback_gets_the_defaults_and_no_empty_sections() -> None:
    event = take_in(clickid="c", campaign_id="k")
    assert event == {
        "conversion_id": derive_conversion_id("k", "c", "conversion", None),
        "click_id": "c",
        "campaign_id": "k",
        "type": "conversion",
        "occurred_at": "2026-11-22T09:01:02.345Z",
    }


def test_occurred_at_is_the_receive_time_in_utc() -> None:
    berlin = RECEIVED_AT.astimezone(timezone(timedelta(hours=1)))
    event = conversion_from_postback({"clickid": "c", "campaign_id": "k"}, berlin, MAX_BYTES)
    assert event["occurred_at"] == "2026-11-22T09:01:02.345Z"


@pytest.mark.parametrize(
    ("fields", "payout"),
    [
        ({"sum": "12.5"}, "12.5"),
        ({"payout": "7", "sum": "12.5"}, "7"),  # payout wins over sum
        ({"payout": "", "sum": "3.25"}, "3.25"),  # an empty payout macro counts as absent
        ({"payout": "0.000000000001"}, "0.000000000001"),
        ({"payout": "123456789012345678.123456789012"}, "123456789012345678.123456789012"),
    ],
)
def test_payout_or_sum_kept_exact(fields: dict[str, str], payout: str) -> None:
    assert take_in(clickid="c", campaign_id="k", **fields)["payout"] == payout


def test_empty_values_count_as_absent_and_unknown_fields_are_ignored() -> None:
    event = take_in(
        clickid="c", campaign_id="k", status="", currency="", txid="", sub2="", gclid="", affiliate_macro="{aff}"
    )
    assert "status" not in event and "currency" not in event and "transaction_id" not in event
    assert "subs" not in event and "click_ids" not in event
    assert "affiliate_macro" not in str(event)


def test_conversion_id_is_derived_from_campaign_click_type_and_txid() -> None:
    first = take_in(clickid="c", campaign_id="k", type="deposit", txid="t", status="pending")["conversion_id"]
    # the same click, type and transaction with another status: an update of the same conversion
    assert take_in(clickid="c", campaign_id="k", type="deposit", txid="t", status="approved")["conversion_id"] == first
    others = {
        take_in(clickid="c", campaign_id="k", type="lead", txid="t")["conversion_id"],
        take_in(clickid="c", campaign_id="k", type="deposit", txid="t2")["conversion_id"],
        take_in(clickid="c2", campaign_id="k", type="deposit", txid="t")["conversion_id"],
        take_in(clickid="c", campaign_id="k2", type="deposit", txid="t")["conversion_id"],
    }
    assert first not in others and len(others) == 4
    # a type left out is the default type, and the id says so
    assert (
        take_in(clickid="c", campaign_id="k")["conversion_id"]
        == (take_in(clickid="c", campaign_id="k", type="conversion")["conversion_id"])
    )


def test_derived_ids_do_not_collide_when_fields_shift_text_between_them() -> None:
    assert derive_conversion_id("a", "b-c", "t", None) != derive_conversion_id("a-b", "c", "t", None)
    assert derive_conversion_id("k", "c", "t", None) == derive_conversion_id("k", "c", "t", "")


def test_a_given_conversion_id_is_kept() -> None:
    assert take_in(clickid="c", campaign_id="k", conversion_id="net-42")["conversion_id"] == "net-42"


def test_missing_required_fields_are_named_as_sent() -> None:
    assert failing_fields() == {"clickid": "is required", "campaign_id": "is required"}
    assert failing_fields(clickid="", campaign_id="k") == {"clickid": "is required"}


def test_every_failing_field_is_named_as_sent() -> None:
    errors = failing_fields(
        clickid="c",
        campaign_id="k",
        status="sale",
        sum="12,50",
        currency="usd",
        sub3="x" * 1025,
        gclid="g" * 513,
        type="t" * 129,
    )
    assert set(errors) == {"status", "sum", "currency", "sub3", "gclid", "type"}
    assert errors["status"] == "must be one of approved, pending, declined, other"
    assert errors["sub3"] == "must be at most 1024 characters"


@pytest.mark.parametrize(
    "bad", ["-1", "1e3", "NaN", "1.", ".5", "1234567890123456789", "1.1234567890123", "12\n", " 12", "１２"]
)
def test_payouts_that_are_not_plain_decimals_are_refused(bad: str) -> None:
    assert set(failing_fields(clickid="c", campaign_id="k", payout=bad)) == {"payout"}


def test_a_currency_with_a_trailing_newline_is_refused() -> None:
    assert set(failing_fields(clickid="c", campaign_id="k", currency="USD\n")) == {"currency"}


def test_an_invalid_sum_is_refused_even_when_payout_is_given() -> None:
    assert set(failing_fields(clickid="c", campaign_id="k", payout="1", sum="x")) == {"sum"}


def test_error_messages_do_not_echo_values() -> None:
    secret_looking = "ann@example.com"
    errors = failing_fields(clickid="c", campaign_id="k", status=secret_looking, currency=secret_looking)
    assert secret_looking not in str(errors)


def test_the_workers_size_limit_applies() -> None:
    fields = {"clickid": "c", "campaign_id": "k", **{f"sub{n}": "x" * 1000 for n in range(1, 21)}}
    with pytest.raises(InvalidInput) as caught:
        conversion_from_postback(fields, RECEIVED_AT, max_bytes=4096)
    assert caught.value.errors[0].field == "(request)"
    assert "4096" in caught.value.errors[0].message


def test_every_parameter_schema_accepts_the_empty_value_unless_required() -> None:
    import jsonschema

    for name, schema in PARAMETERS.items():
        valid = jsonschema.Draft202012Validator(schema).is_valid("")
        assert valid is (name not in ("clickid", "campaign_id")), name
