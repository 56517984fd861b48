"""Back-pressure in the consumer-group member (issue 8, defect 5): the application asks before each fetch whether
to fetch at all; the member pauses every assigned partition while it says no, also those assigned meanwhile
(after a rebalance a partition comes back unpaused), and resumes them all when it says yes. No broker: the
consumer is a fake that keeps aiokafka's pause state per assigned partition."""

from __future__ import annotations

from typing import Any

from aiokafka import TopicPartition
from prometheus_client import CollectorRegistry

from service.consumer_health import ConsumerLag, KafkaHealth
from service.group_member import GroupMember
from service.ops_http import Readiness
from service.settings import load_settings

P0 = TopicPartition("postbacks.s2s", 0)
P1 = TopicPartition("postbacks.s2s", 1)
P2 = TopicPartition("postbacks.s2s", 2)


class PausingConsumer:
    """What the member uses of AIOKafkaConsumer's assignment and pause API, with aiokafka's semantics:
    only assigned partitions can be paused, and a partition assigned again starts unpaused."""

    def __init__(self, events: list[tuple[str, Any]]) -> None:
        self.events = events
        self.assigned: set[TopicPartition] = set()
        self.paused_set: set[TopicPartition] = set()

    def rebalance(self, revoked: set[TopicPartition], assigned: set[TopicPartition]) -> None:
        self.assigned = (self.assigned - revoked) | assigned
        self.paused_set -= revoked | assigned

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    def paused(self) -> set[TopicPartition]:
        return set(self.paused_set)

    def pause(self, *partitions: TopicPartition) -> None:
        assert set(partitions) <= self.assigned, "aiokafka refuses to pause a partition it has not assigned"
        self.paused_set |= set(partitions)
        self.events.append(("pause", set(partitions)))

    def resume(self, *partitions: TopicPartition) -> None:
        self.paused_set -= set(partitions)
        self.events.append(("resume", set(partitions)))

    async def commit(self, offsets: Any) -> None:
        self.events.append(("commit", dict(offsets)))


class App:
    def __init__(self, events: list[tuple[str, Any]]) -> None:
        self.events = events
        self.full = False

    def fetch_paused(self) -> bool:
        return self.full

    async def assigned(self, partitions: set[TopicPartition]) -> None:
        self.events.append(("assigned", set(partitions)))

    async def revoked(self, partitions: set[TopicPartition]) -> None:
        self.events.append(("revoked", set(partitions)))


def member(app: App, consumer: PausingConsumer, *, with_back_pressure: bool = True) -> GroupMember:
    registry = CollectorRegistry()
    readiness = Readiness(registry, ("kafka", "consumer", "state"))
    built = GroupMember(
        app,  # type: ignore[arg-type]
        load_settings({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "STATE_STORE": "memory://"}),
        group_id="dispatch",
        topics=["postbacks.s2s"],
        stores={},
        readiness=readiness,
        consumer_check="consumer",
        restore_check="state",
        kafka_health=KafkaHealth(registry, readiness),
        lag=ConsumerLag(registry),
        max_records=10,
        fetch_paused=app.fetch_paused if with_back_pressure else None,
    )
    built.consumer = consumer  # type: ignore[assignment]
    return built


async def test_pauses_every_assigned_partition_while_the_application_is_full_then_resumes_them() -> None:
    events: list[tuple[str, Any]] = []
    app, consumer = App(events), PausingConsumer(events)
    group = member(app, consumer)
    consumer.rebalance(set(), {P0, P1})
    await group.on_assigned({P0, P1})

    group._apply_back_pressure()  # before a fetch: room left
    assert (group.paused, consumer.paused()) == (False, set())
    app.full = True
    group._apply_back_pressure()
    assert (group.paused, consumer.paused()) == (True, {P0, P1})
    group._apply_back_pressure()  # still full: nothing more to do
    assert [name for name, _ in events].count("pause") == 1
    app.full = False
    group._apply_back_pressure()
    assert (group.paused, consumer.paused()) == (False, set())
    assert events[-1] == ("resume", {P0, P1})


async def test_partitions_assigned_while_paused_are_paused_before_anything_else_happens_to_them() -> None:
    events: list[tuple[str, Any]] = []
    app, consumer = App(events), PausingConsumer(events)
    group = member(app, consumer)
    consumer.rebalance(set(), {P0})
    await group.on_assigned({P0})
    app.full = True
    group._apply_back_pressure()

    # A rebalance while paused: P0 revoked and assigned again (aiokafka forgets its pause), P2 is new.
    await group.on_revoked({P0})
    consumer.rebalance({P0}, {P0, P2})
    events.clear()
    await group.on_assigned({P0, P2})
    assert events[0] == ("pause", {P0, P2}), "paused before the application hears of them"
    assert events[1] == ("assigned", {P0, P2})
    assert consumer.paused() == {P0, P2}

    app.full = False
    group._apply_back_pressure()
    assert consumer.paused() == set()


async def test_a_partition_that_slipped_through_unpaused_is_paused_at_the_next_fetch() -> None:
    events: list[tuple[str, Any]] = []
    app, consumer = App(events), PausingConsumer(events)
    group = member(app, consumer)
    consumer.rebalance(set(), {P0})
    app.full = True
    group._apply_back_pressure()
    consumer.rebalance(set(), {P1})  # assigned by the consumer, its callback not run yet
    group._apply_back_pressure()
    assert consumer.paused() == {P0, P1}


async def test_without_back_pressure_nothing_is_ever_paused() -> None:
    events: list[tuple[str, Any]] = []
    app, consumer = App(events), PausingConsumer(events)
    app.full = True
    group = member(app, consumer, with_back_pressure=False)
    consumer.rebalance(set(), {P0})
    await group.on_assigned({P0})
    group._apply_back_pressure()
    assert (group.paused, consumer.paused(), events) == (False, set(), [("assigned", {P0})])
