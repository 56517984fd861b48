"""The Faust app of `postback-router worker`: thin agents around the pure matcher.

Agents:
- `match-conversions` on `conversions`: batches of conversions through ConversionBatchProcessor;
  postbacks produced and acknowledged for the whole batch before the fired-state is written;
- `check-campaign-rules` / `check-offer-sources`: the group member that owns a partition writes the
  `.invalid` record of a bad rule once (every worker's view skips it on its own).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import faust
import orjson
from mode import Service
from prometheus_client import CollectorRegistry

from postback_router.settings import Settings
from streams.batch import ConversionBatchProcessor, MatcherConfig, OutgoingMessage, SourceRecord, utc_rfc3339
from streams.compacted_view import CompactedTopicView
from streams.errors import InvalidInput
from streams.fired_state import FaustFiredState
from streams.invalid_records import invalid_record
from streams.metrics import WorkerMetrics
from streams.offer_sources import OfferSource, parse_offer_source
from streams.rules import CampaignRules, parse_campaign_rules

log = logging.getLogger(__name__)

# A failed produce (broker unreachable, leader moving) is retried with the whole batch unacked, so
# nothing is committed past a conversion whose postbacks are not in Kafka. The cap keeps a long
# outage from turning into minutes between attempts once the cluster is back.
PRODUCE_RETRY_INITIAL_SECONDS = 0.2
PRODUCE_RETRY_MAX_SECONDS = 5.0


async def until_done(operation: Callable[[], Awaitable[Any]], what: str) -> None:
    """Retry `operation` until it succeeds: the batch stays unacknowledged meanwhile, so nothing is lost."""
    delay = PRODUCE_RETRY_INITIAL_SECONDS
    while True:
        try:
            await operation()
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s failed; retrying", what)
            await asyncio.sleep(delay)
            delay = min(delay * 2, PRODUCE_RETRY_MAX_SECONDS)


@dataclass
class Worker:
    app: faust.App
    services: list[Service]
    rules: CompactedTopicView[CampaignRules]
    offer_sources: CompactedTopicView[OfferSource]
    metrics: WorkerMetrics
    registry: CollectorRegistry


class ViewsService(Service):
    """Starts and stops the worker's views of the compacted topics with the Faust worker."""

    def __init__(self, *views: CompactedTopicView[Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.views = views

    async def on_start(self) -> None:
        for view in self.views:
            await view.start()

    async def on_stop(self) -> None:
        for view in self.views:
            await view.stop()

    async def wait_recovered(self) -> None:
        for view in self.views:
            await view.wait_recovered()

    async def catch_up(self) -> None:
        await asyncio.gather(*(view.catch_up() for view in self.views))


def create_worker(settings: Settings, conversions_partitions: int, replication_factor: int) -> Worker:
    topics = settings.topics
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{host.strip()}" for host in settings.bootstrap_servers.split(",")],
        store=settings.state_store,
        datadir=settings.state_dir,
        topic_partitions=conversions_partitions,
        topic_replication_factor=replication_factor,
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.session_timeout_seconds,
        broker_heartbeat_interval=settings.heartbeat_interval_seconds,
        producer_acks=-1,
        # Faust's GlobalTable is not used (see compacted_view.py); nothing else here needs standbys
        # beyond the default of one, which makes a rebalance after a crash fast.
        table_standby_replicas=1,
    )
    rules = CompactedTopicView(
        settings.bootstrap_servers, topics.campaign_rules, parse_campaign_rules, metrics.rules_campaigns.set
    )
    offer_sources = CompactedTopicView(
        settings.bootstrap_servers, topics.offer_sources, parse_offer_source, metrics.offer_sources.set
    )
    views = ViewsService(rules, offer_sources)

    def raw_topic(name: str, partitions: int | None = None) -> Any:
        # raw bytes in and out: decoding is the pure parsers' job, where errors become .invalid records
        return app.topic(
            name,
            partitions=partitions,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
        )

    conversions_topic = raw_topic(topics.conversions, conversions_partitions)
    rules_topic = raw_topic(topics.campaign_rules)
    offer_sources_topic = raw_topic(topics.offer_sources)
    # bytes key and value types make Faust store them raw: the codec is fired_record.py
    fired_table = app.Table(
        "fired-state", partitions=conversions_partitions, default=None, key_type=bytes, value_type=bytes
    )
    fired_state = FaustFiredState(fired_table, topics.conversions)

    def default_status_for(offer_source_id: str) -> str | None:
        source = offer_sources.get(offer_source_id)
        return source.default_status if source else None

    processor = ConversionBatchProcessor(
        MatcherConfig(
            postback_topics=topics.postbacks,
            invalid_topic=topics.invalid(topics.conversions),
            evaluations_topic=topics.evaluations if settings.emit_evaluations else None,
            default_status=settings.default_status,
            max_conversion_bytes=settings.max_conversion_bytes,
            fired_retention_seconds=settings.fired_state_retention_seconds,
        ),
        rules_for=rules.get,
        default_status_for=default_status_for,
        fired_state=fired_state,
    )

    async def produce_all(messages: list[OutgoingMessage]) -> None:
        producer = app.producer
        pending: list[Awaitable[Any]] = []
        for message in messages:
            pending.append(await producer.send(message.topic, message.key, message.value, None, None, None))
        await asyncio.gather(*pending)

    async def handle_batch(events: list[Any]) -> None:
        records = [
            SourceRecord(
                topic=event.message.topic,
                partition=event.message.partition,
                offset=event.message.offset,
                timestamp_ms=int(event.message.timestamp * 1000) if event.message.timestamp else None,
                key=event.message.key,
                value=event.message.value,
            )
            for event in events
        ]
        with metrics.batch_seconds.time():
            # SPEC 2.8 is kept at start-up by wait_recovered(); catch_up() extends it to rules
            # published while the worker runs: they apply to every conversion produced after them.
            await until_done(views.catch_up, "reading the latest rules")
            result = processor.process(records)
            await until_done(lambda: produce_all(result.messages), "producing a batch")
            # only now: a crash before this line repeats postbacks (same ids), never loses them
            fired_state.put_many(result.fired_updates)
        metrics.batch_size.observe(len(records))
        metrics.conversions_consumed.inc(result.consumed)
        for reason, count in result.invalid.items():
            metrics.conversions_invalid.labels(reason).inc(count)
        for kind, count in result.matched.items():
            metrics.matched.labels(kind).inc(count)
        for reason, count in result.filtered.items():
            metrics.filtered.labels(reason).inc(count)

    @app.agent(conversions_topic, name="match-conversions")
    async def match_conversions(stream: Any) -> None:
        await views.wait_recovered()
        log.info(
            "rules and offer sources recovered (%d campaigns, %d offer sources); matching conversions",
            len(rules),
            len(offer_sources),
        )
        async for events in stream.take_events(settings.batch_max_size, within=settings.batch_max_wait_seconds):
            await handle_batch(list(events))

    async def check_compacted_record(event: Any, parse: Any, topic: str) -> None:
        message = event.message
        if message.value is None:
            return  # tombstone: a deletion, always valid
        try:
            parse(message.key, message.value)
        except InvalidInput as error:
            source = {"topic": message.topic, "partition": message.partition, "offset": message.offset}
            body = invalid_record(error, message.key, message.value, source, utc_rfc3339_now())
            metrics.rules_invalid.labels(topic).inc()
            log.warning("invalid record", extra={"topic": topic, "reason": error.reason, "error": error.message})
            sent = await app.producer.send(topics.invalid(topic), message.key, orjson.dumps(body), None, None, None)
            await sent

    @app.agent(rules_topic, name="check-campaign-rules")
    async def check_campaign_rules(stream: Any) -> None:
        async for event in stream.events():
            await check_compacted_record(event, parse_campaign_rules, topics.campaign_rules)

    @app.agent(offer_sources_topic, name="check-offer-sources")
    async def check_offer_sources(stream: Any) -> None:
        async for event in stream.events():
            await check_compacted_record(event, parse_offer_source, topics.offer_sources)

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]  # mode's signal types miss async receivers
    async def log_assignment(app: faust.App, assigned: set[Any], **kwargs: Any) -> None:
        mine = sorted(tp.partition for tp in assigned if tp.topic == topics.conversions)
        log.info("assigned conversions partitions %s", mine)

    @app.timer(interval=settings.fired_state_sweep_interval_seconds)  # type: ignore[untyped-decorator]
    async def sweep_fired_state() -> None:
        active = {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == topics.conversions}
        await fired_state.sweep_expired(settings.fired_state_retention_seconds, active)

    return Worker(app, [views], rules, offer_sources, metrics, registry)


def utc_rfc3339_now() -> str:
    from datetime import UTC, datetime

    return utc_rfc3339(datetime.now(UTC))
