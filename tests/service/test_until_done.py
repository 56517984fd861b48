"""kafka_io.until_done: retries a Kafka write until it succeeds, telling `on_result` about it; and the
consumer-group member's writes through it (GroupMember.send): a record is sent again only while Kafka has
not acknowledged it, one Kafka can never take is not retried, and a stop abandons the retries."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, cast

import pytest
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError, MessageSizeTooLargeError, RequestTimedOutError
from prometheus_client import CollectorRegistry

import service.group_member as group_member
import service.kafka_io as kafka_io
from service.consumer_health import ConsumerLag, KafkaHealth
from service.group_member import GroupMember
from service.kafka_io import Outgoing, WriteAbandoned, until_done
from service.ops_http import Readiness
from service.settings import load_settings

UNWRITABLE = "postback_kafka_unwritable_records_total"


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kafka_io, "RETRY_INITIAL_SECONDS", 0.0001)


class Flaky:
    """Fails `failures` times, then answers `result`."""

    def __init__(self, failures: int, result: object = "ok") -> None:
        self.failures = failures
        self.result = result
        self.calls = 0

    async def __call__(self) -> object:
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError(f"broker unreachable ({self.calls})")
        return self.result


async def test_first_try_succeeds_without_on_result_calls() -> None:
    heard: list[tuple[str, bool]] = []
    operation = Flaky(0, result={"offset": 7})
    assert await until_done(operation, "produce", lambda what, ok: heard.append((what, ok))) == {"offset": 7}
    assert operation.calls == 1
    assert heard == []


async def test_each_failure_then_one_success_are_reported() -> None:
    heard: list[tuple[str, bool]] = []
    operation = Flaky(3, result=[1, 2])
    assert await until_done(operation, "changelog", lambda what, ok: heard.append((what, ok))) == [1, 2]
    assert operation.calls == 4
    assert heard == [("changelog", False)] * 3 + [("changelog", True)]


async def test_without_on_result_it_still_retries() -> None:
    operation = Flaky(2)
    assert await until_done(operation, "results") == "ok"
    assert operation.calls == 3


async def test_the_retry_delay_starts_at_the_initial_value_and_doubles(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kafka_io, "RETRY_INITIAL_SECONDS", 0.001)
    monkeypatch.setattr(kafka_io, "RETRY_MAX_SECONDS", 0.003)
    delays: list[float] = []
    real_sleep = asyncio.sleep

    async def recording_sleep(delay: float) -> None:
        delays.append(delay)
        await real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", recording_sleep)  # the module kafka_io calls
    await until_done(Flaky(4), "produce")
    assert delays == [0.001, 0.002, 0.003, 0.003]


async def test_cancellation_is_not_retried_nor_reported() -> None:
    heard: list[tuple[str, bool]] = []
    calls = 0

    async def cancelled() -> None:
        nonlocal calls
        calls += 1
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await until_done(cancelled, "produce", lambda what, ok: heard.append((what, ok)))
    assert calls == 1
    assert heard == []


async def test_kafka_health_as_on_result() -> None:
    registry = CollectorRegistry()
    readiness = Readiness(registry, ["kafka"])
    readiness.set("kafka", True)
    seen_ready: list[bool] = []
    operation = Flaky(2)

    async def watched() -> object:
        seen_ready.append(readiness.ready)
        return await operation()

    await until_done(watched, "produce", KafkaHealth(registry, readiness))
    assert seen_ready == [True, False, False]  # not ready while the write keeps failing
    assert readiness.ready
    assert registry.get_sample_value("postback_kafka_retries_total", {"operation": "produce"}) == 2


# --- the member's writes: each record sent again only until acknowledged; unwritable ones not retried ----


class ScriptedProducer:
    """An aiokafka producer stand-in: records acknowledged at consecutive offsets from 100, except
    `fail_once` keys (the first acknowledgement fails: a timeout), `busy_once` keys (the first send()
    raises: the buffer is full), `refused` keys (every acknowledgement fails: too large for the broker),
    `oversized` keys (send() raises: larger than the producer's max_request_size) and, while `down`,
    every send()."""

    def __init__(
        self,
        *,
        fail_once: set[bytes] | None = None,
        busy_once: set[bytes] | None = None,
        refused: set[bytes] | None = None,
        oversized: set[bytes] | None = None,
        down: bool = False,
    ) -> None:
        self.fail_once = set(fail_once or ())
        self.busy_once = set(busy_once or ())
        self.refused = set(refused or ())
        self.oversized = set(oversized or ())
        self.down = down
        self.sent: list[bytes | None] = []  # keys, in the order send() was called
        self.written: list[tuple[str, bytes | None, bytes | None]] = []
        self.next_offset = 100

    async def send(
        self, topic: str, value: bytes | None, key: bytes | None = None, partition: int | None = None
    ) -> asyncio.Future[Any]:
        if self.down:
            raise KafkaConnectionError("broker unreachable")
        if key in self.busy_once:
            self.busy_once.discard(key)
            raise KafkaTimeoutError()
        if key in self.oversized:
            raise MessageSizeTooLargeError("larger than max_request_size")
        self.sent.append(key)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if key in self.fail_once:
            self.fail_once.discard(key)
            future.set_exception(RequestTimedOutError())
        elif key in self.refused:
            future.set_exception(MessageSizeTooLargeError())
        else:
            future.set_result(SimpleNamespace(offset=self.next_offset))
            self.next_offset += 1
            self.written.append((topic, key, value))
        return future


def member_with(producer: ScriptedProducer) -> tuple[GroupMember, CollectorRegistry]:
    registry = CollectorRegistry()
    readiness = Readiness(registry, ["kafka", "consumer", "state"])
    member = GroupMember(
        cast(Any, None),
        load_settings({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "STATE_STORE": "memory://"}),
        group_id="app",
        topics=["conversions"],
        stores={},
        readiness=readiness,
        consumer_check="consumer",
        restore_check="state",
        kafka_health=KafkaHealth(registry, readiness),
        lag=ConsumerLag(registry),
        max_records=100,
    )
    member.producer = cast(Any, producer)
    return member, registry


RECORDS: list[Outgoing] = [("out", b"k1", b"v1", None), ("out", b"k2", b"v2", None), ("out", b"k3", b"v3", None)]


async def test_a_retry_sends_again_only_the_records_kafka_did_not_acknowledge() -> None:
    producer = ScriptedProducer(fail_once={b"k2"})
    member, _ = member_with(producer)
    offsets = await asyncio.wait_for(member.send(RECORDS, "produce"), 5)
    assert producer.sent == [b"k1", b"k2", b"k3", b"k2"]  # k1 and k3 were acknowledged: not written twice
    assert [key for _, key, _ in producer.written] == [b"k1", b"k3", b"k2"]
    assert offsets == [100, 102, 101]


async def test_a_send_refused_part_way_sends_again_only_the_rest() -> None:
    producer = ScriptedProducer(busy_once={b"k2"})
    member, _ = member_with(producer)
    offsets = await asyncio.wait_for(member.send(RECORDS, "produce"), 5)
    assert [key for _, key, _ in producer.written] == [b"k1", b"k2", b"k3"]
    assert offsets == [100, 101, 102]


@pytest.mark.parametrize("where", ["broker", "producer"])
async def test_a_record_kafka_can_never_take_is_not_retried_and_the_others_are_written(where: str) -> None:
    producer = ScriptedProducer(refused={b"k2"}) if where == "broker" else ScriptedProducer(oversized={b"k2"})
    member, registry = member_with(producer)
    offsets = await asyncio.wait_for(member.send(RECORDS, "produce"), 5)  # before: retried forever
    assert offsets == [100, None, 101]
    assert [key for _, key, _ in producer.written] == [b"k1", b"k3"]
    assert registry.get_sample_value(UNWRITABLE, {"topic": "out"}) == 1
    assert registry.get_sample_value("postback_kafka_retries_total", {"operation": "produce"}) is None


async def test_an_unwritable_record_is_replaced_by_what_the_writer_shrinks_it_to() -> None:
    producer = ScriptedProducer(refused={b"k2"})
    member, registry = member_with(producer)
    shrunk: list[BaseException] = []

    def shrink(record: Outgoing, error: BaseException) -> Outgoing:
        shrunk.append(error)
        topic, _, _, partition = record
        return (topic, b"k2-small", b"bounded", partition)

    offsets = await asyncio.wait_for(member.send(RECORDS, "produce", shrink), 5)
    assert [type(e) for e in shrunk] == [MessageSizeTooLargeError]
    assert producer.written == [("out", b"k1", b"v1"), ("out", b"k3", b"v3"), ("out", b"k2-small", b"bounded")]
    assert offsets == [100, 102, 101]
    assert registry.get_sample_value(UNWRITABLE, {"topic": "out"}) == 1


async def test_a_replacement_refused_too_is_given_up() -> None:
    producer = ScriptedProducer(refused={b"k2"})
    member, registry = member_with(producer)
    offsets = await asyncio.wait_for(member.send(RECORDS, "produce", lambda record, error: record), 5)
    assert offsets == [100, None, 101]
    assert registry.get_sample_value(UNWRITABLE, {"topic": "out"}) == 2


async def test_a_stop_abandons_a_write_kafka_never_takes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(group_member, "STOP_WRITE_GRACE_SECONDS", 0.2)
    member, _ = member_with(ScriptedProducer(down=True))
    write = asyncio.create_task(member.send(RECORDS, "produce"))
    await asyncio.sleep(0.05)
    assert not write.done()  # retried while Kafka is away
    member.stop()
    with pytest.raises(WriteAbandoned):
        await asyncio.wait_for(write, 5)  # before: retried forever, the stop never ended
