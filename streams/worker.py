"""`postback-router worker`: the matcher as an application of the consumer-group member shell.

service/group_member.py runs the consumer group (fetch loop, rebalances, fired-state restore before
a partition is matched, commits after the outputs are acknowledged); this module keeps the matching.
Per batch: match it in pure code (streams/core/batch.py), produce every message and await the
acknowledgements once, write the fired-state changes to the changelog and await those; the member
then commits the offsets. A crash anywhere in between repeats the batch: its postbacks again with
the same postback_id (dispatchers dedupe), never a lost one.

The same consumer reads `campaign-rules` and `offer-sources` as a group member, only to write the
`.invalid` record of a bad one once (streams/core/refusals.py); every worker's views read those
topics in full on their own.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from aiokafka import TopicPartition
from prometheus_client import CollectorRegistry

from service.changelog_store import StateStoreMetrics
from service.compacted_view import CompactedTopicView
from service.consumer_health import ConsumerLag, KafkaHealth
from service.diagnostics import dump_tasks
from service.group_member import Batch, GroupMember
from service.kafka_io import Outgoing, until_done
from service.ops_http import Liveness, Readiness, new_registry, ops_server
from service.settings import Settings
from streams.click_join import ClickJoin, ConversionsPartitionStores
from streams.core.batch import ConversionBatchProcessor, MatcherConfig, OutgoingMessage, SourceRecord, utc_rfc3339
from streams.core.fired_record import encode_fired_record
from streams.core.offer_sources import OfferSource, parse_offer_source
from streams.core.refusals import compacted_refusal, refusal_log_context
from streams.core.rules import CampaignRules, parse_campaign_rules
from streams.fired_state_store import FiredStore
from streams.metrics import WorkerMetrics

log = logging.getLogger(__name__)


class MatchingWorker:
    def __init__(self, settings: Settings, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.topics = settings.topics
        self.registry = registry or new_registry("worker")
        self.metrics = WorkerMetrics(self.registry)
        # /readyz: connected (kafka), both views recovered (contract §2.8), in the group, fired-state restored.
        self.readiness = Readiness(self.registry, ("kafka", "views_recovered", "consumer", "fired_state"))
        self._kafka_health = KafkaHealth(self.registry, self.readiness)
        # /healthz: the batch loop completes what it fetched within STALL_TIMEOUT.
        self.liveness = Liveness(settings.stall_timeout_seconds)
        kafka = settings.kafka
        self.rules: CompactedTopicView[CampaignRules] = CompactedTopicView(
            kafka, self.topics.campaign_rules, parse_campaign_rules, self.metrics.rules_campaigns.set
        )
        self.offer_sources: CompactedTopicView[OfferSource] = CompactedTopicView(
            kafka, self.topics.offer_sources, parse_offer_source, self.metrics.offer_sources.set
        )
        state_metrics = StateStoreMetrics(self.registry)
        self.store = FiredStore(
            kafka,
            settings.fired_state_changelog,
            "memory" if settings.state_store == "memory://" else "rocksdb",
            Path(settings.state_dir) / settings.app_id,
            metrics=state_metrics,
        )
        # conversions without campaign_id, completed from their click (streams/click_join.py)
        self.click_join = ClickJoin(
            settings,
            "memory" if settings.state_store == "memory://" else "rocksdb",
            Path(settings.state_dir) / settings.app_id,
            state_metrics,
            # the series appears with its first refusal, like every reason's
            count_unknown=lambda n: self.metrics.conversions_invalid.labels("unknown_click").inc(n),
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
        self.member = GroupMember(
            self,
            settings,
            group_id=settings.app_id,
            topics=[self.topics.conversions, self.topics.campaign_rules, self.topics.offer_sources],
            stores={
                self.topics.conversions: ConversionsPartitionStores(
                    self.store, self.click_join.clicks, self.click_join.awaiting
                )
            },
            readiness=self.readiness,
            consumer_check="consumer",
            restore_check="fired_state",
            kafka_health=self._kafka_health,
            lag=ConsumerLag(self.registry),
            max_records=settings.batch_max_size,
            liveness=self.liveness,
        )

    def stop(self) -> None:
        self.member.stop()

    async def run(self) -> None:
        settings = self.settings
        server = ops_server(settings.http_host, settings.http_port, self.registry, self.readiness, self.liveness)
        await server.start()
        join, sweep_interval = self.click_join, settings.fired_state_sweep_interval_seconds
        try:
            await self.member.run(
                background=[
                    ("fired-state-sweep", self._sweep_periodically),
                    ("awaiting-click-recheck", lambda: join.recheck_periodically(self.member, self.handle)),
                    ("click-sweep", lambda: join.sweep_periodically(self.member, sweep_interval)),
                ]
            )
        finally:
            await server.stop()
            log.info("worker stopped")

    async def prepare(self) -> None:
        for view in (self.rules, self.offer_sources):
            await view.start()
        # contract §2.8: nothing is evaluated before both views hold everything in their topics.
        for view in (self.rules, self.offer_sources):
            await view.wait_recovered()
        self.readiness.set("views_recovered", True)
        log.info(
            "rules and offer sources recovered (%d campaigns, %d offer sources); matching conversions",
            len(self.rules),
            len(self.offer_sources),
        )

    async def close(self) -> None:
        for view in (self.rules, self.offer_sources):
            await view.stop()

    async def assigned(self, partitions: set[TopicPartition]) -> None:
        log.info("assigned conversions partitions %s", sorted(self.store.partitions))

    async def revoked(self, partitions: set[TopicPartition]) -> None:
        pass  # the member commits and releases the fired-state

    async def handle(self, batch: Batch) -> None:
        started = time.perf_counter()
        conversions: list[SourceRecord] = []
        messages: list[OutgoingMessage] = []
        for tp, records in batch.items():
            sources = [SourceRecord(tp.topic, tp.partition, r.offset, r.timestamp, r.key, r.value) for r in records]
            if tp.topic == self.topics.conversions:
                conversions.extend(sources)
            else:
                messages.extend(self._check_compacted_records(sources))
        join = await self.click_join.plan(conversions, time.time(), utc_rfc3339(datetime.now(UTC)))
        conversions = join.ready
        messages.extend(join.messages)
        if not conversions:
            if messages:
                await self.member.send(_outgoing(messages), "producing invalid-record messages")
            await self.click_join.write(self.member, join)
            return
        await until_done(
            self._catch_up_views, "reading the latest rules", self._kafka_health, give_up=self.member.writes_given_up()
        )
        result = self.processor.process(conversions)
        messages.extend(result.messages)
        await self.member.send(_outgoing(messages), "producing a batch")
        # only now: a crash before this line repeats postbacks (same ids), never loses them
        changes = [
            (record.partition, cid.encode("utf-8"), encode_fired_record(record))
            for cid, record in result.fired_updates.items()
        ]
        await self.member.write_changelog(self.store, changes, "writing the fired-state changelog")
        await self.click_join.write(self.member, join)  # after the outputs: a crash repeats the batch
        self._count(result, len(conversions), time.perf_counter() - started)
        if result.invalid:  # rare: the batch's messages are looked through only then
            self._log_refused(result.messages)

    async def _catch_up_views(self) -> None:
        # Rules published before a conversion was produced apply to it (see compacted_view.py).
        await asyncio.gather(self.rules.catch_up(), self.offer_sources.catch_up())

    def _check_compacted_records(self, records: list[SourceRecord]) -> list[OutgoingMessage]:
        invalid: list[OutgoingMessage] = []
        rejected_at = utc_rfc3339(datetime.now(UTC))
        for record in records:
            parse = parse_campaign_rules if record.topic == self.topics.campaign_rules else parse_offer_source
            refusal = compacted_refusal(parse, record, self.topics.invalid(record.topic), rejected_at)
            if refusal is not None:
                message, error = refusal
                self.metrics.rules_invalid.labels(record.topic).inc()
                log.warning(
                    "invalid record on %s at %d/%d: %s", record.topic, record.partition, record.offset, error.reason
                )
                invalid.append(message)
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
        """One WARNING line per refused conversion (streams/core/refusals.py says what it holds)."""
        invalid_topic = self.topics.invalid(self.topics.conversions)
        for message in messages:
            if message.topic == invalid_topic and message.value is not None:
                context = refusal_log_context(orjson.loads(message.value))
                log.warning("conversion refused (%s), kept in %s", context["reason"], invalid_topic, extra=context)

    async def _sweep_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.settings.fired_state_sweep_interval_seconds)
            async with self.member.lock:
                await self._sweep()

    async def _sweep(self) -> None:
        """Delete fired-state older than FIRED_STATE_RETENTION, in the changelog first."""
        expired = list(self.store.expired(int(time.time()), self.settings.fired_state_retention_seconds))
        if not expired:
            return
        tombstones = [(partition, key, None) for partition, key in expired]
        await self.member.write_changelog(self.store, tombstones, "sweeping fired-state")
        log.info("fired-state sweep deleted %d expired conversions", len(expired))


def _outgoing(messages: Sequence[OutgoingMessage]) -> list[Outgoing]:
    return [(m.topic, m.key, m.value, None) for m in messages]


async def run_worker(settings: Settings) -> None:
    worker = MatchingWorker(settings)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, worker.stop)
    loop.add_signal_handler(signal.SIGUSR1, dump_tasks)
    await worker.run()
