"""The click join, pure (streams/core/click_join.py): clicks parsed, conversions without campaign
completed from their click, waiting for it, or refused as `unknown_click` after the grace period."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from schemas.errors import InvalidInput
from streams.core.batch import SourceRecord
from streams.core.click_join import (
    AwaitingConversion,
    Click,
    JoinConfig,
    click_wanted,
    completed_record,
    decode_awaiting,
    parse_click,
    plan_join,
)
from streams.core.conversion import conversion_key, parse_conversion
from streams.core.schema_checks import full_validator
from tests import factories as f

NOW = time.time()
CONFIG = JoinConfig(invalid_topic="conversions.invalid", attribution_window_seconds=86400, grace_period_seconds=60)
STAMP = "stamp"


def click_json(click_id: str = "clk-1", age_seconds: float = 60, **fields: Any) -> dict[str, Any]:
    clicked_at = datetime.fromtimestamp(NOW - age_seconds, UTC).isoformat()
    return {"click_id": click_id, "campaign_id": "camp-1", "clicked_at": clicked_at, **fields}


def click(click_id: str = "clk-1", age_seconds: float = 60, **fields: Any) -> Click:
    return parse_click(click_id.encode(), orjson.dumps(click_json(click_id, age_seconds, **fields)))


def without_campaign(conversion_id: str, **fields: Any) -> dict[str, Any]:
    event = f.conversion(conversion_id, **fields)
    del event["campaign_id"]
    return event


def campaignless(conversion_id: str, click_id: str = "clk-1", offset: int = 0, **fields: Any) -> SourceRecord:
    event = without_campaign(conversion_id, click_id=click_id, **fields)
    return SourceRecord("conversions", 2, offset, None, conversion_key(event).encode(), orjson.dumps(event))


def with_campaign(conversion_id: str, offset: int = 0) -> SourceRecord:
    event = f.conversion(conversion_id)
    return SourceRecord("conversions", 2, offset, None, conversion_id.encode(), orjson.dumps(event))


def test_a_click_parses_and_its_schema_documents_it() -> None:
    raw = click_json(offer_source_id="os-1", subs={"sub1": "a"}, click_ids={"gclid": "g", "fbc": ""}, extra=1)
    assert list(full_validator("click").iter_errors(raw)) == []
    parsed = parse_click(b"clk-1", orjson.dumps(raw))
    assert (parsed.campaign_id, parsed.offer_source_id, parsed.subs, parsed.click_ids) == (
        "camp-1",
        "os-1",
        {"sub1": "a"},
        {"gclid": "g"},
    )
    assert parsed.clicked_at_unix == int(NOW - 60)


# a time without its UTC offset, which a click must carry (derived from now: no absolute dates)
NO_OFFSET = datetime.now(UTC).replace(tzinfo=None).isoformat()


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        (b"clk-1", None, "not_object"),
        (b"clk-1", b"[", "not_json"),
        (b"clk-1", b"[]", "not_object"),
        (b"other", orjson.dumps(click_json()), "key_mismatch"),
        (b"clk-1", orjson.dumps({"click_id": "clk-1", "clicked_at": datetime.now(UTC).isoformat()}), "missing_field"),
        (b"clk-1", orjson.dumps(click_json(clicked_at="yesterday")), "invalid_value"),
        (b"clk-1", orjson.dumps(click_json(clicked_at=NO_OFFSET)), "invalid_value"),
    ],
)
def test_invalid_clicks_are_refused(key: bytes, value: bytes | None, reason: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_click(key, value)
    assert caught.value.reason == reason


def test_a_conversion_without_campaign_is_keyed_by_its_click_and_parses() -> None:
    event = without_campaign("cv-1", click_id="clk-9")
    assert conversion_key(event) == "clk-9" and conversion_key(f.conversion("cv-1")) == "cv-1"
    assert parse_conversion(b"clk-9", orjson.dumps(event), 65536).campaign_id == ""
    with pytest.raises(InvalidInput) as caught:
        parse_conversion(b"cv-1", orjson.dumps(event), 65536)
    assert (caught.value.reason, caught.value.field) == ("key_mismatch", "click_id")


def test_which_records_want_a_click() -> None:
    assert click_wanted(campaignless("cv-1").value) == "clk-1"
    assert click_wanted(orjson.dumps({**f.conversion("cv-1"), "campaign_id": None})) == "click-cv-1"
    for value in (with_campaign("cv-1").value, None, b"[", b"{}", orjson.dumps({"click_id": 5})):
        assert click_wanted(value) is None


def test_a_completed_conversion_takes_the_clicks_fields_its_own_winning() -> None:
    record = campaignless("cv-1", subs={"sub1": "own"}, click_ids={"gclid": "own-g"})
    the_click = click(offer_source_id="os-1", subs={"sub1": "c1", "sub2": "c2"}, click_ids={"gclid": "g", "fbc": "f"})
    completed = completed_record(record, the_click)
    assert (completed.partition, completed.offset, completed.key) == (2, 0, b"cv-1")
    conversion = parse_conversion(completed.key, completed.value, 65536)
    assert (conversion.campaign_id, conversion.offer_source_id) == ("camp-1", "os-1")
    assert conversion.subs == {"sub1": "own", "sub2": "c2"}
    assert conversion.click_ids == {"gclid": "own-g", "fbc": "f"}


def test_a_conversions_own_offer_source_wins() -> None:
    completed = completed_record(campaignless("cv-1", offer_source_id="mine"), click(offer_source_id="os-1"))
    assert orjson.loads(completed.value or b"")["offer_source_id"] == "mine"


def lookup(*clicks: Click) -> Any:
    known = {c.click_id: c for c in clicks}
    return lambda click_id, partition: known.get(click_id)


def test_a_batch_passes_known_clicks_completed_and_keeps_the_others_waiting() -> None:
    records = [with_campaign("a", 0), campaignless("b", "clk-1", 1), campaignless("c", "clk-2", 2)]
    plan = plan_join(CONFIG, records, [], lookup(click("clk-1")), NOW, STAMP)
    assert [r.key for r in plan.ready] == [b"a", b"b"]
    assert (plan.completed, plan.waiting, plan.unknown, plan.messages) == (1, 1, 0, [])
    ((partition, key, value),) = plan.store_changes
    assert (partition, key) == (2, b"00000000000000000002")
    waiting = decode_awaiting(value or b"")
    assert (waiting.record, waiting.click_id, waiting.since_unix) == (records[2], "clk-2", int(NOW))


def test_a_click_too_old_for_the_attribution_window_is_no_click() -> None:
    plan = plan_join(CONFIG, [campaignless("b")], [], lookup(click(age_seconds=86400 + 5)), NOW, STAMP)
    assert (plan.ready, plan.waiting) == ([], 1)


def test_a_waiting_conversion_goes_on_once_its_click_arrives() -> None:
    waiting = AwaitingConversion(campaignless("b", offset=7), "clk-1", int(NOW) - 10)
    plan = plan_join(CONFIG, [], [waiting], lookup(click()), NOW, STAMP)
    assert [r.key for r in plan.ready] == [b"b"]
    assert plan.store_changes == [(2, b"00000000000000000007", None)]
    assert plan.completed == 1


def test_a_waiting_conversion_past_the_grace_period_is_refused_as_unknown_click() -> None:
    waiting = AwaitingConversion(campaignless("b", offset=7), "clk-1", int(NOW) - 61)
    still = AwaitingConversion(campaignless("c", "clk-2", offset=8), "clk-2", int(NOW) - 59)
    plan = plan_join(CONFIG, [], [waiting, still], lookup(), NOW, STAMP)
    assert (plan.ready, plan.unknown, plan.waiting) == ([], 1, 1)
    assert plan.store_changes == [(2, b"00000000000000000007", None)]
    (message,) = plan.messages
    body = orjson.loads(message.value or b"")
    assert list(full_validator("invalid-record").iter_errors(body)) == []
    assert (message.topic, message.key) == ("conversions.invalid", b"clk-1")
    assert (body["error"]["reason"], body["error"]["field"]) == ("unknown_click", "click_id")
    assert body["source"] == {"topic": "conversions", "partition": 2, "offset": 7}


def test_an_update_never_overtakes_an_earlier_version_waiting_for_the_same_click() -> None:
    waiting = AwaitingConversion(campaignless("b", offset=7), "clk-1", int(NOW) - 10)
    # the click arrives between the tick that kept `b` waiting and this batch: both go on, in order
    plan = plan_join(CONFIG, [campaignless("b", offset=9)], [waiting], lookup(click()), NOW, STAMP)
    assert [r.offset for r in plan.ready] == [7, 9]
    # without it both wait, the update behind the first version
    plan = plan_join(CONFIG, [campaignless("b", offset=9)], [waiting], lookup(), NOW, STAMP)
    assert (plan.ready, plan.waiting) == ([], 2)


def test_records_the_matcher_refuses_go_on_to_it() -> None:
    bad = SourceRecord("conversions", 0, 3, None, b"k", b"not json")
    plan = plan_join(CONFIG, [bad], [], lookup(), NOW, STAMP)
    assert plan.ready == [bad] and plan.store_changes == []


def test_the_grace_period_counts_from_when_the_worker_first_saw_it() -> None:
    later = NOW + timedelta(minutes=5).total_seconds()
    plan = plan_join(CONFIG, [campaignless("b")], [], lookup(), later, STAMP)
    assert decode_awaiting(plan.store_changes[0][2] or b"").since_unix == int(later)
