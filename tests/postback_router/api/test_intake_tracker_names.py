"""Tracker-style intake (postback_router/api/intake.py): the names networks give each field when they
call RedTrack, Voluum or Keitaro, and statuses mapped through status maps."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from postback_router.api.intake import (
    ALIASES,
    PARAMETERS,
    PostbackRefused,
    conversion_from_postback,
    derive_conversion_id,
)
from schemas.status_maps import folded
from streams.core.schema_checks import full_validator

RECEIVED_AT = datetime.now(UTC)
MAX_BYTES = 65_536


def take_in(**fields: str) -> dict[str, Any]:
    return conversion_from_postback(fields, RECEIVED_AT, MAX_BYTES)


def refusal(fields: dict[str, str], *maps: dict[str, str]) -> PostbackRefused:
    with pytest.raises(PostbackRefused) as caught:
        if maps:
            conversion_from_postback(fields, RECEIVED_AT, MAX_BYTES, [folded(m) for m in maps])
        else:
            conversion_from_postback(fields, RECEIVED_AT, MAX_BYTES)
    return caught.value


@pytest.mark.parametrize("name", ["clickid", "click_id", "cid", "subid"])
def test_the_click_id_under_each_trackers_name(name: str) -> None:
    event = take_in(**{name: "c-1", "campaign_id": "k"})
    assert event["click_id"] == "c-1"
    # the same conversion whatever name the network used: the id derives from the value
    assert event["conversion_id"] == derive_conversion_id("k", "c-1", "conversion", None)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"type": "deposit"}, {"type": "deposit"}),
        ({"event": "deposit"}, {"type": "deposit"}),
        ({"goal": "deposit"}, {"type": "deposit"}),
        ({"txid": "t-1"}, {"transaction_id": "t-1"}),
        ({"transaction_id": "t-1"}, {"transaction_id": "t-1"}),
        ({"amount": "9.5"}, {"payout": "9.5"}),
        ({"sum": "12.5", "amount": "9.5"}, {"payout": "12.5"}),  # the first name given wins: sum over amount
        ({"payout": "7", "sum": "12.5", "amount": "9.5"}, {"payout": "7"}),  # payout over both
        ({"payout": "", "amount": "9.5"}, {"payout": "9.5"}),  # an empty payout macro counts as absent
    ],
)
def test_type_transaction_and_amount_under_each_name(fields: dict[str, str], expected: dict[str, str]) -> None:
    event = take_in(clickid="c", campaign_id="k", **fields)
    assert {name: event[name] for name in expected} == expected
    assert list(full_validator("conversion").iter_errors(event)) == []


def test_a_redtrack_postback_is_taken_in() -> None:
    event = take_in(clickid="rt-9", campaign_id="k", sum="40.10", status="sale", type="ftd")
    assert (event["click_id"], event["payout"], event["status"], event["type"]) == ("rt-9", "40.10", "approved", "ftd")


@pytest.mark.parametrize(
    ("fields", "names"),
    [
        ({"clickid": "a", "cid": "b"}, ["clickid", "cid"]),
        ({"click_id": "a", "subid": "b"}, ["click_id", "subid"]),
        ({"clickid": "a", "cid": "a", "subid": "b"}, ["clickid", "cid", "subid"]),
        ({"clickid": "c", "type": "lead", "goal": "sale"}, ["type", "goal"]),
        ({"clickid": "c", "event": "lead", "goal": "sale"}, ["event", "goal"]),
        ({"clickid": "c", "txid": "t1", "transaction_id": "t2"}, ["txid", "transaction_id"]),
    ],
)
def test_two_names_of_one_field_with_different_values_are_refused_naming_each(
    fields: dict[str, str], names: list[str]
) -> None:
    refused = refusal({"campaign_id": "k", **fields})
    assert refused.reason == "conflicting_fields"
    assert [e.field for e in refused.errors] == names
    assert all(e.reason == "conflicting_fields" for e in refused.errors)
    first = refused.errors[0]
    # each names the others and what to do; no value is echoed
    assert all(other in first.message for other in names[1:]) and "send one of" in first.message
    assert not any(value in e.message.split() for e in refused.errors for value in ("a", "b", "t1", "t2"))


def test_the_same_value_under_two_names_is_taken() -> None:
    event = take_in(clickid="c", cid="c", subid="c", campaign_id="k", type="lead", goal="lead")
    assert (event["click_id"], event["type"]) == ("c", "lead")


def test_an_empty_name_does_not_conflict() -> None:
    assert take_in(clickid="", cid="c", campaign_id="k")["click_id"] == "c"


@pytest.mark.parametrize("name", [n for names in ALIASES.values() for n in names])
def test_every_name_is_checked_and_refused_as_sent(name: str) -> None:
    fields = {"clickid": "c", "campaign_id": "k", name: "x" * 600}
    refused = refusal(fields)
    # a bad value is refused for that alone, under the name it came with, not as a conflict too
    assert [(e.field, e.reason) for e in refused.errors] == [(name, "invalid_value")]


def test_an_error_from_the_workers_check_names_the_field_as_sent() -> None:
    fields = {"subid": "c", "campaign_id": "k", **{f"sub{n}": "x" * 1000 for n in range(1, 21)}}
    with pytest.raises(PostbackRefused) as caught:
        conversion_from_postback(fields, RECEIVED_AT, max_bytes=4096)
    assert caught.value.errors[0].field == "(request)"


def test_every_alias_is_a_documented_parameter() -> None:
    assert {n for names in ALIASES.values() for n in names} <= set(PARAMETERS)


# -- statuses


@pytest.mark.parametrize(
    ("sent", "status"),
    [
        ("approved", "approved"),
        ("APPROVED", "approved"),
        ("Pending", "pending"),
        ("declined", "declined"),
        ("OTHER", "other"),
        ("sale", "approved"),
        ("SALE", "approved"),
        ("approve", "approved"),
        ("confirmed", "approved"),
        ("hold", "pending"),
        ("Hold", "pending"),
        ("rejected", "declined"),
        ("reject", "declined"),
        ("cancelled", "declined"),
        ("Declined", "declined"),
    ],
)
def test_statuses_map_through_the_default_map_in_any_case(sent: str, status: str) -> None:
    assert take_in(clickid="c", campaign_id="k", status=sent)["status"] == status


def test_an_unmapped_status_is_refused_naming_the_accepted_ones() -> None:
    refused = refusal({"clickid": "c", "campaign_id": "k", "status": "paid"})
    (error,) = refused.errors
    assert (error.field, error.reason, refused.reason) == ("status", "invalid_value", "invalid_value")
    assert error.message.startswith("must be one of approved, pending, declined, other, ")
    assert "sale" in error.message and "hold" in error.message and "paid" not in error.message


def test_the_offer_sources_map_comes_first_then_the_default() -> None:
    offer_source = folded({"Paid": "approved", "sale": "pending"})
    default = folded({"sale": "approved", "hold": "pending"})

    def status(sent: str) -> str:
        fields = {"clickid": "c", "campaign_id": "k", "status": sent}
        return str(conversion_from_postback(fields, RECEIVED_AT, MAX_BYTES, [offer_source, default])["status"])

    assert (status("PAID"), status("sale"), status("hold"), status("Declined")) == (
        "approved",
        "pending",
        "pending",
        "declined",
    )
    refused = refusal({"clickid": "c", "campaign_id": "k", "status": "other-thing"}, {"paid": "approved"})
    assert "paid" in refused.errors[0].message


def test_a_status_that_names_no_known_value_keeps_the_other_errors() -> None:
    refused = refusal({"clickid": "c", "campaign_id": "k", "status": "paid", "currency": "usd"})
    assert [e.field for e in refused.errors] == ["currency", "status"]


def test_a_postback_without_campaign_is_a_conversion_for_its_click() -> None:
    event = take_in(clickid="c", status="sale", sum="3")
    assert "campaign_id" not in event
    assert event["conversion_id"] == derive_conversion_id("", "c", "conversion", None)
    assert list(full_validator("conversion").iter_errors(event)) == []
