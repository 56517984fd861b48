"""Status updates of conversions taken in through the api (postback_router/api/conversion_update.py)."""

from __future__ import annotations

from typing import Any

import pytest

from postback_router.api.conversion_update import index_entry, updated_conversion
from schemas.errors import InvalidInput

INDEXED: dict[str, Any] = {
    "conversion_id": "cv-1",
    "click_id": "rt-1",
    "campaign_id": "k",
    "type": "deposit",
    "status": "pending",
    "payout": "40.00",
    "currency": "EUR",
    "occurred_at": "2026-11-22T09:01:02.345Z",
    "click_ids": {"gclid": "g"},
}


def update(body: Any) -> dict[str, Any]:
    return updated_conversion(INDEXED, body, 65_536)


def failing_fields(body: Any) -> set[str]:
    with pytest.raises(InvalidInput) as caught:
        update(body)
    return {error.field for error in caught.value.errors}


def test_the_index_keeps_no_personal_data() -> None:
    event = {**INDEXED, "user": {"email": "a@b.example", "ip": "203.0.113.9"}}
    assert index_entry(event) == INDEXED


def test_a_status_update_keeps_everything_else() -> None:
    assert update({"status": "approved"}) == {**INDEXED, "status": "approved"}


def test_type_payout_and_currency_can_change_too() -> None:
    updated = update({"status": "approved", "type": "purchase", "payout": 12.5, "currency": "USD"})
    assert updated == {**INDEXED, "status": "approved", "type": "purchase", "payout": "12.5", "currency": "USD"}


@pytest.mark.parametrize(
    ("payout", "written"),
    [
        (12.5, "12.5"),
        (20, "20"),
        (0, "0"),
        (0.1, "0.1"),  # the literal sent, not the float's binary expansion
        (40.0, "40"),
        (1e2, "100"),
        (1.5e-5, "0.000015"),
        (123456789012345678, "123456789012345678"),
        ("40.10", "40.10"),  # a string is kept exactly as sent
        ("0", "0"),
    ],
)
def test_the_payout_is_written_as_a_decimal_string(payout: Any, written: str) -> None:
    assert update({"status": "approved", "payout": payout})["payout"] == written


def test_a_numeric_payout_in_an_older_index_entry_is_written_as_a_string_too() -> None:
    older = {**INDEXED, "payout": 7.25}
    assert updated_conversion(older, {"status": "approved"}, 65_536)["payout"] == "7.25"


@pytest.mark.parametrize("payout", [-1, -0.5, 1e20, 1e-13, True])
def test_numeric_payouts_that_do_not_fit_a_decimal_string_are_refused(payout: Any) -> None:
    assert failing_fields({"status": "approved", "payout": payout}) == {"payout"}


def test_null_resets_a_field_to_its_default() -> None:
    updated = update({"status": "approved", "payout": None, "currency": None})
    assert "payout" not in updated and "currency" not in updated


def test_the_same_id_and_occurred_at_are_kept_whatever_the_body_says() -> None:
    assert failing_fields({"status": "approved", "occurred_at": "2030-01-01T00:00:00Z"}) == {"(body)"}


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ([], {"(body)"}),
        ({}, {"status"}),
        ({"status": None}, {"status"}),
        ({"status": "sale"}, {"status"}),
        ({"status": "approved", "payout": -1}, {"payout"}),
        ({"status": "approved", "payout": "1,5"}, {"payout"}),
        ({"status": "approved", "currency": "usd"}, {"currency"}),
        ({"status": "approved", "type": ""}, {"type"}),
        ({"payout": "x", "conversion_id": "other"}, {"(body)", "status", "payout"}),
    ],
)
def test_invalid_updates_name_each_failing_field(body: Any, fields: set[str]) -> None:
    assert failing_fields(body) == fields
