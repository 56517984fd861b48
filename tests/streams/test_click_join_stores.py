"""The click join's stores (streams/click_join.py) over an in-memory `clicks` topic: restored from and
caught up with the topic, swept by the attribution window, taken up with the conversions partition."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from service.changelog_store import ChangelogStore
from service.kafka_connection import KafkaConnection
from service.settings import load_settings
from streams import click_join
from streams.click_join import (
    CLICK_RECHECK_SECONDS,
    AwaitingClickStore,
    ClickJoin,
    ClickStore,
    ConversionsPartitionStores,
)
from streams.core.batch import SourceRecord
from tests import factories as f
from tests.service.test_changelog_store import FakeChangelog

KAFKA = KafkaConnection.plaintext("unused:9092")


def click(click_id: str, age_seconds: float) -> bytes:
    clicked_at = datetime.fromtimestamp(time.time() - age_seconds, UTC).isoformat()
    return orjson.dumps({"click_id": click_id, "campaign_id": "camp-1", "clicked_at": clicked_at})


def click_store(tmp_path: Path, topic: FakeChangelog) -> ClickStore:
    return ClickStore(KAFKA, "clicks", "rocksdb", tmp_path / "clicks", changelog=topic)


async def test_clicks_are_restored_from_the_topic_then_caught_up(tmp_path: Path) -> None:
    topic = FakeChangelog()
    topic.append(1, b"clk-a", click("clk-a", 60))
    store = click_store(tmp_path, topic)
    await store.assign({1})
    assert store.click("clk-a", 1) is not None
    assert store.click("clk-b", 1) is None
    assert store.click("clk-a", 0) is None  # not an owned partition
    topic.append(1, b"clk-b", click("clk-b", 1))
    topic.append(1, b"clk-bad", b"{}")
    assert await store.catch_up() == 2
    assert store.click("clk-b", 1) is not None
    assert store.click("clk-bad", 1) is None  # an invalid click is no click
    assert await store.catch_up() == 0  # only what is new is read
    store.close()


async def test_the_sweep_deletes_old_and_invalid_clicks_locally_only(tmp_path: Path) -> None:
    topic = FakeChangelog()
    for key, value in ((b"old", click("old", 7200)), (b"new", click("new", 60)), (b"bad", b"[]")):
        topic.append(0, key, value)
    store = click_store(tmp_path, topic)
    await store.assign({0})
    assert sum(store.sweep(0, time.time(), window_seconds=3600)) == 2
    assert store.click("new", 0) is not None and store.get_raw(b"old", 0) is None
    assert list(store.sweep(5, time.time(), window_seconds=3600)) == []  # not owned: nothing
    store.close()
    # the local deletes moved no position: a restart replays nothing and keeps them deleted
    reopened = click_store(tmp_path, topic)
    await reopened.assign({0})
    assert reopened.get_raw(b"old", 0) is None and reopened.click("new", 0) is not None
    reopened.close()


async def test_the_stores_of_a_conversions_partition_are_taken_up_and_released_together(tmp_path: Path) -> None:
    fired_log, clicks_log, awaiting_log = FakeChangelog(), FakeChangelog(), FakeChangelog()
    clicks_log.append(3, b"clk", click("clk", 1))
    fired = ChangelogStore(KAFKA, "fired", "memory", tmp_path / "f", changelog=fired_log)
    clicks = ClickStore(KAFKA, "clicks", "memory", tmp_path / "c", changelog=clicks_log)
    awaiting = AwaitingClickStore(KAFKA, "awaiting", "memory", tmp_path / "a", changelog=awaiting_log)
    stores = ConversionsPartitionStores(fired, clicks, awaiting)
    assert stores.changelog_topic == "fired"
    await stores.assign({3})
    assert fired.partitions == clicks.partitions == awaiting.partitions == {3}
    assert clicks.click("clk", 3) is not None and awaiting.entries() == []
    stores.apply(3, b"cv", b"x", 0)  # the member's changelog writes go to the fired-state
    assert fired.get_raw(b"cv", 3) == b"x" and clicks.get_raw(b"cv", 3) is None
    stores.revoke({3})
    assert fired.partitions == clicks.partitions == awaiting.partitions == set()


async def test_the_sweep_goes_in_slices_and_stops_when_the_partition_is_released(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(click_join, "SWEEP_SLICE", 2)
    topic = FakeChangelog()
    for n in range(5):
        topic.append(0, f"old-{n}".encode(), click(f"old-{n}", 7200))
    store = click_store(tmp_path, topic)
    await store.assign({0})
    steps = store.sweep(0, time.time(), window_seconds=3600)
    assert next(steps) == 2  # one slice
    store.revoke({0})  # a rebalance between two slices
    assert list(steps) == []
    store.close()
    reopened = click_store(tmp_path, topic)
    await reopened.assign({0})
    assert sum(reopened.sweep(0, time.time(), window_seconds=3600)) == 3  # the rest, next time
    reopened.close()


def conversion_record(conversion_id: str, click_id: str, partition: int = 0, offset: int = 0) -> SourceRecord:
    event = f.conversion(conversion_id, click_id=click_id)
    del event["campaign_id"]
    return SourceRecord("conversions", partition, offset, None, click_id.encode(), orjson.dumps(event))


async def test_the_join_reads_clicks_only_when_a_click_is_missing_or_a_wait_is_due(tmp_path: Path) -> None:
    settings = load_settings({"CLICK_GRACE_PERIOD": "60s"}, require_kafka=False)
    topic = FakeChangelog()
    topic.append(0, b"clk-a", click("clk-a", 60))
    join = ClickJoin(settings, "memory", tmp_path, clicks_topic=topic, awaiting_changelog=FakeChangelog())
    await ConversionsPartitionStores(join.clicks, join.awaiting).assign({0})
    reads = len(topic.reads)
    now = time.time()
    # a batch with campaigns only: no read
    plain = SourceRecord("conversions", 0, 0, None, b"cv", orjson.dumps(f.conversion("cv")))
    assert (await join.plan([plain], now, "s")).ready == [plain] and len(topic.reads) == reads
    # a click the store holds: no read
    plan = await join.plan([conversion_record("cv-a", "clk-a")], now, "s")
    assert plan.completed == 1 and len(topic.reads) == reads
    # a click it does not hold: read, and found when it has arrived meanwhile
    topic.append(0, b"clk-b", click("clk-b", 1))
    plan = await join.plan([conversion_record("cv-b", "clk-b", offset=1)], now, "s")
    assert plan.completed == 1 and len(topic.reads) == reads + 1
    # a missing one waits; the waiting are looked for in Kafka at most every CLICK_RECHECK_SECONDS...
    plan = await join.plan([conversion_record("cv-c", "clk-c", offset=2)], now, "s")
    assert plan.waiting == 1 and len(topic.reads) == reads + 2
    for partition, key, value in plan.store_changes:
        join.awaiting.apply(partition, key, value, 0)
    assert (await join.plan([], now + 1, "s")).waiting == 1 and len(topic.reads) == reads + 2
    assert (await join.plan([], now + CLICK_RECHECK_SECONDS, "s")).waiting == 1 and len(topic.reads) == reads + 3
    # ...and always before one is refused: a click that arrived just in time completes it
    topic.append(0, b"clk-c", click("clk-c", 1))
    plan = await join.plan([], now + CLICK_RECHECK_SECONDS + 0.5 + 60, "s")
    assert (plan.completed, plan.unknown) == (1, 0) and len(topic.reads) == reads + 4
