"""`postback-router worker`: the consumer-group runtime around the pure matcher.

One loop per process: fetch a batch (whatever is there, up to BATCH_MAX_SIZE), match it in pure
code, produce every message and await the acknowledgements once, write the fired-state changes
to the changelog and await those, then commit the offsets. A crash anywhere in between repeats the
batch: its postbacks again with the same postback_id (dispatchers dedupe), never a lost one.

The same consumer reads `campaign-rules` and `offer-sources` as a group member, only to write the
`.invalid` record of a bad one once; every worker's views read those topics in full on their own.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError
from prometheus_client import CollectorRegistry

from schemas.errors import InvalidInput
from service.compacted_view import CompactedTopicView
from service.consumer_health import ConsumerLag, KafkaHealth
from service.diagnostics import dump_tasks
from service.kafka_io import send_all, until_done
from service.ops_http import Readiness, new_registry, ops_server
from service.settings import Settings
from streams.core.batch import ConversionBatchProcessor, MatcherConfig, OutgoingMessage, SourceRecord, utc_rfc3339
from streams.core.fired_record import encode_fired_record
from streams.core.invalid_records import invalid_record
from streams.core.offer_sources import OfferSource, parse_offer_source
from streams.core.rules import CampaignRules, parse_campaign_rules
from streams.fired_state_store import FiredStore
from streams.metrics import WorkerMetrics

log = logging.getLogger(__name__)

# How long one fetch waits for records when there are none: bounds how fast a stop is noticed.
FETCH_TIMEOUT_MS = 200
# A refused record's key is logged as its conversion_id only up to a conversion_id's maximum length.
MAX_LOGGED_KEY_CHARS = 256


class MatchingWorker:
    def __init__(self, settings: Settings, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.topics = settings.topics
        self.registry = registry or new_registry("worker")
        self.metrics = WorkerMetrics(self.registry)
        # /readyz: connected (kafka), both views recovered (contract §2.8), in the group, fired-state restored.
        self.readiness = Readiness(self.registry, ("kafka", "views_recovered", "consumer", "fired_state"))
        self._kafka_health = KafkaHealth(self.registry, self.readiness)
        self._lag = ConsumerLag(self.registry)
        bootstrap = settings.bootstrap_servers
        self.rules: CompactedTopicView[CampaignRules] = CompactedTopicView(
            bootstrap, self.topics.campaign_rules, parse_campaign_rules, self.metrics.rules_campaigns.set
        )
        self.offer_sources: CompactedTopicView[OfferSource] = CompactedTopicView(
            bootstrap, self.topics.offer_sources, parse_offer_source, self.metrics.offer_sources.set
        )
        self.store = FiredStore(
            bootstrap,
            settings.fired_state_changelog,
            "memory" if settings.state_store == "memory://" else "rocksdb",
            Path(settings.state_dir) / settings.app_id,
        )
        self.processor = ConversionBatchProcessor(
            MatcherConfig(
                postback_topics=self.topics.postbacks,
                invalid_topic=self.topics.invalid(self.topics.conversions),
                evaluations_topic=self.topics.evaluations if settings.emit_evaluations else None,
                default_status=settings.default_status,
                max_conversion_bytes=settings.max_conversion_bytes,
                fired_retention_seconds=settings.fired_state_retention_seconds,
                default_phone_region=settings.default_phone_region,
            ),
            rules_for=self.rules.get,
            offer_source_for=self.offer_sources.get,
            fired_state=self.store,
        )
        self._lock = asyncio.Lock()  # one batch, rebalance or sweep at a time
        self._stopping = asyncio.Event()
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._processed: dict[TopicPartition, int] = {}  # next offset to commit, per partition

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        settings = self.settings
        server = ops_server(settings.http_host, settings.http_port, self.registry, self.readiness)
        await server.start()
        try:
            await self._run()
        finally:
            await server.stop()

    async def _run(self) -> None:
        settings = self.settings
        self._producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all", linger_ms=1)
        await self._producer.start()
        self.readiness.set("kafka", True)
        views = (self.rules, self.offer_sources)
        try:
            for view in views:
                await view.start()
            # contract §2.8: nothing is evaluated before both views hold everything in their topics.
            for view in views:
                await view.wait_recovered()
            self.readiness.set("views_recovered", True)
            log.info(
                "rules and offer sources recovered (%d campaigns, %d offer sources); matching conversions",
                len(self.rules),
                len(self.offer_sources),
            )
            self._consumer = AIOKafkaConsumer(
                bootstrap_servers=settings.bootstrap_servers,
                group_id=settings.app_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                session_timeout_ms=int(settings.session_timeout_seconds * 1000),
                heartbeat_interval_ms=int(settings.heartbeat_interval_seconds * 1000),
                max_poll_interval_ms=300_000,
                isolation_level="read_committed",
            )
            self._consumer.subscribe(
                [self.topics.conversions, self.topics.campaign_rules, self.topics.offer_sources],
                listener=_Rebalance(self),
            )
            await self._consumer.start()
            self.readiness.set("consumer", True)
            self.readiness.set("fired_state", True)  # until an assignment restores some
            sweeper = asyncio.create_task(self._sweep_periodically(), name="fired-state-sweep")
            lag = asyncio.create_task(self._lag.run(self._consumer), name="consumer-lag")
            probe = asyncio.create_task(self._kafka_health.probe_forever(self._producer.client), name="kafka-probe")
            try:
                await self._loop()
            finally:
                for task in (sweeper, lag, probe):
                    task.cancel()
        finally:
            await self._shutdown(views)

    async def _shutdown(self, views: tuple[CompactedTopicView[Any], ...]) -> None:
        self.readiness.set("consumer", False)
        if self._consumer is not None:
            async with self._lock:
                await self._commit()
            await self._consumer.stop()  # leaves the group: the partitions move at once
        self.store.close()
        for view in views:
            await view.stop()
        if self._producer is not None:
            await self._producer.stop()
        log.info("worker stopped")

    async def _loop(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        while not self._stopping.is_set():
            batches = await consumer.getmany(timeout_ms=FETCH_TIMEOUT_MS, max_records=self.settings.batch_max_size)
            if not batches:
                continue
            async with self._lock:
                await self._handle(batches)
            await self._commit()

    async def _commit(self) -> None:
        if not self._processed or self._consumer is None:
            return
        offsets, self._processed = self._processed, {}
        try:
            await self._consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            # The group rebalanced: whoever owns the partitions now re-reads from the last commit,
            # and the fired-state changelog makes the repeat fire nothing new.
            log.warning("commit after a rebalance failed (%s); the new owner repeats those records", exc)

    async def _handle(self, batches: dict[TopicPartition, list[Any]]) -> None:
        started = time.perf_counter()
        conversions: list[SourceRecord] = []
        messages: list[OutgoingMessage] = []
        for tp, records in batches.items():
            if tp.topic == self.topics.conversions:
                conversions.extend(
                    SourceRecord(tp.topic, tp.partition, r.offset, r.timestamp, r.key, r.value) for r in records
                )
            else:
                messages.extend(self._check_compacted_records(tp, records))
        if conversions:
            await until_done(self._catch_up_views, "reading the latest rules", self._kafka_health)
            owned = [r for r in conversions if r.partition in self.store.partitions]
            result = self.processor.process(owned)
            messages.extend(result.messages)
            await until_done(lambda: self._produce(messages), "producing a batch", self._kafka_health)
            # only now: a crash before this line repeats postbacks (same ids), never loses them
            changelog = [
                OutgoingMessage(self.store.changelog_topic, cid.encode("utf-8"), encode_fired_record(record))
                for cid, record in result.fired_updates.items()
            ]
            partitions = [record.partition for record in result.fired_updates.values()]
            offsets = await until_done(
                lambda: self._produce(changelog, partitions), "writing the fired-state changelog", self._kafka_health
            )
            for message, partition, offset in zip(changelog, partitions, offsets, strict=True):
                assert message.key is not None
                self.store.apply(partition, message.key, message.value, offset)
            self._count(result, len(owned), time.perf_counter() - started)
            if result.invalid:  # rare: the batch's messages are looked through only then
                self._log_refused(result.messages)
        elif messages:
            await until_done(lambda: self._produce(messages), "producing invalid-record messages", self._kafka_health)
        owned_partitions = self.store.partitions
        for tp, records in batches.items():
            # a partition revoked before this batch ran is not ours to commit: its new owner re-reads it
            if tp.topic != self.topics.conversions or tp.partition in owned_partitions:
                self._processed[tp] = records[-1].offset + 1

    async def _catch_up_views(self) -> None:
        # Rules published before a conversion was produced apply to it (see compacted_view.py).
        await asyncio.gather(self.rules.catch_up(), self.offer_sources.catch_up())

    async def _produce(self, messages: list[OutgoingMessage], partitions: list[int] | None = None) -> list[int]:
        assert self._producer is not None
        return await send_all(
            self._producer,
            [(m.topic, m.key, m.value, None if partitions is None else partitions[i]) for i, m in enumerate(messages)],
        )

    def _check_compacted_record_topic(self, topic: str) -> Callable[[bytes | None, bytes], Any]:
        return parse_campaign_rules if topic == self.topics.campaign_rules else parse_offer_source

    def _check_compacted_records(self, tp: TopicPartition, records: list[Any]) -> list[OutgoingMessage]:
        parse = self._check_compacted_record_topic(tp.topic)
        invalid: list[OutgoingMessage] = []
        for record in records:
            if record.value is None:
                continue  # tombstone: a deletion, always valid
            try:
                parse(record.key, record.value)
            except InvalidInput as error:
                source = {"topic": tp.topic, "partition": tp.partition, "offset": record.offset}
                body = invalid_record(error, record.key, record.value, source, utc_rfc3339(datetime.now(UTC)))
                self.metrics.rules_invalid.labels(tp.topic).inc()
                log.warning("invalid record on %s at %d/%d: %s", tp.topic, tp.partition, record.offset, error.reason)
                invalid.append(OutgoingMessage(self.topics.invalid(tp.topic), record.key, orjson.dumps(body)))
        return invalid

    def _count(self, result: Any, batch_size: int, seconds: float) -> None:
        metrics = self.metrics
        metrics.batch_seconds.observe(seconds)
        metrics.batch_size.observe(batch_size)
        metrics.conversions_consumed.inc(result.consumed)
        for reason, count in result.invalid.items():
            metrics.conversions_invalid.labels(reason).inc(count)
        for kind, count in result.matched.items():
            metrics.matched.labels(kind).inc(count)
        for reason, count in result.filtered.items():
            metrics.filtered.labels(reason).inc(count)
        for (name, reason), count in result.pii_unusable.items():
            metrics.pii_unusable.labels(name, reason).inc(count)

    def _log_refused(self, messages: list[OutgoingMessage]) -> None:
        """One WARNING line per refused conversion: its reason and source position, and its id when
        its key is one (text of a conversion_id's length); never the record itself."""
        invalid_topic = self.topics.invalid(self.topics.conversions)
        for message in messages:
            if message.topic == invalid_topic and message.value is not None:
                body = orjson.loads(message.value)
                source = body["source"]
                reason = body["error"]["reason"]
                context = {
                    "reason": reason,
                    "topic": source["topic"],
                    "partition": source["partition"],
                    "offset": source["offset"],
                }
                key = body.get("key")
                if body.get("key_encoding") == "text" and key and len(key) <= MAX_LOGGED_KEY_CHARS:
                    context["conversion_id"] = key
                log.warning("conversion refused (%s), kept in %s", reason, invalid_topic, extra=context)

    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        mine = {tp.partition for tp in assigned if tp.topic == self.topics.conversions}
        async with self._lock:
            self.readiness.set("fired_state", False)
            await self.store.assign(mine)
            self.readiness.set("fired_state", True)
        log.info("assigned conversions partitions %s", sorted(self.store.partitions))

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        async with self._lock:
            await self._commit()
            self.store.revoke({tp.partition for tp in revoked if tp.topic == self.topics.conversions})

    async def _sweep_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.settings.fired_state_sweep_interval_seconds)
            async with self._lock:
                await self._sweep()

    async def _sweep(self) -> None:
        """Delete fired-state older than FIRED_STATE_RETENTION, in the changelog first."""
        expired = list(self.store.expired(int(time.time()), self.settings.fired_state_retention_seconds))
        if not expired:
            return
        tombstones = [OutgoingMessage(self.store.changelog_topic, key, None) for _, key in expired]
        partitions = [partition for partition, _ in expired]
        offsets = await until_done(
            lambda: self._produce(tombstones, partitions), "sweeping fired-state", self._kafka_health
        )
        for (partition, key), offset in zip(expired, offsets, strict=True):
            self.store.apply(partition, key, None, offset)
        log.info("fired-state sweep deleted %d expired conversions", len(expired))


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: MatchingWorker) -> None:
        self._worker = worker

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._worker.on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._worker.on_assigned(set(assigned))


async def run_worker(settings: Settings) -> None:
    worker = MatchingWorker(settings)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, worker.stop)
    loop.add_signal_handler(signal.SIGUSR1, dump_tasks)
    await worker.run()
