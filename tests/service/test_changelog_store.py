"""The partition state backends of ChangelogStore: memory for tests, RocksDB (rocksdict) for production."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Callable, Mapping
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from service.changelog_store import (
    ChangelogIdentity,
    ChangelogStore,
    LivePartition,
    MemoryPartitionState,
    PartitionState,
    RocksPartitionState,
    StateStoreMetrics,
    record_digest,
    stale_reason,
)
from service.kafka_connection import KafkaConnection
from service.kafka_io import Record


def memory(_: Path) -> PartitionState:
    return MemoryPartitionState()


def rocks(path: Path) -> PartitionState:
    return RocksPartitionState(path / "partition-0")


@pytest.mark.parametrize("open_state", [memory, rocks], ids=["memory", "rocksdb"])
def test_put_get_delete_items_and_changelog_offset(
    open_state: Callable[[Path], PartitionState], tmp_path: Path
) -> None:
    state = open_state(tmp_path)
    assert state.get(b"a") is None and state.next_changelog_offset() == 0
    state.put(b"a", b"1")
    state.put(b"b", b"2")
    state.put(b"a", b"3")
    state.delete(b"b")
    state.delete(b"never-there")
    state.set_next_changelog_offset(42)
    assert state.get(b"a") == b"3" and state.get(b"b") is None
    assert dict(state.items()) == {b"a": b"3"}  # the offset marker is not a key
    assert state.next_changelog_offset() == 42
    state.close()


def test_rocksdb_state_survives_a_reopen(tmp_path: Path) -> None:
    state = rocks(tmp_path)
    state.put(b"conversion", b"fired")
    state.set_next_changelog_offset(7)
    state.close()
    reopened = rocks(tmp_path)
    assert reopened.get(b"conversion") == b"fired"
    assert reopened.next_changelog_offset() == 7
    reopened.close()


# --- the identity of a local state, checked on assignment ---------------------------------------------

TOPIC = "app-fired-state-changelog"


def identity(
    offset: int | None = 41, digest: str | None = "d41", cluster: str | None = "cluster-a"
) -> ChangelogIdentity:
    return ChangelogIdentity(cluster_id=cluster, topic=TOPIC, partition=3, offset=offset, digest=digest)


def live(
    end: int = 50, record_offset: int | None = 41, digest: str | None = "d41", cluster: str | None = "cluster-a"
) -> LivePartition:
    return LivePartition(cluster, TOPIC, 3, end, record_offset, digest)


@pytest.mark.parametrize(
    ("stored", "changelog", "reason"),
    [
        pytest.param(identity(), live(), None, id="match"),
        pytest.param(identity(), live(end=42), None, id="match-at-the-end"),
        pytest.param(identity(offset=None, digest=None), live(end=0, record_offset=None), None, id="nothing-applied"),
        pytest.param(None, live(), "no_identity", id="no-identity"),
        pytest.param(identity(digest=None), live(), "no_identity", id="offset-without-digest"),
        pytest.param(identity(), live(cluster="cluster-b"), "cluster_changed", id="cluster-differs"),
        pytest.param(
            identity(), LivePartition("cluster-a", "other-changelog", 3, 50, 41, "d41"), "topic_changed", id="topic"
        ),
        pytest.param(identity(), LivePartition("cluster-a", TOPIC, 4, 50, 41, "d41"), "topic_changed", id="partition"),
        pytest.param(identity(), live(end=0, record_offset=None, digest=None), "changelog_shorter", id="empty"),
        pytest.param(identity(), live(end=41, record_offset=None, digest=None), "changelog_shorter", id="shorter"),
        pytest.param(identity(), live(record_offset=45, digest="d45"), "record_missing", id="record-compacted-away"),
        pytest.param(identity(), live(digest="other"), "record_differs", id="record-differs"),
    ],
)
def test_stale_reason(stored: ChangelogIdentity | None, changelog: LivePartition, reason: str | None) -> None:
    assert stale_reason(stored, changelog) == reason


class FakeChangelog:
    """A changelog topic in memory: partition -> its records (offset = index; value None: a tombstone)."""

    def __init__(self, cluster_id: str | None = "cluster-a") -> None:
        self.cluster_id = cluster_id
        self.partitions: dict[int, list[tuple[bytes, bytes | None]]] = {}
        self.reads: list[dict[int, int]] = []
        self.fail_reads = 0
        self.hold_reads: asyncio.Event | None = None  # set: a read waits after its first batch until it is set
        self.held = asyncio.Event()
        self.closed_reads = 0

    def append(self, partition: int, key: bytes, value: bytes | None) -> int:
        records = self.partitions.setdefault(partition, [])
        records.append((key, value))
        return len(records) - 1

    async def inspect(self, topic: str, offsets: Mapping[int, int]) -> tuple[str | None, dict[int, LivePartition]]:
        found = {}
        for p, offset in offsets.items():
            records = self.partitions.get(p, [])
            if offset < len(records):
                key, value = records[offset]
                found[p] = LivePartition(self.cluster_id, topic, p, len(records), offset, record_digest(key, value))
            else:
                found[p] = LivePartition(self.cluster_id, topic, p, len(records))
        return self.cluster_id, found

    async def read(self, topic: str, start: Mapping[int, int]) -> AsyncGenerator[list[Record], None]:
        self.reads.append(dict(start))
        if self.fail_reads:
            self.fail_reads -= 1
            raise ConnectionError("broker went away")
        try:
            for p, offset in start.items():
                records = self.partitions.get(p, [])
                yield [Record(topic, p, o, k, v) for o, (k, v) in enumerate(records) if o >= offset]
                if self.hold_reads is not None:
                    self.held.set()
                    await self.hold_reads.wait()
        finally:
            self.closed_reads += 1


class StoreHarness:
    def __init__(self, tmp_path: Path, changelog: FakeChangelog) -> None:
        self.registry = CollectorRegistry()
        self.metrics = StateStoreMetrics(self.registry)
        self.changelog = changelog
        self.directory = tmp_path / "state"

    def store(self, changelog: FakeChangelog | None = None) -> ChangelogStore:
        return ChangelogStore(
            KafkaConnection.plaintext("unused:9092"),
            TOPIC,
            "rocksdb",
            self.directory,
            metrics=self.metrics,
            changelog=changelog or self.changelog,
        )

    def discarded(self, reason: str) -> float:
        return (
            self.registry.get_sample_value("postback_state_discarded_total", {"changelog": TOPIC, "reason": reason})
            or 0
        )


def contents(store: ChangelogStore) -> dict[bytes, bytes]:
    return {key: value for _, key, value in store.items()}


async def test_a_local_state_of_the_same_changelog_replays_only_what_is_new(tmp_path: Path) -> None:
    changelog = FakeChangelog()
    h = StoreHarness(tmp_path, changelog)
    for i in range(5):
        changelog.append(0, f"k{i}".encode(), b"v")
    store = h.store()
    await store.assign({0})
    assert changelog.reads == [{0: 0}] and len(contents(store)) == 5
    offset = changelog.append(0, b"k9", b"new")  # written by this process: acknowledged, then applied
    store.apply(0, b"k9", b"new", offset)
    store.close()
    changelog.append(0, b"k1", None)  # written by another owner since
    again = h.store()
    await again.assign({0})
    assert changelog.reads[-1] == {0: 6}, "the identity held: only the record after it is replayed"
    assert contents(again) == {b"k0": b"v", b"k2": b"v", b"k3": b"v", b"k4": b"v", b"k9": b"new"}
    assert h.discarded("no_identity") == 0
    again.close()


@pytest.mark.parametrize(
    ("recreate", "reason"),
    [
        pytest.param("empty", "changelog_shorter", id="changelog-recreated-empty"),
        pytest.param("shorter", "changelog_shorter", id="changelog-shorter"),
        pytest.param("other-records", "record_differs", id="record-differs"),
        pytest.param("other-cluster", "cluster_changed", id="cluster-differs"),
    ],
)
async def test_a_local_state_that_does_not_belong_to_the_changelog_is_discarded_and_restored(
    tmp_path: Path, recreate: str, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    old = FakeChangelog()
    for i in range(10):
        old.append(2, f"old-{i}".encode(), b"fired")
    h = StoreHarness(tmp_path, old)
    store = h.store()
    await store.assign({2})
    store.close()
    new = FakeChangelog("cluster-b" if recreate == "other-cluster" else "cluster-a")
    count = {"empty": 0, "shorter": 4, "other-records": 12, "other-cluster": 10}[recreate]
    for i in range(count):
        new.append(2, f"new-{i}".encode(), b"fired")
    caplog.set_level(logging.INFO, logger="service.changelog_store")
    again = h.store(new)
    await again.assign({2})
    assert new.reads == [{2: 0}], "restored from the beginning"
    assert contents(again) == {f"new-{i}".encode(): b"fired" for i in range(count)}, "nothing of the old state"
    assert h.discarded(reason) == 1
    [line] = [r for r in caplog.records if "discarded" in r.getMessage()]
    assert line.levelno == logging.INFO and f"({reason})" in line.getMessage()
    assert "partition 2" in line.getMessage()
    again.close()
    # restored, the state belongs to the new changelog: the next assignment keeps it
    third = h.store(new)
    await third.assign({2})
    assert new.reads[-1] == {2: count} and h.discarded(reason) == 1
    third.close()


async def test_a_local_state_without_identity_is_discarded_and_restored(tmp_path: Path) -> None:
    # what a RocksDB directory written before identities were kept holds: keys and a bare next offset
    legacy = RocksPartitionState(tmp_path / "state" / "partition-0")
    legacy.put(b"stale", b"fired")
    legacy.set_next_changelog_offset(3)
    legacy.close()
    changelog = FakeChangelog()
    for i in range(3):
        changelog.append(0, f"k{i}".encode(), b"v")
    h = StoreHarness(tmp_path, changelog)
    store = h.store()
    await store.assign({0})
    assert changelog.reads == [{0: 0}]
    assert contents(store) == {b"k0": b"v", b"k1": b"v", b"k2": b"v"}
    assert h.discarded("no_identity") == 1
    store.close()


async def test_a_fresh_directory_is_restored_without_counting_a_discard(tmp_path: Path) -> None:
    changelog = FakeChangelog()
    changelog.append(1, b"k", b"v")
    h = StoreHarness(tmp_path, changelog)
    store = h.store()
    await store.assign({1})
    assert contents(store) == {b"k": b"v"}
    assert not [s for m in h.registry.collect() if m.name == "postback_state_discarded" for s in m.samples]
    store.close()


async def test_a_failed_restore_keeps_nothing_open_so_that_a_retry_can_reopen_it(tmp_path: Path) -> None:
    changelog = FakeChangelog()
    changelog.append(0, b"k", b"v")
    changelog.fail_reads = 1
    h = StoreHarness(tmp_path, changelog)
    store = h.store()
    with pytest.raises(ConnectionError):
        await store.assign({0})
    assert store.partitions == set()
    assert h.registry.get_sample_value("postback_state_restore_failures_total", {"changelog": TOPIC}) == 1
    await store.assign({0})  # RocksDB refuses a second open of a database still open in this process
    assert contents(store) == {b"k": b"v"}
    store.close()


async def test_a_cancelled_restore_closes_its_read_and_keeps_nothing_open(tmp_path: Path) -> None:
    """A revocation cancels a restore under way (service/group_member.py): the changelog read stops at once
    and the partition's database is closed, so that the next assignment can open it again."""
    changelog = FakeChangelog()
    changelog.append(0, b"k", b"v")
    changelog.append(1, b"j", b"w")
    changelog.hold_reads = asyncio.Event()
    h = StoreHarness(tmp_path, changelog)
    store = h.store()
    restore = asyncio.create_task(store.assign({0, 1}))
    await changelog.held.wait()
    restore.cancel()
    with pytest.raises(asyncio.CancelledError):
        await restore
    assert changelog.closed_reads == 1
    assert store.partitions == set()
    changelog.hold_reads = None
    await store.assign({0, 1})  # RocksDB refuses a second open of a database still open in this process
    assert contents(store) == {b"k": b"v", b"j": b"w"}
    store.close()
