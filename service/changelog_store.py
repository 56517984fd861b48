"""State kept per owned partition and restored from a compacted changelog topic.

Used for the worker's fired-state (keyed by conversion_id) and the dispatchers' delivery state
(keyed by postback_id). The state of input partition p lives in changelog partition p, so it moves
with the partition in a consumer-group rebalance. Every change is written to the changelog, and
acknowledged, before the input offsets that caused it are committed; a process that is assigned a
partition restores its state from the changelog before it handles anything on it (the group member,
service/group_member.py, does both).

Two backends: memory (tests; restored from the changelog at each assignment) and RocksDB through
rocksdict (production; kept across restarts, so a restart replays only what is new).

**Local state is used only when it provably belongs to the live changelog.** Beside its keys, a
RocksDB partition keeps the identity of what it was restored from: the Kafka cluster id, the
changelog topic and partition (its source), and the offset and a digest of the last changelog record
it applied. On assignment (`ChangelogStore.assign`) the identity is checked against the live
changelog (`stale_reason`): same cluster, same topic and partition, the changelog's end past that
offset, and the record at that offset there and equal to the one applied. Then only the records
after it are replayed; otherwise (a new cluster, topics deleted and recreated, a state directory
copied from elsewhere, or written before identities were kept) the local state is discarded and
restored from the beginning of the changelog: logged at INFO with the reason, counted in
`postback_state_discarded_total{changelog, reason}`. aiokafka (Metadata v5 at most) does not expose
topic ids, so a topic's identity is its name plus its content at that offset.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncGenerator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import OffsetOutOfRangeError
from aiokafka.protocol.metadata import MetadataRequest
from prometheus_client import CollectorRegistry, Counter

from service.kafka_connection import KafkaConnection
from service.kafka_io import Record, read_partitions

log = logging.getLogger(__name__)

# The store's own keys start with a NUL byte; the keys of the state are ids from JSON messages that
# never do, so they cannot collide. `changelog-offset`: the next changelog offset to apply, then
# (since identities are kept) a space and the digest of the record before it. `changelog-source`:
# the cluster, topic and partition the state was restored from.
_RESERVED_PREFIX = b"\x00"
_OFFSET_KEY = b"\x00changelog-offset"
_SOURCE_KEY = b"\x00changelog-source"

# How long the check of a local state may wait for the changelog's record at its offset before the
# restore counts as failed (and is retried by the group member).
PROBE_TIMEOUT_SECONDS = 30.0
PROBE_FETCH_MS = 200


def record_digest(key: bytes | None, value: bytes | None) -> str:
    """The digest of one changelog record as applied (its key and value; None is not b"")."""
    digest = hashlib.blake2b(digest_size=16)
    for part in (key, value):
        if part is None:
            digest.update(b"\xff")
        else:
            digest.update(len(part).to_bytes(8, "big"))
            digest.update(part)
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class ChangelogIdentity:
    """What a local state was restored from, and the last changelog record it applied."""

    cluster_id: str | None
    topic: str
    partition: int
    offset: int | None  # of the last record applied; None: none yet
    digest: str | None  # of that record; None: written before identities were kept


@dataclass(frozen=True, slots=True)
class LivePartition:
    """The live changelog partition, as seen when a local state is checked against it."""

    cluster_id: str | None
    topic: str
    partition: int
    end: int  # the partition's end (high watermark): the offset its next record will get
    record_offset: int | None = None  # the first record at or after the identity's offset, if any
    record_digest: str | None = None


def stale_reason(identity: ChangelogIdentity | None, live: LivePartition) -> str | None:
    """Why a local state cannot be trusted as a prefix of the live changelog; None when it can."""
    if identity is None:
        return "no_identity"
    if identity.cluster_id != live.cluster_id:
        return "cluster_changed"
    if (identity.topic, identity.partition) != (live.topic, live.partition):
        return "topic_changed"
    if identity.offset is None:
        return None  # nothing applied yet: the whole changelog is new to it
    if identity.digest is None:
        return "no_identity"
    if live.end <= identity.offset:
        return "changelog_shorter"
    if live.record_offset != identity.offset:
        return "record_missing"
    if live.record_digest != identity.digest:
        return "record_differs"
    return None


_REASON_TEXT = {
    "no_identity": "it holds no identity of the changelog it came from",
    "cluster_changed": "it was restored from another Kafka cluster",
    "topic_changed": "it was restored from another changelog topic or partition",
    "changelog_shorter": "the changelog ends before the last record it applied (topic recreated?)",
    "record_missing": "the record it applied last is not in the changelog",
    "record_differs": "the changelog holds another record at the offset it applied last (topic recreated?)",
}


class PartitionState(Protocol):
    def get(self, key: bytes) -> bytes | None: ...
    def put(self, key: bytes, value: bytes) -> None: ...
    def delete(self, key: bytes) -> None: ...
    def items(self) -> Iterator[tuple[bytes, bytes]]: ...
    def next_changelog_offset(self) -> int: ...
    def set_next_changelog_offset(self, offset: int) -> None: ...
    def set_last_applied(self, offset: int, digest: str) -> None: ...
    def identity(self) -> ChangelogIdentity | None: ...
    def set_source(self, cluster_id: str | None, topic: str, partition: int) -> None: ...
    def is_empty(self) -> bool: ...
    def clear(self) -> None: ...
    def close(self) -> None: ...


def _identity(source: bytes | None, next_offset: int, digest: str | None) -> ChangelogIdentity | None:
    if source is None:
        return None
    data = orjson.loads(source)
    return ChangelogIdentity(
        cluster_id=data["cluster_id"],
        topic=data["topic"],
        partition=int(data["partition"]),
        offset=next_offset - 1 if next_offset > 0 else None,
        digest=digest,
    )


def _source(cluster_id: str | None, topic: str, partition: int) -> bytes:
    return orjson.dumps({"cluster_id": cluster_id, "topic": topic, "partition": partition})


class MemoryPartitionState:
    def __init__(self) -> None:
        self._data: dict[bytes, bytes] = {}
        self._next_offset = 0
        self._digest: str | None = None
        self._source: bytes | None = None

    def get(self, key: bytes) -> bytes | None:
        return self._data.get(key)

    def put(self, key: bytes, value: bytes) -> None:
        self._data[key] = value

    def delete(self, key: bytes) -> None:
        self._data.pop(key, None)

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        return iter(list(self._data.items()))

    def next_changelog_offset(self) -> int:
        return self._next_offset

    def set_next_changelog_offset(self, offset: int) -> None:
        self._next_offset = offset
        self._digest = None

    def set_last_applied(self, offset: int, digest: str) -> None:
        self._next_offset = offset + 1
        self._digest = digest

    def identity(self) -> ChangelogIdentity | None:
        return _identity(self._source, self._next_offset, self._digest)

    def set_source(self, cluster_id: str | None, topic: str, partition: int) -> None:
        self._source = _source(cluster_id, topic, partition)

    def is_empty(self) -> bool:
        return not self._data and self._next_offset == 0 and self._source is None

    def clear(self) -> None:
        self._data.clear()
        self._next_offset, self._digest, self._source = 0, None, None

    def close(self) -> None:
        self._data.clear()


class RocksPartitionState:
    def __init__(self, path: Path) -> None:
        from rocksdict import Rdict

        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._db = Rdict(str(path))
        self._next_offset, self._digest = self._read_offset()

    def _read_offset(self) -> tuple[int, str | None]:
        raw = self._db.get(_OFFSET_KEY)
        if raw is None:
            return 0, None
        offset, _, digest = bytes(raw).decode().partition(" ")
        return int(offset), digest or None

    def get(self, key: bytes) -> bytes | None:
        value = self._db.get(key)
        return None if value is None else bytes(value)

    def put(self, key: bytes, value: bytes) -> None:
        self._db[key] = value

    def delete(self, key: bytes) -> None:
        if key in self._db:
            del self._db[key]

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        for key, value in self._db.items():
            if isinstance(key, bytes) and isinstance(value, bytes) and not key.startswith(_RESERVED_PREFIX):
                yield key, value

    def next_changelog_offset(self) -> int:
        return self._next_offset

    def set_next_changelog_offset(self, offset: int) -> None:
        self._next_offset, self._digest = offset, None
        self._db[_OFFSET_KEY] = str(offset).encode()

    def set_last_applied(self, offset: int, digest: str) -> None:
        self._next_offset, self._digest = offset + 1, digest
        self._db[_OFFSET_KEY] = f"{offset + 1} {digest}".encode()

    def identity(self) -> ChangelogIdentity | None:
        raw = self._db.get(_SOURCE_KEY)
        return _identity(None if raw is None else bytes(raw), self._next_offset, self._digest)

    def set_source(self, cluster_id: str | None, topic: str, partition: int) -> None:
        self._db[_SOURCE_KEY] = _source(cluster_id, topic, partition)

    def is_empty(self) -> bool:
        return next(iter(self._db.keys()), None) is None

    def clear(self) -> None:
        """Delete the whole database and start an empty one in its place."""
        from rocksdict import Rdict

        self._db.close()
        Rdict.destroy(str(self._path))
        self._db = Rdict(str(self._path))
        self._next_offset, self._digest = 0, None

    def close(self) -> None:
        self._db.close()


class StateStoreMetrics:
    """The counters of the changelog stores of one process (one registry, however many stores)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.discarded = Counter(
            "postback_state_discarded_total",
            "Local partition states discarded on assignment because they did not provably belong to the "
            "live changelog, by changelog topic and reason; each is then restored from the changelog.",
            ["changelog", "reason"],
            registry=registry,
        )
        self.restore_failures = Counter(
            "postback_state_restore_failures_total",
            "Restores of assigned partitions from a changelog that failed (each is retried).",
            ["changelog"],
            registry=registry,
        )


