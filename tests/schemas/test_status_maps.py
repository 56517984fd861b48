"""Status maps (schemas/status_maps.py): checking them and mapping statuses with them."""

from __future__ import annotations

import pytest

from schemas.errors import FieldError
from schemas.kinds import STATUSES
from schemas.status_maps import (
    DEFAULT_STATUS_MAP,
    MAX_STATUS_MAP_ENTRIES,
    accepted_statuses,
    folded,
    map_status,
    status_map_errors,
)


def test_the_default_map_holds_what_networks_send() -> None:
    for sent, status in {
        "sale": "approved",
        "approve": "approved",
        "confirmed": "approved",
        "hold": "pending",
        "rejected": "declined",
        "reject": "declined",
        "cancelled": "declined",
    }.items():
        assert map_status(sent.upper(), folded(DEFAULT_STATUS_MAP)) == status
    assert status_map_errors(dict(DEFAULT_STATUS_MAP), "m") == []


@pytest.mark.parametrize("status", STATUSES)
def test_canonical_statuses_map_to_themselves_whatever_the_maps_say(status: str) -> None:
    assert map_status(status.upper()) == status
    assert map_status(f" {status.title()} ", {"approved": "declined"}) == status


def test_an_unknown_status_maps_to_nothing() -> None:
    assert map_status("paid", folded({"sale": "approved"})) is None


def test_the_first_map_that_knows_a_status_wins() -> None:
    assert map_status("Sale", {"sale": "pending"}, {"sale": "approved"}) == "pending"
    assert map_status("hold", {"sale": "pending"}, {"hold": "declined"}) == "declined"


@pytest.mark.parametrize(
    ("raw", "errors"),
    [
        ([], [FieldError("m", "must be a JSON object of status -> approved, pending, declined or other")]),
        ({"sale": "ok"}, [FieldError("m.sale", "must be one of approved, pending, declined, other")]),
        (
            {"APPROVED": "declined"},
            [FieldError("m.APPROVED", "must be approved: a canonical status always maps to itself")],
        ),
        (
            {"sale": "approved", "SALE": "declined"},
            [FieldError("m.SALE", "is given again in another case with another status")],
        ),
        ({" ": "approved"}, [FieldError("m. ", "each status must be 1-128 characters")]),
        ({"x" * 129: "approved"}, [FieldError("m", "each status must be 1-128 characters")]),
        (
            {f"s{n}": "approved" for n in range(MAX_STATUS_MAP_ENTRIES + 1)},
            [FieldError("m", "must have at most 100 entries")],
        ),
    ],
)
def test_invalid_maps_are_refused_naming_the_entry(raw: object, errors: list[FieldError]) -> None:
    assert status_map_errors(raw, "m") == errors


def test_keys_equal_but_for_case_that_agree_and_canonical_keys_to_themselves_are_fine() -> None:
    assert status_map_errors({"sale": "approved", "SALE": "approved", "Approved": "approved"}, "m") == []


def test_accepted_statuses_lists_the_canonical_ones_first() -> None:
    assert accepted_statuses({"sale": "approved", "approved": "approved"}, {"hold": "pending"}) == [
        *STATUSES,
        "hold",
        "sale",
    ]
