"""The api's conversion trace index: a local RocksDB built from the service's own topics.

`postback-router api` reads `conversions.evaluated`, `postbacks.results` and `postbacks.dead-letter`
with a plain consumer (no group: every api replica builds its own index), from the beginning the
first time and from the positions kept in the index afterwards (written in the same RocksDB batch as
the rows, so a restart resumes exactly). A lookup is one range scan under the conversion's prefix:
it does not wait for the topics' end, so a trace lags the topics by the consumer's fetch (normally
well under a second).

Layout (raw bytes keys, `\\0`-separated; values start with the record's 13-digit time in ms):
- `c \\0 <conversion_id> \\0 v \\0 <time><partition><offset>`: one evaluated version (compact form);
- `c \\0 <conversion_id> \\0 r \\0 <postback_id>`: the last delivery result of a postback;
- `c \\0 <conversion_id> \\0 d \\0 <postback_id>`: why a postback was dead-lettered;
- `p \\0 <postback_id>`: its conversion (from the evaluations: a dead-letter record whose postback
  could not be kept names none); `x \\0 <postback_id>`: a dead-letter record of an unknown postback;
- `t \\0 <time> \\0 <row key>`: the time index the retention sweep walks, oldest first;
- `o \\0 <topic> \\0 <partition>`: the next offset to read.
Rows older than TRACE_RETENTION (by their record's Kafka timestamp) are deleted by a periodic sweep
and not written at all when read after it: memory and disk are bounded by the retention, not by a
Python dict.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from postback_router.api.trace_document import (
    compact_dead_letter,
    compact_evaluation,
    compact_result,
    dead_letter_conversion_id,
    trace_document,
)
from service.kafka_connection import KafkaConnection
from service.settings import Settings

log = logging.getLogger(__name__)

SEP = b"\x00"
# Applying a fetch runs on the api's event loop: about 10 ms per thousand records, so intake and
# lookups wait at most that long while the index catches up with the topics.
FETCH_MAX_RECORDS = 1000
SWEEP_CHUNK = 10_000  # rows deleted per step; the event loop answers lookups between steps
TIME_WIDTH = 13
WRITE_BUFFER_BYTES = 16 * 2**20
BLOCK_CACHE_BYTES = 32 * 2**20


@dataclass(frozen=True, slots=True)
class TraceTopics:
    evaluations: str
    results: str
    dead_letter: str


@dataclass(frozen=True, slots=True)
class IndexedRecord:
    """One consumed record, as the index needs it (tests and the benchmark build these directly)."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    value: bytes | None


def _conversion_prefix(conversion_id: str) -> bytes:
    return b"c" + SEP + conversion_id.encode("utf-8") + SEP


def _stamp(timestamp_ms: int) -> bytes:
    return b"%013d" % max(0, timestamp_ms)