class Changelog(Protocol):
    """The live changelog topic, as the store checks and restores from it (KafkaChangelog; fakes in tests)."""

    async def inspect(self, topic: str, offsets: Mapping[int, int]) -> tuple[str | None, dict[int, LivePartition]]:
        """The cluster id, and for each partition -> offset the partition's end and its first record from there."""
        ...

    def read(self, topic: str, start: Mapping[int, int]) -> AsyncGenerator[list[Record], None]:
        """Every record of the partitions from their start offsets up to their current end, in batches."""
        ...


class KafkaChangelog:
    def __init__(self, kafka: KafkaConnection) -> None:
        self._kafka = kafka

    async def inspect(self, topic: str, offsets: Mapping[int, int]) -> tuple[str | None, dict[int, LivePartition]]:
        # auto_offset_reset="none": an offset past the end must not silently become "the end" (a real
        # Kafka answers OFFSET_OUT_OF_RANGE; the development broker answers nothing, with its high watermark).
        consumer = AIOKafkaConsumer(
            **self._kafka.client_kwargs(), group_id=None, enable_auto_commit=False, auto_offset_reset="none"
        )
        await consumer.start()
        try:
            cluster_id = await _cluster_id(consumer, topic)
            return cluster_id, await _probe(consumer, cluster_id, topic, offsets)
        finally:
            await consumer.stop()

    def read(self, topic: str, start: Mapping[int, int]) -> AsyncGenerator[list[Record], None]:
        tps = {TopicPartition(topic, p): offset for p, offset in start.items()}
        return read_partitions(self._kafka, list(tps), tps)


