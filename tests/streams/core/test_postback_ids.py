"""Postback ids: deterministic from (conversion_id, entry id, effective status, type), so a replay dedupes."""

from __future__ import annotations

import re
import uuid

import orjson
import pytest

from streams.core.postback_ids import POSTBACK_ID_NAMESPACE, postback_id
from tests import factories as f

BASE = ("cv-1", "src", "approved", "deposit")
# Pinned: if this changes, every replayed postback looks new to the dispatchers' dedupe.
PINNED_ID = "77b14ce1-32cc-56cb-a855-43a3617bbbdb"
UUID5 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def test_pinned_id() -> None:
    assert postback_id(*BASE) == PINNED_ID


def test_pinned_namespace() -> None:
    assert str(POSTBACK_ID_NAMESPACE) == "3f0c5a52-8d0e-4b6a-9a57-2f3f1b7c9e11"


@pytest.mark.parametrize(
    "parts",
    [
        pytest.param(BASE, id="base"),
        pytest.param(("a" * 256, "e." * 64, "other", "Custom Type ü"), id="long-and-unicode"),
        pytest.param(("", "", "", ""), id="empty-parts"),
    ],
)
def test_deterministic_and_uuid5(parts: tuple[str, str, str, str]) -> None:
    ids = {postback_id(*parts) for _ in range(3)}
    assert len(ids) == 1
    (value,) = ids
    assert UUID5.match(value)
    parsed = uuid.UUID(value)
    assert parsed.version == 5
    assert parsed.variant == uuid.RFC_4122
    assert str(parsed) == value


@pytest.mark.parametrize(
    ("position", "other"),
    [
        pytest.param(0, "cv-2", id="conversion_id"),
        pytest.param(1, "src-2", id="entry-id"),
        pytest.param(2, "pending", id="effective-status"),
        pytest.param(3, "lead", id="type"),
        pytest.param(3, "Deposit", id="type-case"),
        pytest.param(0, "CV-1", id="conversion_id-case"),
    ],
)
def test_each_part_changes_the_id(position: int, other: str) -> None:
    changed = list(BASE)
    changed[position] = other
    assert postback_id(*changed) != postback_id(*BASE)


@pytest.mark.parametrize(
    ("left", "right"),
    [
        pytest.param(("ab", "c", "approved", "deposit"), ("a", "bc", "approved", "deposit"), id="shifted-boundary"),
        pytest.param(("cv", "1", "approved", "x"), ("cv1", "", "approved", "x"), id="empty-part"),
        pytest.param(("cv-1", "src", "approved", "deposit"), ("src", "cv-1", "approved", "deposit"), id="swapped"),
    ],
)
def test_different_tuples_never_join_to_the_same_id(
    left: tuple[str, str, str, str], right: tuple[str, str, str, str]
) -> None:
    assert postback_id(*left) != postback_id(*right)


def test_a_replay_through_the_processor_yields_the_same_id() -> None:
    rules = f.compiled("camp-1", f.s2s_entry("src"))
    records = [f.source_record(f.conversion("cv-1"))]
    first = f.processor(rules).process(records)
    replay = f.processor(rules).process(records)  # e.g. after a crash, with no fired-state
    first_id = orjson.loads(first.messages[0].value)["postback_id"]
    assert first_id == orjson.loads(replay.messages[0].value)["postback_id"] == PINNED_ID


def test_payout_and_other_fields_do_not_change_the_id() -> None:
    rules = f.compiled("camp-1", f.s2s_entry("src"))
    ids = set()
    for fields in ({"payout": "1"}, {"payout": "2", "currency": "EUR"}, {"transaction_id": "t", "subs": {"sub1": "x"}}):
        result = f.processor(rules).process([f.source_record(f.conversion("cv-1", **fields))])
        ids.add(orjson.loads(result.messages[0].value)["postback_id"])
    assert ids == {PINNED_ID}
