"""One member of a Kafka consumer group: the shell the worker and each dispatcher run their own work in.

The member owns the consumer and the producer, the subscription, rebalances, the fetch loop and the
commits; the application (streams/worker.py, dispatchers/dispatcher.py) keeps what is its own, in
the hooks of GroupApplication. One step at a time holds the member's `lock`: a batch, a rebalance,
whatever else the application runs under it (the worker's fired-state sweep).

- **Assignment:** the changelog stores restore the newly assigned partitions (the `restore_check`
  of /readyz fails from the moment the partitions are assigned until they are restored: `restoring`),
  then `assigned` runs. Nothing fetched from a partition is handled before that.
- **Batches:** whatever the consumer has fetched (up to `max_records`) goes to `handle`, with only
  the partitions this member owns: one revoked since the fetch is left to its new owner. `handle`
  writes through `send` and `write_changelog`, which return once every record is acknowledged; the
  batch's offsets are committed only after `handle` returns, so a crash repeats the batch instead
  of losing its outputs.
- **Revocation:** `revoked` runs (the dispatcher writes back what is pending), then what was handled
  is committed, then the stores release the partitions. A stop does the same for every partition
  it owns, then leaves the group.

A commit refused because the group rebalanced meanwhile is logged and dropped: the partitions' new
owner reads those records again from the last commit, and the changelog stores make the repeat harmless.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError

from service.consumer_health import ConsumerLag, KafkaHealth
from service.kafka_io import Outgoing, send_all, until_done
from service.ops_http import Readiness
from service.settings import Settings

log = logging.getLogger(__name__)

# How long one fetch waits for records when there are none: bounds how fast a stop is noticed.
FETCH_TIMEOUT_MS = 200

Batch = Mapping[TopicPartition, list[Any]]  # aiokafka ConsumerRecords by partition, each list non-empty


class GroupApplication(Protocol):
    async def prepare(self) -> None:
        """After the producer has started, before joining the group."""

    async def handle(self, batch: Batch) -> None:
        """A fetched batch of owned partitions; its offsets are committed once this returns."""

    async def assigned(self, partitions: set[TopicPartition]) -> None:
        """Partitions assigned, their stores restored."""

    async def revoked(self, partitions: set[TopicPartition]) -> None:
        """Partitions about to be committed and released (at a stop: every owned one)."""

    async def close(self) -> None:
        """After leaving the group, before the producer stops."""


class PartitionStore(Protocol):
    """State kept per owned partition of an input topic (service/changelog_store.py)."""

    changelog_topic: str

    async def assign(self, partitions: set[int]) -> None: ...
    def revoke(self, partitions: set[int]) -> None: ...
    def close(self) -> None: ...
    def apply(self, partition: int, key: bytes, value: bytes | None, changelog_offset: int) -> None: ...


class GroupMember:
    def __init__(
        self,
        app: GroupApplication,
        settings: Settings,
        *,
        group_id: str,
        topics: Sequence[str],
        stores: Mapping[str, PartitionStore],
        readiness: Readiness,
        consumer_check: str,
        restore_check: str,
        kafka_health: KafkaHealth,
        lag: ConsumerLag,
        max_records: int,
    ) -> None:
        """`stores`: input topic -> the store that keeps its partitions' state. `readiness` has the checks
        `kafka`, `consumer_check` (in the group) and `restore_check` (no assigned partition being restored)."""
        self._app = app
        self._settings = settings
        self.group_id = group_id
        self._topics = list(topics)
        self._stores = dict(stores)
        self._readiness = readiness
        self._consumer_check = consumer_check
        self._restore_check = restore_check
        self.kafka_health = kafka_health
        self._lag = lag
        self._max_records = max_records
        self.lock = asyncio.Lock()
        self.producer: AIOKafkaProducer | None = None
        self.consumer: AIOKafkaConsumer | None = None
        self.restoring = False
        self._set_restoring(False)  # nothing to restore until partitions are assigned
        self._owned: set[TopicPartition] = set()  # assigned and restored
        self._processed: dict[TopicPartition, int] = {}  # next offset to commit, per partition
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    async def run(self, background: Sequence[tuple[str, Callable[[], Coroutine[Any, Any, None]]]] = ()) -> None:
        """Join the group and handle batches until `stop()`; `background`: (task name, coroutine) run meanwhile."""
        settings = self._settings
        self.producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all", linger_ms=1)
        await self.producer.start()
        self._readiness.set("kafka", True)
        tasks: list[asyncio.Task[None]] = []
        try:
            await self._app.prepare()
            self.consumer = AIOKafkaConsumer(
                bootstrap_servers=settings.bootstrap_servers,
                group_id=self.group_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                session_timeout_ms=int(settings.session_timeout_seconds * 1000),
                heartbeat_interval_ms=int(settings.heartbeat_interval_seconds * 1000),
                max_poll_interval_ms=300_000,
                isolation_level="read_committed",
            )
            self.consumer.subscribe(self._topics, listener=_Rebalance(self))
            await self.consumer.start()
            self._readiness.set(self._consumer_check, True)
            tasks = [
                asyncio.create_task(self._lag.run(self.consumer), name=f"consumer-lag:{self.group_id}"),
                asyncio.create_task(
                    self.kafka_health.probe_forever(self.producer.client), name=f"kafka-probe:{self.group_id}"
                ),
                *(asyncio.create_task(work(), name=name) for name, work in background),
            ]
            while not self._stopping.is_set():
                fetched = await self.consumer.getmany(timeout_ms=FETCH_TIMEOUT_MS, max_records=self._max_records)
                if fetched:
                    await self.handle_fetched(fetched)
        finally:
            self._readiness.set(self._consumer_check, False)
            for task in tasks:
                task.cancel()
            if self.consumer is not None:
                async with self.lock:
                    await self._app.revoked(set(self._owned))
                    await self._commit()
                await self.consumer.stop()  # leaves the group: the partitions move at once
            for store in self._stores.values():
                store.close()
            await self._app.close()
            await self.producer.stop()

    async def handle_fetched(self, fetched: Batch) -> None:
        async with self.lock:
            # a partition revoked (or not restored) since the fetch is not ours: its owner reads it again
            batch = {tp: records for tp, records in fetched.items() if records and tp in self._owned}
            if batch:
                await self._app.handle(batch)
                for tp, records in batch.items():
                    self._processed[tp] = records[-1].offset + 1
        await self._commit()

    async def send(self, records: Sequence[Outgoing], what: str) -> list[int]:
        """Produce every record without awaiting each, then await all the acknowledgements, retried until
        Kafka takes them (kafka_io.until_done: `what` names the retries); their offsets."""
        producer = self.producer
        assert producer is not None
        return list(await until_done(lambda: send_all(producer, list(records)), what, self.kafka_health))

    async def write_changelog(
        self, store: PartitionStore, changes: Sequence[tuple[int, bytes, bytes | None]], what: str
    ) -> None:
        """Write (partition, key, value; None deletes) to the store's changelog, then, acknowledged, to the store."""
        if not changes:
            return
        offsets = await self.send([(store.changelog_topic, key, value, p) for p, key, value in changes], what)
        for (partition, key, value), offset in zip(changes, offsets, strict=True):
            store.apply(partition, key, value, offset)

    async def _commit(self) -> None:
        if not self._processed or self.consumer is None:
            return
        offsets, self._processed = self._processed, {}
        try:
            await self.consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            log.warning("commit after a rebalance failed (%s); the new owner reads those records again", exc)

    def _set_restoring(self, restoring: bool) -> None:
        self.restoring = restoring
        self._readiness.set(self._restore_check, not restoring)

    def _partitions_by_store(self, tps: set[TopicPartition]) -> Iterator[tuple[PartitionStore, set[int]]]:
        for topic, store in self._stores.items():
            yield store, {tp.partition for tp in tps if tp.topic == topic}

    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        # Not ready from now on, before the lock is ours (a batch or a sweep may hold it): the restore
        # is what /readyz waits for. A restore that fails leaves it not ready and the partitions unowned.
        self._set_restoring(True)
        async with self.lock:
            for store, partitions in self._partitions_by_store(assigned):
                await store.assign(partitions)
            self._owned |= assigned
            await self._app.assigned(assigned)
        self._set_restoring(False)

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        async with self.lock:
            await self._app.revoked(revoked)
            await self._commit()
            for store, partitions in self._partitions_by_store(revoked):
                store.revoke(partitions)
            self._owned -= revoked


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, member: GroupMember) -> None:
        self._member = member

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._member.on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._member.on_assigned(set(assigned))