async def _cluster_id(consumer: AIOKafkaConsumer, topic: str) -> str | None:
    """The cluster id of a Metadata response (v2 and later; aiokafka keeps it nowhere)."""
    client = consumer._client  # no public accessor for the client's requests
    response = await client.send(client.get_random_node(), MetadataRequest([topic], allow_auto_topic_creation=False))
    cluster_id = getattr(response, "cluster_id", None)
    return None if cluster_id is None else str(cluster_id)


async def _probe(
    consumer: AIOKafkaConsumer, cluster_id: str | None, topic: str, offsets: Mapping[int, int]
) -> dict[int, LivePartition]:
    """For each partition -> offset: the partition's end and its first record at or after the offset."""
    found: dict[int, LivePartition] = {}
    pending = {TopicPartition(topic, p): offset for p, offset in offsets.items()}
    if not pending:
        return found
    consumer.assign(list(pending))
    for tp, offset in pending.items():
        consumer.seek(tp, offset)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + PROBE_TIMEOUT_SECONDS

    def resolve(tp: TopicPartition, end: int, record_offset: int | None = None, digest: str | None = None) -> None:
        found[tp.partition] = LivePartition(cluster_id, topic, tp.partition, end, record_offset, digest)
        del pending[tp]
        consumer.pause(tp)

    while pending:
        try:
            batches = await consumer.getmany(*pending, timeout_ms=PROBE_FETCH_MS, max_records=100)
        except OffsetOutOfRangeError as exc:
            out_of_range = [tp for tp in exc.args[0] if tp in pending]
            ends = await consumer.end_offsets(out_of_range)
            for tp in out_of_range:
                resolve(tp, ends[tp])  # past the end: shorter; before the start: the record is gone
            continue
        for tp, records in batches.items():
            if tp in pending and records:
                first = records[0]
                end = max(consumer.highwater(tp) or 0, first.offset + 1)
                resolve(tp, end, first.offset, record_digest(first.key, first.value))
        for tp in list(pending):
            highwater = consumer.highwater(tp)
            if highwater is not None and highwater <= pending[tp]:
                resolve(tp, highwater)  # the development broker's answer to an offset past the end
        if pending and loop.time() > deadline:
            raise TimeoutError(f"{topic}: no answer for partitions {sorted(tp.partition for tp in pending)}")
    return found


