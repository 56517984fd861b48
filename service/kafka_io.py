"""Small Kafka conveniences: produce records and read a topic (demo, tests, operators' scripts, state
restores), and OutgoingRecords / until_done, which the consumer-group member (group_member.py) writes with.

A write of several records is retried record by record: Kafka acknowledges each record on its own, so
after a failure some are written and some are not, and only those not acknowledged are sent again
(resending all of them would write the others twice). A record Kafka can never take (too large, a
format it refuses: UNWRITABLE_ERRORS) is not retried: its writer replaces it by a smaller one, or gives
it up, and the others go on. A write retried while its process is stopping is given up after a grace
(`give_up`), so that a stop ends even when Kafka is unreachable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import (
    CorruptRecordException,
    InvalidTimestampError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
    UnsupportedForMessageFormatError,
)

from service.kafka_connection import KafkaConnection

log = logging.getLogger(__name__)

# A failed produce (broker unreachable, leader moving) is retried with its input uncommitted, so
# nothing is committed past a record whose outputs are not in Kafka. The cap keeps a long outage
# from turning into minutes between attempts once the cluster is back.
RETRY_INITIAL_SECONDS = 0.2
RETRY_MAX_SECONDS = 5.0

# (topic, key, value, partition): value None is a tombstone, partition None lets the partitioner choose
Outgoing = tuple[str, bytes | None, bytes | None, int | None]
# What Kafka (or the producer, before sending) answers for a record that no retry can write: larger
# than the broker or the producer accepts, a timestamp or format the broker refuses. A record larger
# than the producer's batch size is always alone in its batch, so the error is that record's own.
UNWRITABLE_ERRORS: tuple[type[BaseException], ...] = (
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
    CorruptRecordException,
    InvalidTimestampError,
    UnsupportedForMessageFormatError,
)
# Raised by producer.send() itself for a record it cannot even serialise (a key or value of the wrong type).
_UNSENDABLE_ERRORS: tuple[type[BaseException], ...] = (*UNWRITABLE_ERRORS, TypeError, ValueError)
# on_unwritable(record, error): what to write instead (written once; if refused too, given up), or None
# to give the record up. Either way the record is never retried as it is.
OnUnwritable = Callable[[Outgoing, BaseException], Outgoing | None]


class WriteAbandoned(Exception):
    """A Kafka write given up because its process is stopping and Kafka did not take it in time: the input
    that caused it stays uncommitted, and the partition's next owner does that work again."""


def as_bytes(value: Any) -> bytes | None:
    """None and bytes as they are, text as UTF-8, anything else as JSON."""
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    return orjson.dumps(value)


async def produce(kafka: KafkaConnection, topic: str, records: Iterable[tuple[Any, Any]]) -> None:
    """Send (key, value) pairs and wait until the broker has acknowledged all of them."""
    producer = AIOKafkaProducer(**kafka.client_kwargs(), acks="all", linger_ms=2)
    await producer.start()
    try:
        pending = [await producer.send(topic, key=as_bytes(k), value=as_bytes(v)) for k, v in records]
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


class OutgoingRecords:
    """Records to write, and which of them Kafka has acknowledged: each `send_missing()` sends only the
    others. `until_done(records.send_missing, ...)` is a write retried without writing anything twice."""

    def __init__(
        self, producer: AIOKafkaProducer, records: Iterable[Outgoing], on_unwritable: OnUnwritable | None = None
    ) -> None:
        self._producer = producer
        self._records = list(records)
        self._on_unwritable = on_unwritable
        self.offsets: list[int | None] = [None] * len(self._records)
        self._missing = list(range(len(self._records)))  # neither acknowledged nor given up
        self._replaced: set[int] = set()
        self._given_up: set[int] = set()

    async def send_missing(self) -> list[int | None]:
        """Send every record not acknowledged yet without awaiting each, then await their acknowledgements.

        Returns each record's offset, None for one given up. Raises the first retriable failure once every
        record sent is awaited: the ones acknowledged meanwhile are kept, the others are sent next time.
        """
        while self._missing:
            failure: BaseException | None = None
            unwritable: list[tuple[int, BaseException]] = []
            sent: list[tuple[int, Any]] = []
            for index in self._missing:
                topic, key, value, partition = self._records[index]
                try:
                    sent.append((index, await self._producer.send(topic, value, key=key, partition=partition)))
                except _UNSENDABLE_ERRORS as exc:
                    unwritable.append((index, exc))
                except Exception as exc:  # not sent (buffer full, no metadata): this one and the rest wait
                    failure = exc
                    break
            answers = await asyncio.gather(*(future for _, future in sent), return_exceptions=True)
            for (index, _), answer in zip(sent, answers, strict=True):
                if isinstance(answer, UNWRITABLE_ERRORS):
                    unwritable.append((index, answer))
                elif isinstance(answer, BaseException):
                    failure = failure or answer
                else:
                    self.offsets[index] = answer.offset
            for index, refusal in unwritable:
                self._replace_or_give_up(index, refusal)
            self._missing = [i for i in self._missing if self.offsets[i] is None and i not in self._given_up]
            if failure is not None:
                raise failure
            # No failure: anything still missing is the replacement of an unwritable record, sent at once.
        return list(self.offsets)

    def _replace_or_give_up(self, index: int, exc: BaseException) -> None:
        if self._on_unwritable is None:
            raise exc  # the caller's to handle (the api answers the request with it)
        # Told of every refusal (to count it); a replacement refused in turn is given up.
        replacement = self._on_unwritable(self._records[index], exc)
        if replacement is None or index in self._replaced:
            self._given_up.add(index)
        else:
            self._records[index] = replacement
            self._replaced.add(index)


