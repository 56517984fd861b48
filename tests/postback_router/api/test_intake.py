"""Conversion intake (postback_router/api/intake.py): postback fields -> a conversion event."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from postback_router.api.intake import (
    PARAMETERS,
    PostbackRefused,
    RefusedField,
    conversion_from_postback,
    derive_conversion_id,
    holds_macro,
    keep_first_occurred_at,
    read_fields,
    split_urlencoded,
)
from streams.core.schema_checks import full_validator

RECEIVED_AT = datetime(2026, 11, 22, 9, 1, 2, 345678, tzinfo=UTC)
MAX_BYTES = 65_536


def take_in(**fields: str) -> dict[str, Any]:
    return conversion_from_postback(fields, RECEIVED_AT, MAX_BYTES)


def failing_fields(**fields: str) -> dict[str, str]:
    with pytest.raises(PostbackRefused) as caught:
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
    required = "is required (or one of click_id, cid, subid)"
    assert failing_fields() == {"clickid": required}  # campaign_id may be left out: the click has it
    assert failing_fields(clickid="", campaign_id="k") == {"clickid": required}
    assert failing_fields(cid="", subid="", campaign_id="k") == {"clickid": required}


def test_every_failing_field_is_named_as_sent() -> None:
    errors = failing_fields(
        clickid="c",
        campaign_id="k",
        status="sold",
        sum="12,50",
        currency="usd",
        sub3="x" * 1025,
        gclid="g" * 513,
        type="t" * 129,
    )
    assert set(errors) == {"status", "sum", "currency", "sub3", "gclid", "type"}
    assert errors["status"].startswith("must be one of approved, pending, declined, other, approve, ")
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
    with pytest.raises(PostbackRefused) as caught:
        conversion_from_postback(fields, RECEIVED_AT, max_bytes=4096)
    assert caught.value.errors[0].field == "(request)"
    assert "4096" in caught.value.errors[0].message


def test_every_parameter_schema_accepts_the_empty_value() -> None:
    import jsonschema

    for name, schema in PARAMETERS.items():
        valid = jsonschema.Draft202012Validator(schema).is_valid("")
        assert valid, name  # the click id is required under one of four names: the form's schema says it


# -- what a network sends by mistake: unfilled macros, text that is not UTF-8, a field given twice


def refusal(fields: dict[str, str]) -> PostbackRefused:
    with pytest.raises(PostbackRefused) as caught:
        conversion_from_postback(fields, RECEIVED_AT, MAX_BYTES)
    return caught.value


MACROS = [
    "{clickid}",
    "{sub1}",
    "{SUB_1}",
    "[CLICK_ID]",
    "#clickid#",
    "#s1#",
    "{{clickid}}",
    "${clickid}",
    "{aff_sub.2}",
    "{transaction-id}",
    "{_id}",
    "%7Bclickid%7D",  # percent-encoded braces, still there after the query string was decoded once
    "%7bclickid%7d",
    "%5BCLICK_ID%5D",
    "%23clickid%23",
    "%257Bclickid%257D",  # encoded twice
    "%7B%7Bclickid%7D%7D",
    "{clickid%7D",  # one delimiter encoded, the other not
    "rt-{sub2}",  # filled in part
    "{sub2}-rt",
    "a" * 200 + "[CLICK_ID]",
]

LOOK_ALIKES = [
    "#",
    "[",
    "a#b",
    "C#",
    "x[1",
    "a{b",
    "{a]",  # delimiters that do not pair
    "[a}",
    "{}",
    "[]",
    "##",
    "[1]",  # a name starts with a letter or _
    "#2#",
    "{1a}",
    '{"a":1}',
    "{a b}",
    "{a@b.example}",
    "{" + "a" * 65 + "}",  # longer than any macro name
    "%clickid%",
    "%%CLICK_ID%%",
    "<clickid>",
    "100%",
    "%7B",
    "%7Bclickid",
    "%7B%7D",
    "%zz{",
    "fb.1.1554763741205.AbCdEf-_0123",
    "Cj0KCQiA-abc_DEF",
    "{ clickid }",
]


@pytest.mark.parametrize("value", MACROS)
def test_an_unfilled_macro_is_refused_naming_the_field(value: str) -> None:
    assert holds_macro(value)
    refused = refusal({"clickid": value, "campaign_id": "k"})
    assert refused.reason == "unfilled_macro"
    (error,) = refused.errors
    assert (error.field, error.reason) == ("clickid", "unfilled_macro")
    assert "macro" in error.message and value not in error.message  # never echoes the value


@pytest.mark.parametrize("value", LOOK_ALIKES)
def test_look_alikes_are_not_macros(value: str) -> None:
    assert not holds_macro(value)
    event = take_in(clickid="c", campaign_id="k", sub1=value, txid=value)
    assert event["subs"] == {"sub1": value} and event["transaction_id"] == value


@pytest.mark.parametrize("value", MACROS + LOOK_ALIKES)
def test_the_openapi_parameter_schemas_say_the_same(value: str) -> None:
    import jsonschema

    valid = jsonschema.Draft202012Validator(PARAMETERS["sub1"]).is_valid(value)
    assert valid is not holds_macro(value)


@pytest.mark.parametrize("name", list(PARAMETERS))
def test_every_field_intake_reads_is_checked_for_macros(name: str) -> None:
    fields = {"clickid": "c", "campaign_id": "k", name: "{" + name + "}"}
    refused = refusal(fields)
    assert [(e.field, e.reason) for e in refused.errors] == [(name, "unfilled_macro")]


def test_unknown_fields_holding_macros_are_still_ignored() -> None:
    assert "aff_click" not in str(take_in(clickid="c", campaign_id="k", aff_click="{aff_click}"))


def test_the_reason_of_a_refusal_and_of_each_field() -> None:
    mixed = refusal({"campaign_id": "k", "sum": "{payout}", "currency": "usd"})
    assert mixed.reason == "unfilled_macro"  # the first thing to fix at the network
    assert [(e.field, e.reason) for e in mixed.errors] == [
        ("clickid", "missing_field"),
        ("sum", "unfilled_macro"),  # refused for the macro only, not as a bad decimal too
        ("currency", "invalid_value"),
    ]
    plain = refusal({"clickid": "c", "campaign_id": "k", "currency": "usd"})
    assert (plain.reason, plain.errors) == (
        "invalid_value",
        [RefusedField("currency", "must be an ISO 4217 code in capitals, such as USD", "invalid_value")],
    )


def test_a_lone_surrogate_in_a_value_is_refused() -> None:
    refused = refusal({"clickid": "c\ud800", "campaign_id": "k"})
    assert refused.reason == "not_utf8"
    assert [(e.field, e.reason) for e in refused.errors] == [("clickid", "not_utf8")]


@pytest.mark.parametrize(
    ("raw", "pairs"),
    [
        (b"", []),
        (b"clickid=a&campaign_id=k", [(b"clickid", b"a"), (b"campaign_id", b"k")]),
        (b"sub1=a+b%2Bc%26d", [(b"sub1", b"a b+c&d")]),  # + is a space, %2B a plus
        (b"sub1=%7Bx%7D", [(b"sub1", b"{x}")]),  # decoded once: %257B would stay %7B
        (b"sub1=%257Bx%257D", [(b"sub1", b"%7Bx%7D")]),
        (b"sub1=%zz%4", [(b"sub1", b"%zz%4")]),  # not an escape: kept as sent
        (b"clickid&&sub1=", [(b"clickid", b""), (b"sub1", b"")]),
        (b"sub1=a=b", [(b"sub1", b"a=b")]),
        (b"%63lickid=%C3%A9", [(b"clickid", b"\xc3\xa9")]),
    ],
)
def test_split_urlencoded(raw: bytes, pairs: list[tuple[bytes, bytes]]) -> None:
    assert split_urlencoded(raw) == pairs


def from_query(raw: bytes, charset: str = "utf-8") -> tuple[list[tuple[bytes, bytes]], str]:
    return split_urlencoded(raw), charset


def from_text(*pairs: tuple[str, str]) -> tuple[list[tuple[bytes, bytes]], str]:
    return [(name.encode(), value.encode("utf-8", "surrogatepass")) for name, value in pairs], "utf-8"


def test_utf8_values_decode() -> None:
    assert read_fields(from_query(b"clickid=%C3%A9%F0%9F%98%80&sub1=caf\xc3\xa9")) == (
        {"clickid": "é😀", "sub1": "café"},
        [],
    )


@pytest.mark.parametrize(
    "encoded",
    [
        b"%C3%28",  # an invalid continuation byte
        b"%ED%A0%80",  # a UTF-16 surrogate (U+D800) encoded as UTF-8
        b"%ED%B0%80",  # U+DC00
        b"%FF",
        b"%C3",  # cut short
        b"%E2%82",
        b"%C0%AF",  # an overlong encoding of /
        b"%F4%90%80%80",  # beyond U+10FFFF
        b"ok%80",
        b"\xff",  # a raw byte in a form body
    ],
)
def test_values_that_are_not_utf8_are_refused_naming_the_field(encoded: bytes) -> None:
    fields, mistakes = read_fields(from_query(b"campaign_id=k&sub3=" + encoded + b"&clickid=" + encoded))
    assert fields == {"campaign_id": "k"}  # nothing replaced with U+FFFD
    assert [(e.field, e.reason) for e in mistakes] == [("sub3", "not_utf8"), ("clickid", "not_utf8")]
    assert PostbackRefused(mistakes).reason == "not_utf8"


def test_a_lone_surrogate_in_text_is_refused() -> None:
    fields, mistakes = read_fields(from_text(("clickid", "\udcff"), ("campaign_id", "k")))
    assert fields == {"campaign_id": "k"}
    assert [(e.field, e.reason) for e in mistakes] == [("clickid", "not_utf8")]


def test_fields_intake_does_not_read_are_ignored_whatever_their_bytes_or_repeats() -> None:
    raw = b"clickid=c&country=M%FCnchen&%FF=1&aff=1&aff=2&campaign_id=k"
    assert read_fields(from_query(raw)) == ({"clickid": "c", "campaign_id": "k"}, [])


def test_a_declared_charset_decodes_the_form() -> None:
    assert read_fields(from_query(b"sub1=M%FCnchen", "iso-8859-1")) == ({"sub1": "München"}, [])
    _, mistakes = read_fields(from_query(b"sub1=M%FCnchen", "ascii"))
    assert [(e.field, e.message, e.reason) for e in mistakes] == [("sub1", "is not text in ascii", "not_utf8")]


@pytest.mark.parametrize(
    ("sources", "repeated"),
    [
        ([[("clickid", "a"), ("clickid", "b")]], ["clickid"]),
        ([[("clickid", "a"), ("clickid", "a")]], ["clickid"]),  # even with the same value
        ([[("sub1", ""), ("sub1", "x")]], ["sub1"]),
        ([[("clickid", "a"), ("status", "pending")], [("status", "approved")]], ["status"]),  # query, then form
        ([[("secret", "s"), ("sub2", "x")], [("secret", "t"), ("sub2", "y")]], ["sub2"]),  # secret: only compared
        ([[("sum", "1"), ("sum", "2"), ("sum", "3"), ("txid", "a"), ("txid", "b")]], ["sum", "txid"]),
    ],
)
def test_a_field_given_more_than_once_is_refused_naming_it(
    sources: list[list[tuple[str, str]]], repeated: list[str]
) -> None:
    fields, mistakes = read_fields(*(from_text(*pairs) for pairs in sources))
    assert [(e.field, e.reason) for e in mistakes] == [(name, "repeated_field") for name in repeated]
    assert PostbackRefused(mistakes).reason == "repeated_field"
    assert fields[repeated[0]] == sources[0][[n for n, _ in sources[0]].index(repeated[0])][1]  # the first value


def test_the_secret_is_only_compared_never_refused() -> None:
    fields, mistakes = read_fields(from_query(b"secret=%FF&secret=s1&clickid=c"), from_text(("secret", "s2")))
    assert (fields, mistakes) == ({"secret": "s1", "clickid": "c"}, [])  # its first value that decodes


def test_a_field_both_repeated_and_not_utf8_is_named_for_both() -> None:
    _, mistakes = read_fields(from_query(b"clickid=%FF&clickid=a"))
    assert [(e.field, e.reason) for e in mistakes] == [("clickid", "not_utf8"), ("clickid", "repeated_field")]
    assert PostbackRefused(mistakes).reason == "not_utf8"


def test_a_repeat_keeps_the_first_occurred_at() -> None:
    first = take_in(clickid="c", campaign_id="k", status="pending")
    later = conversion_from_postback(
        {"clickid": "c", "campaign_id": "k", "status": "approved"}, RECEIVED_AT + timedelta(hours=2), MAX_BYTES
    )
    assert later["occurred_at"] != first["occurred_at"]
    kept = keep_first_occurred_at(later, first)
    assert kept == {**later, "occurred_at": first["occurred_at"]}
    assert keep_first_occurred_at(later, None) == later  # not known: the time it came in
