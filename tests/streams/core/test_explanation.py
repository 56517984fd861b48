"""The rule test's explanation (streams/core/explanation.py) against the worker's batch processor itself."""

from __future__ import annotations

import itertools
from typing import Any

import orjson
import pytest

from streams.core.conversion import parse_conversion
from streams.core.explanation import REASON_NAMES, explain_conversion
from streams.core.offer_sources import OfferSource
from streams.core.rules import CampaignRules
from tests import factories as f

# Entries that cover every way an entry fires or not: each condition alone and together, a disabled
# entry, payout percentages, S2S macros that depend on the status, type and payout.
ENTRIES: list[dict[str, Any]] = [
    f.s2s_entry(
        "all", url="https://t.example/pb?c={clickid}&s={status}&p={payout}&t={type}&x={sub1}", payout_percent=50
    ),
    f.s2s_entry("off", enabled=False),
    f.s2s_entry("deposits", conditional=f.conditional(types=["deposit"])),
    f.s2s_entry("approved", conditional=f.conditional(statuses=["approved"]), status_names={"approved": "1"}),
    f.meta_entry("big", conditional=f.conditional(min_payout="10")),
    f.google_entry("all3", conditional=f.conditional(types=["deposit", "lead"], statuses=["pending"], min_payout=5)),
    f.tiktok_entry("switched-off-condition", conditional={"enabled": False, "types": ["lead"]}),
    f.microsoft_entry("ms", payout_percent="12.5", conditional=f.conditional(statuses=["declined", "other"])),
]
TYPES = ["deposit", "lead", "registration"]
STATUSES: list[str | None] = ["approved", "pending", "declined", None]
PAYOUTS = ["0", "4.99", "5", "10", "123.456"]
OFFER_SOURCES: list[str | None] = [None, "net-pending", "net-unknown"]
CASES = list(itertools.product(TYPES, STATUSES, PAYOUTS, OFFER_SOURCES))


def worker_postbacks(rules: CampaignRules, event: dict[str, Any], offer_sources: dict[str, str]) -> dict[str, Any]:
    """postback_id -> the message the worker publishes for `event`."""
    result = f.processor(rules, offer_sources=dict(offer_sources)).process(f.source_records([event]))
    return {
        message["postback_id"]: message
        for message in (orjson.loads(m.value or b"") for m in result.messages if m.topic.startswith("postbacks."))
    }


@pytest.mark.parametrize(("conversion_type", "status", "payout", "offer_source"), CASES)
def test_the_explanation_fires_exactly_what_the_worker_publishes(
    conversion_type: str, status: str | None, payout: str, offer_source: str | None
) -> None:
    rules = f.compiled("camp-1", *ENTRIES)
    event = f.conversion(
        "cv-1", type=conversion_type, status=status or ..., payout=payout, offer_source_id=offer_source or ...
    )
    event["subs"] = {"sub1": "a b&c"}
    sources = {"net-pending": "pending"}
    published = worker_postbacks(rules, event, sources)

    conversion = parse_conversion(b"cv-1", orjson.dumps(event), 65_536)
    known = OfferSource("net-pending", "pending") if offer_source == "net-pending" else None
    explanation = explain_conversion(conversion, rules, known, "approved")

    assert explanation.fired_postback_ids == set(published)
    assert [e.entry_id for e in explanation.entries] == [entry["id"] for entry in ENTRIES]
    for entry in explanation.entries:
        if entry.postback_id is None:
            assert not entry.fired and entry.reason in REASON_NAMES.values() and entry.payout_sent is None
            continue
        message = published[entry.postback_id]
        assert entry.fired and entry.reason is None
        assert entry.payout_sent == message["payout"]
        assert entry.url == message.get("url")
        assert (explanation.status, explanation.status_source) == (message["status"], message["status_source"])


def test_each_reason_is_named_with_its_detail() -> None:
    rules = f.compiled("camp-1", *ENTRIES)
    event = f.conversion("cv-1", type="registration", status="pending", payout="4.99")
    conversion = parse_conversion(b"cv-1", orjson.dumps(event), 65_536)
    explanation = explain_conversion(conversion, rules, None, "approved")
    by_id = {e.entry_id: (e.reason, e.detail) for e in explanation.entries}
    assert by_id["off"] == ("disabled", "the entry is disabled")
    assert by_id["deposits"] == ("type_not_selected", "type 'registration' is not one of ['deposit']")
    assert by_id["approved"] == ("status_not_selected", "status 'pending' is not one of ['approved']")
    assert by_id["big"] == ("below_min_payout", "payout 4.99 is below min_payout 10")
    assert by_id["all"] == (None, None)
    fired = next(e for e in explanation.entries if e.entry_id == "all")
    assert fired.payout_sent == "2.495"  # 50 % of 4.99
    assert fired.url is not None and "x=a" not in fired.url  # no sub1 given: the macro renders empty
    assert fired.method == "GET"


def test_an_entry_already_fired_is_named_already_fired() -> None:
    rules = f.compiled("camp-1", f.s2s_entry("a"))
    conversion = parse_conversion(b"cv-1", orjson.dumps(f.conversion("cv-1")), 65_536)
    first = explain_conversion(conversion, rules, None, "approved")
    again = explain_conversion(conversion, rules, None, "approved", first.fired_postback_ids)
    assert [(e.fired, e.reason) for e in again.entries] == [(False, "already_fired")]