async def send_all(producer: AIOKafkaProducer, records: list[Outgoing]) -> list[int]:
    """Send every record without awaiting each, then await all acknowledgements; return their offsets.
    Raises the first failure, an unwritable record's included."""
    offsets = await OutgoingRecords(producer, records).send_missing()
    return [offset for offset in offsets if offset is not None]  # all of them: nothing is given up


async def until_done(
    operation: Callable[[], Awaitable[Any]],
    what: str,
    on_result: Callable[[str, bool], None] | None = None,
    *,
    give_up: asyncio.Future[None] | None = None,
) -> Any:
    """Retry `operation` until it succeeds, backing off; the caller's input stays uncommitted meanwhile.

    `on_result(what, ok)` hears of every failure and of the success that ends them (readiness, metrics).
    Once `give_up` is done (a stop whose grace is over) the attempt under way is cancelled and no other
    is made: WriteAbandoned.
    """
    delay = RETRY_INITIAL_SECONDS
    failed = False
    while True:
        try:
            result = await unless_given_up(operation(), give_up, what)
        except (asyncio.CancelledError, WriteAbandoned):
            raise
        except Exception as exc:
            failed = True
            if on_result is not None:
                on_result(what, False)
            if give_up is not None and give_up.done():
                raise WriteAbandoned(f"{what}: given up at a stop ({type(exc).__name__}: {exc})") from exc
            log.exception("%s failed; retrying in %.1fs", what, delay)
            await _sleepunless_given_up(delay, give_up, what)
            delay = min(delay * 2, RETRY_MAX_SECONDS)
            continue
        if failed and on_result is not None:
            on_result(what, True)
        return result


async def unless_given_up(operation: Awaitable[Any], give_up: asyncio.Future[None] | None, what: str) -> Any:
    """Await `operation`, unless `give_up` is done first: then it is cancelled, and WriteAbandoned raised."""
    if give_up is None:
        return await operation
    if give_up.done():
        if asyncio.iscoroutine(operation):
            operation.close()
        raise WriteAbandoned(f"{what}: given up at a stop")
    task = asyncio.ensure_future(operation)
    try:
        await asyncio.wait((task, give_up), return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    if task.cancelled():
        raise WriteAbandoned(f"{what}: given up at a stop")
    return task.result()


async def _sleepunless_given_up(delay: float, give_up: asyncio.Future[None] | None, what: str) -> None:
    if give_up is None:
        await asyncio.sleep(delay)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(give_up), delay)
    if give_up.done():
        raise WriteAbandoned(f"{what}: given up at a stop")


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
    kafka: KafkaConnection, partitions: list[TopicPartition], start: dict[TopicPartition, int] | None = None
) -> AsyncGenerator[list[Record], None]:
    """Every record of `partitions` from `start` (default: the beginning) up to their current end, in batches.

    The end offsets alone are not enough: Tansu, the development broker, answers ListOffsets with
    the last batch's base offset + 1, short of its last record. The high watermark in fetch
    responses is right, so the read ends only once every partition is past both.
    """
    consumer = AIOKafkaConsumer(**kafka.client_kwargs(), group_id=None, enable_auto_commit=False)
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


async def end_offsets(kafka: KafkaConnection, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
    """Each partition's end as ListOffsets answers it: exact on Kafka, short on the development broker
    (see read_partitions), so only ever a lower bound of where the next record will land."""
    consumer = AIOKafkaConsumer(**kafka.client_kwargs(), group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        return dict(await consumer.end_offsets(partitions))
    finally:
        await consumer.stop()


async def partitions_of(kafka: KafkaConnection, topic: str) -> list[TopicPartition]:
    consumer = AIOKafkaConsumer(**kafka.client_kwargs(), group_id=None)
    await consumer.start()
    try:
        await consumer.topics()
        return [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
    finally:
        await consumer.stop()


async def read_topic(kafka: KafkaConnection, topic: str) -> list[Record]:
    """Everything in `topic` right now, from the beginning, ordered by partition and offset."""
    partitions = await partitions_of(kafka, topic)
    if not partitions:
        return []
    records: list[Record] = []
    async for batch in read_partitions(kafka, partitions):
        records.extend(batch)
    return sorted(records, key=lambda r: (r.partition, r.offset))
