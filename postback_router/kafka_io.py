"""Small Kafka conveniences for tools (demo, tests, operators' scripts): produce records, read a topic."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition


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


async def read_topic(bootstrap: str, topic: str) -> list[Record]:
    """Everything in `topic` right now, from the beginning, ordered by partition and offset."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        if not partitions:
            return []
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)

        async def behind() -> bool:
            for tp in partitions:
                if await consumer.position(tp) < ends[tp]:
                    return True
            return False

        records: list[Record] = []
        while await behind():
            batches = await consumer.getmany(timeout_ms=200)
            for tp, messages in batches.items():
                records.extend(Record(tp.topic, tp.partition, m.offset, m.key, m.value) for m in messages)
        return sorted(records, key=lambda r: (r.partition, r.offset))
    finally:
        await consumer.stop()