class ChangelogStore:
    """Key-value state of the partitions this process owns, restored from the changelog on assignment."""

    def __init__(
        self,
        kafka: KafkaConnection,
        changelog_topic: str,
        backend: str,
        directory: Path,
        *,
        metrics: StateStoreMetrics | None = None,
        changelog: Changelog | None = None,
    ) -> None:
        self.changelog_topic = changelog_topic
        self._backend = backend
        self._directory = directory.absolute()
        self._metrics = metrics
        self._changelog: Changelog = changelog or KafkaChangelog(kafka)
        self._partitions: dict[int, PartitionState] = {}
        if backend != "memory":
            relative = "" if directory.is_absolute() else ", relative to the working directory"
            log.info("%s: local state in RocksDB under %s (STATE_DIR%s)", changelog_topic, self._directory, relative)

    @property
    def partitions(self) -> set[int]:
        return set(self._partitions)

    def _open(self, partition: int) -> PartitionState:
        if self._backend == "memory":
            return MemoryPartitionState()
        return RocksPartitionState(self._directory / f"partition-{partition}")

    async def assign(self, partitions: set[int]) -> None:
        """Open the newly assigned partitions' local state, check that it belongs to the live changelog (else
        discard it), and restore what the changelog holds beyond it. On a failure nothing is kept open and
        the exception propagates (the group member retries)."""
        new = sorted(partitions - set(self._partitions))
        if not new:
            return
        states: dict[int, PartitionState] = {}
        try:
            for p in new:
                states[p] = self._open(p)
            start = await self._verified_start(states)
            restored = await self._restore(states, start)
        except BaseException:  # cancelled too (a revocation during the restore): nothing stays open
            for state in states.values():
                state.close()
            if self._metrics is not None:
                self._metrics.restore_failures.labels(self.changelog_topic).inc()
            raise
        self._partitions.update(states)
        log.info("%s restored for partitions %s (%d changelog records replayed)", self.changelog_topic, new, restored)

    async def _verified_start(self, states: Mapping[int, PartitionState]) -> dict[int, int]:
        """partition -> the changelog offset its restore starts at; stale local states are discarded."""
        if self._backend == "memory":
            return dict.fromkeys(states, 0)  # a fresh memory state holds nothing to check
        identities = {p: state.identity() for p, state in states.items()}
        probe = {p: i.offset for p, i in identities.items() if i is not None and i.offset is not None}
        cluster_id, live = await self._changelog.inspect(self.changelog_topic, probe)
        start: dict[int, int] = {}
        for p, state in states.items():
            identity = identities[p]
            here = live.get(p) or LivePartition(cluster_id, self.changelog_topic, p, 0)
            reason = None if identity is None and state.is_empty() else stale_reason(identity, here)
            if reason is not None:
                self._discard(p, state, identity, here, reason)
            state.set_source(cluster_id, self.changelog_topic, p)
            start[p] = state.next_changelog_offset()
        return start

    def _discard(
        self,
        partition: int,
        state: PartitionState,
        identity: ChangelogIdentity | None,
        live: LivePartition,
        reason: str,
    ) -> None:
        state.clear()
        if self._metrics is not None:
            self._metrics.discarded.labels(self.changelog_topic, reason).inc()
        log.info(
            "%s partition %d: local state discarded, %s (%s); restoring it from the changelog",
            self.changelog_topic,
            partition,
            _REASON_TEXT[reason],
            reason,
            extra={
                "topic": self.changelog_topic,
                "partition": partition,
                "reason": reason,
                "local_identity": None if identity is None else _describe(identity),
                "changelog_end": live.end,
                "cluster_id": live.cluster_id,
            },
        )

    async def _restore(self, states: Mapping[int, PartitionState], start: Mapping[int, int]) -> int:
        restored = 0
        # closed at once when cancelled, not when collected: its consumer stops
        async with contextlib.aclosing(self._changelog.read(self.changelog_topic, start)) as batches:
            async for batch in batches:
                for record in batch:
                    state = states[record.partition]
                    if record.key is not None:
                        if record.value is None:
                            state.delete(record.key)
                        else:
                            state.put(record.key, record.value)
                        restored += 1
                    state.set_last_applied(record.offset, record_digest(record.key, record.value))
        return restored

    def revoke(self, partitions: set[int]) -> None:
        for partition in partitions & set(self._partitions):
            self._partitions.pop(partition).close()

    def close(self) -> None:
        self.revoke(set(self._partitions))

    def get_raw(self, key: bytes, partition: int) -> bytes | None:
        return self._partitions[partition].get(key)

    def items(self) -> Iterator[tuple[int, bytes, bytes]]:
        """(partition, key, value) of every owned key."""
        for partition, state in list(self._partitions.items()):
            for key, value in state.items():
                yield partition, key, value

    def apply(self, partition: int, key: bytes, value: bytes | None, changelog_offset: int) -> None:
        """Record a change that the changelog has acknowledged at `changelog_offset`."""
        state = self._partitions.get(partition)
        if state is None:
            return  # revoked meanwhile: the new owner restores it from the changelog
        if value is None:
            state.delete(key)
        else:
            state.put(key, value)
        if changelog_offset >= state.next_changelog_offset():
            state.set_last_applied(changelog_offset, record_digest(key, value))


def _describe(identity: ChangelogIdentity) -> dict[str, object]:
    return {
        "cluster_id": identity.cluster_id,
        "topic": identity.topic,
        "partition": identity.partition,
        "offset": identity.offset,
    }
