"""What a consumer-group process reports about its Kafka side: consumer lag, and retried Kafka writes.

`postback_consumer_lag{topic,partition}` is the partition's high watermark (from the last fetch
response) minus the consumer's position, for the partitions this process owns now; a partition it
no longer owns is removed, so a sum over processes counts each partition once. One ConsumerLag may
serve several consumers (`dispatch --kind all`: one per kind): each refresh removes only the series
of partitions its own consumer showed before and no longer owns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import IllegalStateError
from prometheus_client import CollectorRegistry, Counter, Gauge

from service.ops_http import Readiness

log = logging.getLogger(__name__)

# Refreshed more often than Prometheus scrapes (15 s by default), rarely enough to cost nothing.
LAG_REFRESH_SECONDS = 5.0
# How often an idle process asks the cluster for its metadata, so that /readyz notices a lost
# connection even when nothing is being written; and how long an answer may take.
PROBE_INTERVAL_SECONDS = 10.0
PROBE_TIMEOUT_SECONDS = 5.0
# position() waits while a partition's position is being reset after a rebalance: the lag of that
# partition is simply not refreshed this round.
POSITION_TIMEOUT_SECONDS = 1.0


class ConsumerLag:
    def __init__(self, registry: CollectorRegistry) -> None:
        self._gauge = Gauge(
            "postback_consumer_lag",
            "Records in a partition this process owns that its consumer has not read yet.",
            ["topic", "partition"],
            registry=registry,
        )
        # per consumer (by identity): the partitions whose series it has set
        self._shown_by: dict[int, set[TopicPartition]] = {}

    async def refresh(self, consumer: AIOKafkaConsumer) -> None:
        shown = self._shown_by.setdefault(id(consumer), set())
        assigned = set(consumer.assignment())
        for tp in assigned:
            try:
                highwater = consumer.highwater(tp)
                if highwater is None:
                    continue  # nothing fetched from it yet
                position = await asyncio.wait_for(consumer.position(tp), POSITION_TIMEOUT_SECONDS)
            except (IllegalStateError, AssertionError, TimeoutError):
                continue  # revoked meanwhile, or its position is being reset
            self._gauge.labels(tp.topic, str(tp.partition)).set(max(highwater - position, 0))
            shown.add(tp)
        for tp in shown - assigned:
            with contextlib.suppress(KeyError):
                self._gauge.remove(tp.topic, str(tp.partition))
        shown &= assigned

    async def run(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            try:
                await self.refresh(consumer)
            except Exception:  # metrics must never stop the process
                log.exception("refreshing the consumer lag failed")
            await asyncio.sleep(LAG_REFRESH_SECONDS)


class KafkaHealth:
    """The `on_result` of kafka_io.until_done: counts retried operations and sets the `kafka` readiness check;
    and the count of records Kafka refused for good (`unwritable`)."""

    def __init__(self, registry: CollectorRegistry, readiness: Readiness) -> None:
        self._readiness = readiness
        self._retries = Counter(
            "postback_kafka_retries_total",
            "Kafka writes (produce, changelog, results) that failed and were retried, by operation.",
            ["operation"],
            registry=registry,
        )
        self._unwritable = Counter(
            "postback_kafka_unwritable_records_total",
            "Records Kafka refused for good (too large, a format it refuses), by topic: replaced by a bounded "
            "record, or given up; never retried.",
            ["topic"],
            registry=registry,
        )

    def __call__(self, operation: str, ok: bool) -> None:
        if not ok:
            self._retries.labels(operation).inc()
        self._readiness.set("kafka", ok)

    def unwritable(self, topic: str) -> None:
        """A record for `topic` that Kafka can never take (kafka_io.UNWRITABLE_ERRORS)."""
        self._unwritable.labels(topic).inc()

    async def probe_forever(self, client: Any) -> None:
        """Ask `client` (an AIOKafkaClient) for the cluster's metadata every PROBE_INTERVAL_SECONDS."""
        while True:
            try:
                await asyncio.wait_for(client.fetch_all_metadata(), PROBE_TIMEOUT_SECONDS)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._readiness.checks().get("kafka", True):
                    log.warning("Kafka does not answer a metadata request (%s): not ready", type(exc).__name__)
                self._readiness.set("kafka", False)
            else:
                self._readiness.set("kafka", True)
            await asyncio.sleep(PROBE_INTERVAL_SECONDS)
