"""Small Kafka conveniences: produce records and read a topic (demo, tests, operators' scripts, state
restores), and send_all / until_done, which the consumer-group member (group_member.py) writes with."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

log = logging.getLogger(__name__)

# A failed produce (broker unreachable, leader moving) is retried with its input uncommitted, so
# nothing is committed past a record whose outputs are not in Kafka. The cap keeps a long outage
# from turning into minutes between attempts once the cluster is back.
RETRY_INITIAL_SECONDS = 0.2
RETRY_MAX_SECONDS = 5.0

# (topic, key, value, partition): value None is a tombstone, partition None lets the partitioner choose
Outgoing = tuple[str, bytes | None, bytes | None, int | None]


def as_bytes(value: Any) -> bytes | None:
    """None and bytes as they are, text as UTF-8, anything else as JSON."""
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    return orjson.dumps(value)


async def produce(bootstrap: str, topic: str, records: Iterable[tuple[Any, Any]]) -> None:
    """Send (key, value) pairs and wait until the broker has acknowledged all of them."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=2)
    await producer.start()
    try:
        pending = [await producer.send(topic, key=as_bytes(k), value=as_bytes(v)) for k, v in records]
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


async def send_all(producer: AIOKafkaProducer, records: list[Outgoing]) -> list[int]:
    """Send every record without awaiting each, then await all acknowledgements; return their offsets."""
    pending = [
        await producer.send(topic, value, key=key, partition=partition) for topic, key, value, partition in records
    ]
    return [metadata.offset for metadata in await asyncio.gather(*pending)]


async def until_done(
    operation: Callable[[], Awaitable[Any]], what: str, on_result: Callable[[str, bool], None] | None = None
) -> Any:
    """Retry `operation` until it succeeds, backing off; the caller's input stays uncommitted meanwhile.

    `on_result(what, ok)` hears of every failure and of the success that ends them (readiness, metrics).
    """
    delay = RETRY_INITIAL_SECONDS
    failed = False
    while True:
        try:
            result = await operation()
        except asyncio.CancelledError:
            raise
        except Exception:
            failed = True
            if on_result is not None:
                on_result(what, False)
            log.exception("%s failed; retrying in %.1fs", what, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_SECONDS)
            continue
        if failed and on_result is not None:
            on_result(what, True)
        return result


@dataclass
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None

    def json(self) -> Any:
        assert self.value is not None
        return orjson.loads(self.value)


async def read_partitions(
    bootstrap: str, partitions: list[TopicPartition], start: dict[TopicPartition, int] | None = None
) -> AsyncIterator[list[Record]]:
    """Every record of `partitions` from `start` (default: the beginning) up to their current end, in batches.

    The end offsets alone are not enough: Tansu, the development broker, answers ListOffsets with
    the last batch's base offset + 1, short of its last record. The high watermark in fetch
    responses is right, so the read ends only once every partition is past both.
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        for tp, offset in (start or {}).items():
            consumer.seek(tp, offset)
        ends = await consumer.end_offsets(partitions)

        async def caught_up() -> bool:
            for tp in partitions:
                highwater = consumer.highwater(tp)
                position = await consumer.position(tp)
                if highwater is None or position < max(ends[tp], highwater):
                    return False
            return True

        while True:
            batches = await consumer.getmany(timeout_ms=100, max_records=10_000)
            for tp, messages in batches.items():
                yield [Record(tp.topic, tp.partition, m.offset, m.key, m.value) for m in messages]
            if not batches and await caught_up():
                return
    finally:
        await consumer.stop()


async def partitions_of(bootstrap: str, topic: str) -> list[TopicPartition]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        await consumer.topics()
        return [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
    finally:
        await consumer.stop()


async def read_topic(bootstrap: str, topic: str) -> list[Record]:
    """Everything in `topic` right now, from the beginning, ordered by partition and offset."""
    partitions = await partitions_of(bootstrap, topic)
    if not partitions:
        return []
    records: list[Record] = []
    async for batch in read_partitions(bootstrap, partitions):
        records.extend(batch)
    return sorted(records, key=lambda r: (r.partition, r.offset))
