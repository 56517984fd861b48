"""Consumer lag per owned partition, and the Kafka retries / readiness of a consumer-group process."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import IllegalStateError
from prometheus_client import CollectorRegistry

import service.consumer_health as consumer_health
from service.consumer_health import ConsumerLag, KafkaHealth
from service.ops_http import Readiness

LAG = "postback_consumer_lag"
RETRIES = "postback_kafka_retries_total"
P0 = TopicPartition("conversions", 0)
P1 = TopicPartition("conversions", 1)
P2 = TopicPartition("conversions", 2)
R0 = TopicPartition("campaign-rules", 0)


class FakeConsumer:
    """What ConsumerLag uses of an AIOKafkaConsumer: assignment(), highwater(tp), async position(tp)."""

    def __init__(
        self,
        highwater: Mapping[TopicPartition, int | None],
        position: Mapping[TopicPartition, int | BaseException],
    ) -> None:
        self.assigned = set(highwater)
        self.highwaters: dict[TopicPartition, int | None] = dict(highwater)
        self.positions: dict[TopicPartition, int | BaseException] = dict(position)
        self.position_calls: list[TopicPartition] = []

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.highwaters[tp]

    async def position(self, tp: TopicPartition) -> int:
        self.position_calls.append(tp)
        answer = self.positions[tp]
        if isinstance(answer, BaseException):
            raise answer
        return answer


def lag(registry: CollectorRegistry, tp: TopicPartition) -> float | None:
    return registry.get_sample_value(LAG, {"topic": tp.topic, "partition": str(tp.partition)})


def lag_series(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    [family] = [m for m in registry.collect() if m.name == LAG]
    return {(s.labels["topic"], s.labels["partition"]): s.value for s in family.samples}


# --- ConsumerLag --------------------------------------------------------------------------------------


async def test_lag_is_highwater_minus_position() -> None:
    registry = CollectorRegistry()
    consumer = FakeConsumer({P0: 100, P1: 50, R0: 7}, {P0: 60, P1: 50, R0: 0})
    await ConsumerLag(registry).refresh(consumer)  # type: ignore[arg-type]
    assert lag_series(registry) == {
        ("conversions", "0"): 40.0,
        ("conversions", "1"): 0.0,
        ("campaign-rules", "0"): 7.0,
    }


async def test_lag_follows_the_consumer_between_refreshes() -> None:
    registry = CollectorRegistry()
    gauge = ConsumerLag(registry)
    consumer = FakeConsumer({P0: 100}, {P0: 60})
    await gauge.refresh(consumer)  # type: ignore[arg-type]
    assert lag(registry, P0) == 40
    consumer.highwaters[P0] = 120
    consumer.positions[P0] = 119
    await gauge.refresh(consumer)  # type: ignore[arg-type]
    assert lag(registry, P0) == 1


async def test_a_position_past_the_highwater_is_zero_lag() -> None:
    registry = CollectorRegistry()
    await ConsumerLag(registry).refresh(FakeConsumer({P0: 10}, {P0: 12}))  # type: ignore[arg-type]
    assert lag(registry, P0) == 0


async def test_partitions_without_a_highwater_are_skipped() -> None:
    registry = CollectorRegistry()
    consumer = FakeConsumer({P0: None, P1: 5}, {P0: 0, P1: 2})
    await ConsumerLag(registry).refresh(consumer)  # type: ignore[arg-type]
    assert lag(registry, P0) is None
    assert lag(registry, P1) == 3
    assert consumer.position_calls == [P1]  # no position asked for a partition not fetched from yet


async def test_a_partition_no_longer_assigned_is_removed() -> None:
    registry = CollectorRegistry()
    gauge = ConsumerLag(registry)
    consumer = FakeConsumer({P0: 10, P1: 20, P2: 30}, {P0: 0, P1: 0, P2: 0})
    await gauge.refresh(consumer)  # type: ignore[arg-type]
    assert set(lag_series(registry)) == {("conversions", "0"), ("conversions", "1"), ("conversions", "2")}

    consumer.assigned = {P0}  # a rebalance gave P1 and P2 to another process
    await gauge.refresh(consumer)  # type: ignore[arg-type]
    assert lag_series(registry) == {("conversions", "0"): 10.0}

    # and a partition that comes back is shown again
    consumer.assigned = {P0, P2}
    consumer.positions[P2] = 25
    await gauge.refresh(consumer)  # type: ignore[arg-type]
    assert lag_series(registry) == {("conversions", "0"): 10.0, ("conversions", "2"): 5.0}


async def test_unassigned_partitions_never_shown_are_not_a_problem() -> None:
    registry = CollectorRegistry()
    gauge = ConsumerLag(registry)
    consumer = FakeConsumer({P0: None}, {P0: 0})
    await gauge.refresh(consumer)  # type: ignore[arg-type]
    consumer.assigned = set()
    await gauge.refresh(consumer)  # type: ignore[arg-type]
    assert lag_series(registry) == {}


async def test_one_lag_gauge_shared_by_a_consumer_per_kind_shows_every_kind() -> None:
    """`dispatch --kind all`: the kinds' members share one ConsumerLag, each refreshing with its own consumer.
    A refresh removes only the series its own consumer showed and no longer owns."""
    registry = CollectorRegistry()
    gauge = ConsumerLag(registry)
    kinds = ("s2s", "google_ads", "meta", "tiktok", "microsoft_ads")
    consumers = {
        kind: FakeConsumer(
            {TopicPartition(f"postbacks.{kind}", p): 10 + p for p in range(2)},
            {TopicPartition(f"postbacks.{kind}", p): 10 for p in range(2)},
        )
        for kind in kinds
    }
    for _ in range(2):  # the refresh loops interleave
        for consumer in consumers.values():
            await gauge.refresh(consumer)  # type: ignore[arg-type]
    expected = {(f"postbacks.{kind}", str(p)): float(p) for kind in kinds for p in range(2)}
    assert lag_series(registry) == expected

    consumers["meta"].assigned = {TopicPartition("postbacks.meta", 0)}  # meta's partition 1 moved away
    for consumer in consumers.values():
        await gauge.refresh(consumer)  # type: ignore[arg-type]
    del expected[("postbacks.meta", "1")]
    assert lag_series(registry) == expected


@pytest.mark.parametrize(
    "error", [IllegalStateError("Partition conversions-0 is not assigned"), AssertionError()], ids=["illegal", "assert"]
)
async def test_a_position_error_skips_that_partition_only(error: BaseException) -> None:
    registry = CollectorRegistry()
    consumer = FakeConsumer({P0: 10, P1: 20}, {P0: error, P1: 15})
    await ConsumerLag(registry).refresh(consumer)  # type: ignore[arg-type]
    assert lag(registry, P0) is None
    assert lag(registry, P1) == 5


async def test_a_position_error_keeps_the_last_value_of_a_partition_still_owned() -> None:
    registry = CollectorRegistry()
    gauge = ConsumerLag(registry)
    consumer = FakeConsumer({P0: 10}, {P0: 4})
    await gauge.refresh(consumer)  # type: ignore[arg-type]
    consumer.positions[P0] = IllegalStateError("being reset")
    await gauge.refresh(consumer)  # type: ignore[arg-type]
    assert lag(registry, P0) == 6


async def test_a_position_that_does_not_answer_in_time_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(consumer_health, "POSITION_TIMEOUT_SECONDS", 0.01)

    class Resetting(FakeConsumer):
        async def position(self, tp: TopicPartition) -> int:
            if tp == P0:
                await asyncio.Event().wait()
            return await super().position(tp)

    registry = CollectorRegistry()
    await ConsumerLag(registry).refresh(Resetting({P0: 10, P1: 20}, {P1: 18}))  # type: ignore[arg-type]
    assert lag(registry, P0) is None
    assert lag(registry, P1) == 2


# --- KafkaHealth --------------------------------------------------------------------------------------


def test_kafka_health_counts_failures_and_sets_readiness() -> None:
    registry = CollectorRegistry()
    readiness = Readiness(registry, ["kafka", "state"])
    readiness.set("state", True)
    health = KafkaHealth(registry, readiness)

    health("produce", True)
    assert readiness.checks()["kafka"] is True
    assert readiness.ready
    assert registry.get_sample_value(RETRIES, {"operation": "produce"}) is None

    health("produce", False)
    health("produce", False)
    health("changelog", False)
    assert readiness.checks()["kafka"] is False
    assert not readiness.ready
    assert registry.get_sample_value("postback_ready") == 0.0
    assert registry.get_sample_value(RETRIES, {"operation": "produce"}) == 2
    assert registry.get_sample_value(RETRIES, {"operation": "changelog"}) == 1

    health("changelog", True)
    assert readiness.checks()["kafka"] is True
    assert registry.get_sample_value("postback_ready") == 1.0
    assert registry.get_sample_value(RETRIES, {"operation": "changelog"}) == 1  # a success is not a retry


def test_kafka_health_needs_a_kafka_readiness_check() -> None:
    registry = CollectorRegistry()
    health = KafkaHealth(registry, Readiness(registry, ["state"]))
    with pytest.raises(KeyError, match="kafka"):
        health("produce", True)


class FakeClient:
    """An AIOKafkaClient whose metadata requests fail while `down` is set."""

    def __init__(self) -> None:
        self.down = True
        self.calls = 0

    async def fetch_all_metadata(self) -> object:
        self.calls += 1
        if self.down:
            raise ConnectionError("broker unreachable")
        return object()


async def test_the_probe_follows_the_cluster_while_nothing_is_written(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(consumer_health, "PROBE_INTERVAL_SECONDS", 0.001)
    registry = CollectorRegistry()
    readiness = Readiness(registry, ["kafka"])
    readiness.set("kafka", True)
    client = FakeClient()
    probe = asyncio.create_task(KafkaHealth(registry, readiness).probe_forever(client))

    async def until(condition: object) -> None:
        async with asyncio.timeout(5):
            while not condition():  # type: ignore[operator]
                await asyncio.sleep(0.001)

    try:
        await until(lambda: client.calls >= 1 and not readiness.ready)
        client.down = False
        await until(lambda: readiness.ready)
        assert registry.get_sample_value("postback_ready") == 1
    finally:
        probe.cancel()
    retried = [s for family in registry.collect() for s in family.samples if s.name == RETRIES]
    assert retried == [], "a failed probe is not a retried write"
