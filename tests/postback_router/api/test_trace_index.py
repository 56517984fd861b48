"""The trace index's store (postback_router/api/trace_index.py) over a real RocksDB, and the document it answers."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from postback_router.api.trace_index import IndexedRecord, TraceStore, TraceTopics
from streams.core.batch import OutgoingMessage
from tests import factories as f

TOPICS = TraceTopics("conversions.evaluated", "postbacks.results", "postbacks.dead-letter")
DAY_MS = 86_400_000


@pytest.fixture
def store(tmp_path: Path) -> Iterator[TraceStore]:
    opened = TraceStore(tmp_path / "trace", TOPICS, retention_seconds=30 * 86400)
    yield opened
    opened.close()


def now_ms() -> int:
    return int(time.time() * 1000)


class Feed:
    """Records with increasing offsets per topic, as a consumer would hand them over."""

    def __init__(self) -> None:
        self.offsets: dict[str, int] = {}

    def record(self, topic: str, value: dict[str, Any] | None, at_ms: int | None = None) -> IndexedRecord:
        offset = self.offsets.get(topic, 0)
        self.offsets[topic] = offset + 1
        body = None if value is None else orjson.dumps(value)
        return IndexedRecord(topic, 0, offset, now_ms() if at_ms is None else at_ms, body)


def evaluated(*conversions: dict[str, Any]) -> list[dict[str, Any]]:
    """The worker's own evaluation records for `conversions` (two s2s entries, one conditional on purchases)."""
    rules = f.compiled("camp-1", f.s2s_entry("src"), f.meta_entry("fb", conditional=f.conditional(types=["purchase"])))
    messages: list[OutgoingMessage] = f.processor(rules).process(f.source_records(conversions)).messages
    return [orjson.loads(m.value) for m in messages if m.topic == TOPICS.evaluations and m.value]


def result(evaluation: dict[str, Any], outcome: str = "delivered", **fields: Any) -> dict[str, Any]:
    fired = evaluation["fired"][0]
    return {
        "schema_version": 1,
        "postback_id": fired["postback_id"],
        "kind": fired["kind"],
        "destination_id": fired["destination_id"],
        "conversion_id": evaluation["conversion_id"],
        "campaign_id": evaluation["campaign_id"],
        "entry_id": fired["entry_id"],
        "result": outcome,
        "attempts": 1,
        "last_http_status": 200,
        "last_reason": "http_200",
        "latency_seconds": 0.05,
        "first_attempt_at": evaluation["evaluated_at"],
        "finished_at": evaluation["evaluated_at"],
        **fields,
    }


def test_a_conversion_shows_each_version_what_fired_why_not_and_the_delivery(store: TraceStore) -> None:
    feed = Feed()
    first, second = evaluated(f.conversion("cv-1", status="pending"), f.conversion("cv-1", status="approved"))
    store.apply(
        [
            feed.record(TOPICS.evaluations, first),
            feed.record(TOPICS.evaluations, second),
            feed.record(TOPICS.results, result(first)),
        ]
    )
    trace = store.lookup("cv-1")
    assert trace is not None
    assert [v["status"] for v in trace["versions"]] == ["pending", "approved"]
    entries = trace["versions"][0]["entries"]
    assert [(e["entry_id"], e["fired"], e.get("reason")) for e in entries] == [
        ("src", True, None),
        ("fb", False, "type_not_selected"),
    ]
    fired = entries[0]
    assert fired["postback_id"] == first["fired"][0]["postback_id"] and fired["payout"] == first["fired"][0]["payout"]
    assert fired["delivery"]["state"] == "delivered" and fired["delivery"]["last_http_status"] == 200
    # the second version fired its own postback (another status): no result yet
    assert trace["versions"][1]["entries"][0]["delivery"] == {"state": "pending"}
    assert trace["other_postbacks"] == []
    assert store.lookup("cv-unknown") is None
    assert store.lookup("cv-1\x00v") is None


def test_a_dead_letter_is_found_whether_or_not_it_names_its_conversion(store: TraceStore) -> None:
    feed = Feed()
    (one,) = evaluated(f.conversion("cv-1"))
    (two,) = evaluated(f.conversion("cv-2"))
    dead = {
        "schema_version": 1,
        "result": "dead_lettered",
        "reason": "max_age",
        "detail": "gave up after 24h",
        "last_http_status": 503,
        "attempts": 9,
        "dead_lettered_at": one["evaluated_at"],
    }
    unnamed = {**dead, "postback_id": one["fired"][0]["postback_id"], "postback": None}
    named = {**dead, "postback_id": two["fired"][0]["postback_id"], "postback": {"conversion_id": "cv-2"}}
    # the dead-letter of cv-1 is read before its evaluation: kept aside, joined at lookup
    store.apply([feed.record(TOPICS.dead_letter, unnamed), feed.record(TOPICS.dead_letter, named)])
    store.apply([feed.record(TOPICS.evaluations, one), feed.record(TOPICS.evaluations, two)])
    for conversion_id in ("cv-1", "cv-2"):
        trace = store.lookup(conversion_id)
        assert trace is not None
        delivery = trace["versions"][0]["entries"][0]["delivery"]
        assert delivery["state"] == "dead_lettered"
        assert delivery["dead_letter"]["reason"] == "max_age"


def test_results_without_a_retained_version_are_still_shown(store: TraceStore) -> None:
    (one,) = evaluated(f.conversion("cv-1"))
    store.apply([Feed().record(TOPICS.results, result(one, "rejected", last_http_status=400))])
    trace = store.lookup("cv-1")
    assert trace is not None and trace["versions"] == []
    (other,) = trace["other_postbacks"]
    assert other["delivery"]["state"] == "rejected"


def test_positions_are_kept_with_the_rows(tmp_path: Path) -> None:
    feed = Feed()
    (one,) = evaluated(f.conversion("cv-1"))
    store = TraceStore(tmp_path / "trace", TOPICS, retention_seconds=86400)
    store.apply([feed.record(TOPICS.evaluations, one), feed.record(TOPICS.results, None)])
    store.close()
    reopened = TraceStore(tmp_path / "trace", TOPICS, retention_seconds=86400)
    try:
        assert reopened.positions() == {(TOPICS.evaluations, 0): 1, (TOPICS.results, 0): 1}
        assert reopened.lookup("cv-1") is not None
    finally:
        reopened.close()


def test_rows_older_than_the_retention_are_swept_and_not_written(store: TraceStore) -> None:
    feed = Feed()
    old, young = evaluated(f.conversion("cv-old"), f.conversion("cv-young"))
    now = now_ms()
    store.apply(
        [
            feed.record(TOPICS.evaluations, old, now - 10 * DAY_MS),
            feed.record(TOPICS.evaluations, young, now - 1 * DAY_MS),
            feed.record(TOPICS.results, result(young), now - 10 * DAY_MS),  # rewritten below, younger
            feed.record(TOPICS.results, result(young), now),
        ]
    )
    store.retention_seconds = 5 * 86400
    assert store.sweep(now) > 0
    assert store.lookup("cv-old") is None
    trace = store.lookup("cv-young")
    assert trace is not None and trace["versions"][0]["entries"][0]["delivery"]["state"] == "delivered"
    # read after the sweep, a row already past the retention is not written
    assert store.apply([feed.record(TOPICS.evaluations, old, now - 10 * DAY_MS)]) == 0
    assert store.lookup("cv-old") is None
    store.retention_seconds = 1
    store.sweep(now + 10_000)
    assert store.lookup("cv-young") is None
    assert list(store._scan(b"t\x00")) == []
