"""A worker's own copy of a compacted topic (campaign rules, offer sources), read from the topic itself.

Every worker reads every partition, so a conversion on any partition finds its campaign's rules,
like Kafka Streams' GlobalKTable. The topic is its own changelog: no extra topic, and none of the
recovery loops Faust's GlobalTable shows with several workers. A record that fails to parse is
skipped and the key keeps its previous valid value; a null value deletes the key. The group member
that owns the partition writes the `.invalid` record (streams/worker.py, built by
streams/core/refusals.py), so it is written once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, KeysView
from typing import Generic, TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas.errors import InvalidInput
from service.kafka_connection import KafkaConnection

T = TypeVar("T")
log = logging.getLogger(__name__)

# Long enough for a slow broker to answer metadata after a restart, short enough to fail a start-up
# that points at the wrong cluster with a clear message instead of hanging.
METADATA_TIMEOUT_SECONDS = 30.0
FETCH_TIMEOUT_MS = 200


class CompactedTopicView(Generic[T]):
    def __init__(
        self,
        kafka: KafkaConnection,
        topic: str,
        parse: Callable[[bytes | None, bytes], T],
        on_change: Callable[[int], None] | None = None,
        keep_timestamps: bool = False,
    ) -> None:
        self.topic = topic
        self._kafka = kafka
        self._parse = parse
        self._on_change = on_change
        self._values: dict[str, T] = {}
        # The timestamp of the record that wrote each key (the api's lists show it); off for the
        # workers, which need no more than the values.
        self._timestamps: dict[str, int] | None = {} if keep_timestamps else None
        # Counts applied records: a reader that caches something derived from the keys (the api's
        # sorted ids) knows when to derive it again.
        self.applied = 0
        self._positions: dict[TopicPartition, int] = {}
        self._consumer: AIOKafkaConsumer | None = None
        # A second client for end-offset queries: on the reading consumer's connection they would
        # wait behind its long-poll fetch (up to fetch_max_wait_ms, 500 ms) before every batch.
        self._offsets_client: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._recovered = asyncio.Event()
        self._advanced = asyncio.Condition()
        self.invalid_skipped = 0

    def get(self, key: str) -> T | None:
        return self._values.get(key)

    def __len__(self) -> int:
        return len(self._values)

    def keys(self) -> KeysView[str]:
        return self._values.keys()

    def timestamp_ms(self, key: str) -> int | None:
        """When the record that wrote `key` was produced (its Kafka timestamp), if timestamps are kept."""
        return None if self._timestamps is None else self._timestamps.get(key)

    @property
    def recovered(self) -> bool:
        return self._recovered.is_set()

    async def start(self) -> None:
        consumer = AIOKafkaConsumer(
            **self._kafka.client_kwargs(),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
        )
        await consumer.start()
        self._consumer = consumer
        self._offsets_client = AIOKafkaConsumer(**self._kafka.client_kwargs(), group_id=None)
        await self._offsets_client.start()
        partitions = await self._partitions(consumer)
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        targets = await consumer.end_offsets(partitions)
        for tp in partitions:
            self._positions[tp] = await consumer.position(tp)
        self._task = asyncio.create_task(self._run(targets), name=f"view:{self.topic}")

    async def _partitions(self, consumer: AIOKafkaConsumer) -> list[TopicPartition]:
        deadline = asyncio.get_running_loop().time() + METADATA_TIMEOUT_SECONDS
        while True:
            await consumer.topics()  # refreshes metadata
            found = consumer.partitions_for_topic(self.topic)
            if found:
                return [TopicPartition(self.topic, p) for p in sorted(found)]
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError(f"topic {self.topic!r} does not exist (create it, or set AUTO_CREATE_TOPICS=true)")
            await asyncio.sleep(0.2)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for client in (self._consumer, self._offsets_client):
            if client is None:
                continue
            try:
                await client.stop()
            except asyncio.CancelledError:
                # Stopped while the cluster is unreachable, aiokafka's fetcher re-raises the
                # cancellation of its own retry back-off; only a cancellation of this task counts.
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
                log.warning("view of %s stopped while Kafka was unreachable", self.topic)
        self._consumer = self._offsets_client = None

    async def wait_recovered(self) -> None:
        """Return once every record that was in the topic at start-up has been applied (contract §2.8)."""
        if self._task is None:
            raise RuntimeError(f"view of {self.topic!r} was not started")
        waiter = asyncio.ensure_future(self._recovered.wait())
        done, _ = await asyncio.wait({waiter, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if waiter not in done:
            waiter.cancel()
            self._task.result()  # re-raises why the reader died
            raise RuntimeError(f"view of {self.topic!r} stopped before it recovered")

    async def catch_up(self) -> None:
        """Return once everything written to the topic before this call has been applied.

        Called before each batch of conversions: a rule published (and acknowledged) before a
        conversion was produced applies to that conversion.
        """
        client = self._offsets_client
        if client is None:
            raise RuntimeError(f"view of {self.topic!r} was not started")
        targets = await client.end_offsets(list(self._positions))
        async with self._advanced:
            await self._advanced.wait_for(lambda: self._reached(targets))

    def _reached(self, targets: dict[TopicPartition, int]) -> bool:
        if self._task is not None and self._task.done() and self._task is not asyncio.current_task():
            raise RuntimeError(f"view of {self.topic!r} stopped")
        return all(self._positions.get(tp, 0) >= offset for tp, offset in targets.items())

    async def _run(self, recovery_targets: dict[TopicPartition, int]) -> None:
        consumer = self._consumer
        assert consumer is not None
        try:
            await self._follow(consumer, recovery_targets)
        finally:
            # wake catch_up() callers so that they see the reader has stopped instead of hanging
            async with self._advanced:
                self._advanced.notify_all()

    async def _follow(self, consumer: AIOKafkaConsumer, recovery_targets: dict[TopicPartition, int]) -> None:
        if self._reached(recovery_targets):
            self._mark_recovered()
        while True:
            batches = await consumer.getmany(timeout_ms=FETCH_TIMEOUT_MS)
            for tp, records in batches.items():
                for record in records:
                    self._apply(record.key, record.value, tp.partition, record.offset, record.timestamp)
            for tp in self._positions:
                self._positions[tp] = await consumer.position(tp)
            if not self._recovered.is_set() and self._reached(recovery_targets):
                self._mark_recovered()
            async with self._advanced:
                self._advanced.notify_all()

    def _mark_recovered(self) -> None:
        log.info("view recovered", extra={"topic": self.topic, "keys": len(self._values)})
        self._recovered.set()

    def _apply(
        self, raw_key: bytes | None, raw_value: bytes | None, partition: int, offset: int, timestamp_ms: int = -1
    ) -> None:
        self.applied += 1
        if raw_key is None:
            self.invalid_skipped += 1
            return
        key = raw_key.decode("utf-8", errors="replace")
        if raw_value is None:
            self._values.pop(key, None)
            if self._timestamps is not None:
                self._timestamps.pop(key, None)
        else:
            try:
                self._values[key] = self._parse(raw_key, raw_value)
                if self._timestamps is not None:
                    self._timestamps[key] = timestamp_ms
            except InvalidInput as error:
                # keep the previous valid value: a bad publish must not switch a campaign off
                self.invalid_skipped += 1
                log.debug(
                    "skipped invalid record",
                    extra={"topic": self.topic, "partition": partition, "offset": offset, "reason": error.reason},
                )
        if self._on_change is not None:
            self._on_change(len(self._values))
