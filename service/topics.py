"""Creating the service's topics, and reading how a topic is partitioned."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from service.kafka_connection import KafkaConnection
from service.settings import Settings

log = logging.getLogger(__name__)

# How long to wait for a cluster to answer at start-up before failing with a message that names the
# setting; a cluster that is reachable answers metadata in well under a second.
CONNECT_TIMEOUT_SECONDS = 30.0


async def ensure_topics(settings: Settings) -> dict[str, int]:
    """Create the missing topics (compacted where the contract says so); return each topic's partitions.

    The fired-state changelog gets as many partitions as `conversions`: partition p of the changelog
    holds the state of the conversions on partition p.
    """
    admin = AIOKafkaAdminClient(**settings.kafka.client_kwargs(), request_timeout_ms=15000)
    try:
        await asyncio.wait_for(admin.start(), CONNECT_TIMEOUT_SECONDS)
    except Exception as exc:
        tls_error = await settings.kafka.tls_handshake_error()
        hint = f"; {tls_error} (see KAFKA_SSL_CAFILE, KAFKA_SSL_CHECK_HOSTNAME)" if tls_error else ""
        raise RuntimeError(f"cannot reach Kafka at {settings.kafka.describe()}: {exc}{hint}") from None
    try:
        replication = settings.topic_replication_factor or min(3, len(await _broker_ids(admin)) or 1)
        compacted = set(settings.topics.compacted)
        await _create_missing(admin, settings, list(settings.topics.all()), settings.topic_partitions, replication)
        counts = await partition_counts(settings.kafka, settings.topics.all())
        for changelog, source in changelogs(settings):
            compacted.add(changelog)
            await _create_missing(admin, settings, [changelog], counts[source], replication, compact=True)
        counts.update(await partition_counts(settings.kafka, [c for c, _ in changelogs(settings)]))
    finally:
        await admin.close()
    for changelog, source in [*changelogs(settings), (settings.topics.clicks, settings.topics.conversions)]:
        if counts[changelog] != counts[source]:
            raise RuntimeError(
                f"{changelog} has {counts[changelog]} partitions but {source} has {counts[source]}: they must "
                f"match (the state of {source} partition p lives in changelog partition p)"
            )
    return counts


def changelogs(settings: Settings) -> list[tuple[str, str]]:
    """(changelog topic, the input topic it is partitioned like) for every piece of partitioned state."""
    pairs = [(settings.fired_state_changelog, settings.topics.conversions)]
    pairs.append((settings.awaiting_click_changelog, settings.topics.conversions))
    pairs += [(settings.delivery_state_changelog(kind), topic) for kind, topic in settings.topics.postbacks.items()]
    return pairs


async def _create_missing(
    admin: AIOKafkaAdminClient,
    settings: Settings,
    topics: list[str],
    partitions: int,
    replication: int,
    compact: bool = False,
) -> None:
    existing = set(await admin.list_topics())
    missing = [topic for topic in topics if topic not in existing]
    if not missing:
        return
    if not settings.auto_create_topics:
        raise RuntimeError(f"topics missing and AUTO_CREATE_TOPICS=false: {', '.join(missing)}")
    new_topics = [
        NewTopic(
            topic,
            num_partitions=partitions,
            replication_factor=replication,
            topic_configs=topic_configs(settings, topic, compact),
        )
        for topic in missing
    ]
    with contextlib.suppress(TopicAlreadyExistsError):  # another process created them first
        await admin.create_topics(new_topics)
    log.info("created topics %s", ", ".join(missing))


def topic_configs(settings: Settings, topic: str, compact: bool = False) -> dict[str, str]:
    """The configs a topic is created with: compacted where the contract says so.

    `conversions.index` is also time-bounded: every api replica reads it in full at start-up, and an
    update of a conversion older than its fired-state retention fires nothing new anyway.
    """
    if topic == settings.topics.conversion_index:
        retention_ms = settings.fired_state_retention_seconds * 1000
        return {"cleanup.policy": "compact,delete", "retention.ms": str(retention_ms)}
    if topic == settings.topics.evaluations:  # what the trace index reads; older ones age out of it too
        return {"retention.ms": str(settings.evaluations_retention_seconds * 1000)}
    if topic == settings.topics.clicks:  # a click older than the attribution window is never joined
        return {"retention.ms": str(settings.click_attribution_window_seconds * 1000)}
    if compact or topic in settings.topics.compacted:
        return {"cleanup.policy": "compact"}
    return {}


async def replication_factor(settings: Settings) -> int:
    """TOPIC_REPLICATION_FACTOR, or min(3, the cluster's brokers) when it is `auto`."""
    if settings.topic_replication_factor:
        return settings.topic_replication_factor
    admin = AIOKafkaAdminClient(**settings.kafka.client_kwargs(), request_timeout_ms=15000)
    await admin.start()
    try:
        return min(3, len(await _broker_ids(admin)) or 1)
    finally:
        await admin.close()


async def _broker_ids(admin: AIOKafkaAdminClient) -> list[int]:
    cluster = await admin.describe_cluster()
    return [broker["node_id"] for broker in cluster.get("brokers", [])]


async def partition_counts(kafka: KafkaConnection, topics: tuple[str, ...] | list[str]) -> dict[str, int]:
    consumer = AIOKafkaConsumer(**kafka.client_kwargs(), group_id=None)
    await consumer.start()
    try:
        counts: dict[str, int] = {}
        deadline = asyncio.get_running_loop().time() + CONNECT_TIMEOUT_SECONDS
        for topic in topics:
            while True:
                await consumer.topics()
                partitions = consumer.partitions_for_topic(topic)
                if partitions:
                    counts[topic] = len(partitions)
                    break
                if asyncio.get_running_loop().time() > deadline:
                    raise RuntimeError(f"topic {topic!r} has no partitions in the cluster's metadata")
                await asyncio.sleep(0.1)
        return counts
    finally:
        await consumer.stop()