class TraceStore:
    """The RocksDB side: apply consumed records, look a conversion up, sweep old rows. No Kafka."""

    def __init__(self, path: Path, topics: TraceTopics, retention_seconds: int) -> None:
        from rocksdict import BlockBasedOptions, Cache, Options, Rdict

        path.mkdir(parents=True, exist_ok=True)
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        # Memory: two small memtables and a fixed block cache. The index and bloom filter blocks stay
        # in the table readers (a few MB per million conversions, bounded by the retention): moved
        # into the cache, they made a lookup after a fill 30 times slower (devtools/bench/trace_index.py).
        options.set_write_buffer_size(WRITE_BUFFER_BYTES)
        options.set_max_write_buffer_number(2)
        table = BlockBasedOptions()
        table.set_block_cache(Cache(BLOCK_CACHE_BYTES))
        table.set_bloom_filter(10, False)
        options.set_block_based_table_factory(table)
        self._db = Rdict(str(path), options)
        self._topics = topics
        self.retention_seconds = retention_seconds

    def close(self) -> None:
        self._db.close()

    # -- positions

    def positions(self) -> dict[tuple[str, int], int]:
        found: dict[tuple[str, int], int] = {}
        for key, value in self._scan(b"o" + SEP):
            _, topic, partition = key.split(SEP)
            found[(topic.decode(), int(partition))] = int(value)
        return found

    # -- writing

    def apply(self, records: Iterable[IndexedRecord], now_ms: int | None = None) -> int:
        """Index `records` and their positions in one atomic batch; returns the rows written."""
        from rocksdict import WriteBatch

        cutoff = (now_ms if now_ms is not None else int(time.time() * 1000)) - self.retention_seconds * 1000
        batch = WriteBatch(raw_mode=True)
        pending: dict[bytes, bytes] = {}  # postback -> conversion, for a dead-letter in the same batch
        positions: dict[tuple[str, int], int] = {}
        written = 0
        for record in records:
            positions[(record.topic, record.partition)] = record.offset + 1
            if record.value is None or record.timestamp_ms < cutoff:
                continue
            try:
                value: dict[str, Any] = orjson.loads(record.value)
                rows = self._rows(record, value, pending)
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
                # not ours to refuse: the index shows what it can read and goes on
                log.warning(
                    "trace index skipped a record at %s/%d/%d: %s",
                    record.topic,
                    record.partition,
                    record.offset,
                    type(exc).__name__,
                )
                continue
            stamp = _stamp(record.timestamp_ms)
            for key, body in rows:
                batch.put(key, stamp + body)
                batch.put(b"t" + SEP + stamp + SEP + key, b"")
                written += 1
        for (topic, partition), offset in positions.items():
            batch.put(b"o" + SEP + topic.encode() + SEP + str(partition).encode(), str(offset).encode())
        self._db.write(batch)
        return written

    def _rows(
        self, record: IndexedRecord, value: dict[str, Any], pending: dict[bytes, bytes]
    ) -> list[tuple[bytes, bytes]]:
        topics = self._topics
        if record.topic == topics.evaluations:
            prefix = _conversion_prefix(value["conversion_id"])
            position = b"%s%05d%015d" % (_stamp(record.timestamp_ms), record.partition, record.offset)
            rows = [(prefix + b"v" + SEP + position, orjson.dumps(compact_evaluation(value)))]
            conversion = value["conversion_id"].encode("utf-8")
            for fired in value["fired"]:
                postback = fired["postback_id"].encode("utf-8")
                pending[postback] = conversion
                rows.append((b"p" + SEP + postback, conversion))
            return rows
        if record.topic == topics.results:
            key = _conversion_prefix(value["conversion_id"]) + b"r" + SEP + value["postback_id"].encode("utf-8")
            return [(key, orjson.dumps(compact_result(value)))]
        if record.topic == topics.dead_letter:
            postback = value["postback_id"].encode("utf-8")
            body = orjson.dumps(compact_dead_letter(value))
            named = dead_letter_conversion_id(value)
            conversion = named.encode("utf-8") if named is not None else pending.get(postback) or self._owner(postback)
            if conversion is None:
                return [(b"x" + SEP + postback, body)]
            return [(b"c" + SEP + conversion + SEP + b"d" + SEP + postback, body)]
        return []

    def _owner(self, postback: bytes) -> bytes | None:
        raw = self._db.get(b"p" + SEP + postback)
        return None if raw is None else bytes(raw)[TIME_WIDTH:]

    # -- reading

    def lookup(self, conversion_id: str) -> dict[str, Any] | None:
        """The trace document of `conversion_id`, or None when the index holds nothing of it."""
        if "\x00" in conversion_id:  # the key separator: no stored id holds it
            return None
        prefix = _conversion_prefix(conversion_id)
        versions: list[dict[str, Any]] = []
        results: dict[str, dict[str, Any]] = {}
        dead_letters: dict[str, dict[str, Any]] = {}
        for key, value in self._scan(prefix):
            kind, _, rest = key[len(prefix) :].partition(SEP)
            body = orjson.loads(value[TIME_WIDTH:])
            if kind == b"v":
                versions.append(body)
            elif kind == b"r":
                results[rest.decode("utf-8")] = body
            elif kind == b"d":
                dead_letters[rest.decode("utf-8")] = body
        for version in versions:  # dead-letter records read before their conversion was known
            for fired in version["fired"]:
                postback_id = fired[3]
                if postback_id not in dead_letters:
                    orphan = self._db.get(b"x" + SEP + postback_id.encode("utf-8"))
                    if orphan is not None:
                        dead_letters[postback_id] = orjson.loads(bytes(orphan)[TIME_WIDTH:])
        return trace_document(conversion_id, versions, results, dead_letters)

    def _scan(self, prefix: bytes, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        iterator = self._db.iter()
        iterator.seek(start or prefix)
        while iterator.valid():
            key = bytes(iterator.key())
            if not key.startswith(prefix):
                break
            yield key, bytes(iterator.value())
            iterator.next()

    # -- retention

    def sweep_step(self, now_ms: int | None = None, limit: int = SWEEP_CHUNK) -> int:
        """Delete up to `limit` rows older than the retention, oldest first; returns how many."""
        from rocksdict import WriteBatch

        cutoff = _stamp((now_ms if now_ms is not None else int(time.time() * 1000)) - self.retention_seconds * 1000)
        batch = WriteBatch(raw_mode=True)
        deleted = 0
        for key, _ in self._scan(b"t" + SEP):
            stamp, _, row = key[2:].partition(SEP)
            if stamp >= cutoff or deleted >= limit:
                break
            current = self._db.get(row)
            # a row written again since (a later result of the same postback) is younger: kept
            if current is not None and bytes(current)[:TIME_WIDTH] <= stamp:
                batch.delete(row)
            batch.delete(key)
            deleted += 1
        if deleted:
            self._db.write(batch)
        return deleted

    def sweep(self, now_ms: int | None = None) -> int:
        deleted = 0
        while step := self.sweep_step(now_ms):
            deleted += step
        return deleted


class TraceIndex:
    """The Kafka side: keeps a TraceStore up to date from the three topics until stopped."""

    def __init__(
        self, kafka: KafkaConnection, store: TraceStore, topics: TraceTopics, sweep_interval_seconds: float
    ) -> None:
        self._kafka = kafka
        self.store = store
        self._topics = topics
        self._sweep_interval = sweep_interval_seconds
        self._tasks: list[asyncio.Task[None]] = []
        self._consumer: AIOKafkaConsumer | None = None

    def lookup(self, conversion_id: str) -> dict[str, Any] | None:
        return self.store.lookup(conversion_id)

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._follow(), name="trace-index"),
            asyncio.create_task(self._sweep_periodically(), name="trace-index-sweep"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                await self._consumer.stop()
        self.store.close()

    async def _follow(self) -> None:
        while True:
            try:
                await self._consume()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # the api keeps answering (traces go stale); the index resumes from its kept positions
                log.warning("trace index stopped reading (%s); retrying", type(exc).__name__)
                await asyncio.sleep(5)

    async def _consume(self) -> None:
        consumer = AIOKafkaConsumer(
            **self._kafka.client_kwargs(), group_id=None, enable_auto_commit=False, auto_offset_reset="earliest"
        )
        self._consumer = consumer
        await consumer.start()
        try:
            partitions = await self._partitions(consumer)
            consumer.assign(partitions)
            kept = self.store.positions()
            for tp in partitions:
                offset = kept.get((tp.topic, tp.partition))
                if offset is None:
                    await consumer.seek_to_beginning(tp)
                else:
                    consumer.seek(tp, offset)
            log.info("trace index reading %d partitions (%d resumed)", len(partitions), len(kept))
            while True:
                fetched = await consumer.getmany(timeout_ms=1000, max_records=FETCH_MAX_RECORDS)
                records = [
                    IndexedRecord(tp.topic, tp.partition, r.offset, r.timestamp, r.value)
                    for tp, batch in fetched.items()
                    for r in batch
                ]
                if records:
                    self.store.apply(records)
        finally:
            await consumer.stop()
            self._consumer = None

    async def _partitions(self, consumer: AIOKafkaConsumer) -> list[TopicPartition]:
        names = (self._topics.evaluations, self._topics.results, self._topics.dead_letter)
        while True:
            await consumer.topics()
            found = {name: consumer.partitions_for_topic(name) for name in names}
            if all(found.values()):
                return [TopicPartition(name, p) for name, ps in found.items() for p in sorted(ps or ())]
            await asyncio.sleep(1)  # the topics are created by `postback-router topics` or the first process

    async def _sweep_periodically(self) -> None:
        while True:
            deleted = 0
            while step := self.store.sweep_step():
                deleted += step
                await asyncio.sleep(0)  # lookups and the consumer go on between steps
            if deleted:
                log.info("trace index sweep deleted %d rows older than the retention", deleted)
            await asyncio.sleep(self._sweep_interval)


def trace_index_for(settings: Settings) -> TraceIndex:
    """The api's index, under STATE_DIR/<APP_ID>-api/trace-index (RocksDB whatever STATE_STORE says:
    the index is rebuilt from the topics, so losing it costs a re-read, never data)."""
    topics = TraceTopics(settings.topics.evaluations, settings.topics.results, settings.topics.dead_letter)
    path = Path(settings.state_dir) / f"{settings.app_id}-api" / "trace-index"
    store = TraceStore(path, topics, settings.trace_retention_seconds)
    return TraceIndex(settings.kafka, store, topics, settings.trace_sweep_interval_seconds)
