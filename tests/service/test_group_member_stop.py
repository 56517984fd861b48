"""A stop of the consumer-group member: partitions assigned once it has begun are left to the next owner
(a graceful SIGTERM that lands during a rebalance), and the last commit is bounded when Kafka is away."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest
from aiokafka import TopicPartition
from prometheus_client import CollectorRegistry

import service.group_member as group_member
from service.consumer_health import ConsumerLag, KafkaHealth
from service.group_member import GroupMember
from service.ops_http import Readiness
from service.settings import load_settings

P0 = TopicPartition("postbacks.s2s", 0)


class Store:
    changelog_topic = "state-changelog"

    def __init__(self) -> None:
        self.restored: list[set[int]] = []

    async def assign(self, partitions: set[int]) -> None:
        self.restored.append(partitions)

    def revoke(self, partitions: set[int]) -> None:
        pass

    def close(self) -> None:
        pass

    def apply(self, partition: int, key: bytes, value: bytes | None, changelog_offset: int) -> None:
        pass


class App:
    """Starts delivering what it is assigned: after a stop's revocation nothing would write that back."""

    def __init__(self) -> None:
        self.assigned_partitions: list[set[TopicPartition]] = []
        self.revoked_partitions: list[set[TopicPartition]] = []

    async def prepare(self) -> None:
        pass

    async def handle(self, batch: Mapping[TopicPartition, list[Any]]) -> None:
        pass

    async def assigned(self, partitions: set[TopicPartition]) -> None:
        self.assigned_partitions.append(partitions)

    async def revoked(self, partitions: set[TopicPartition]) -> None:
        self.revoked_partitions.append(partitions)

    async def close(self) -> None:
        pass


class NeverCommits:
    """A consumer whose commit never ends: the group coordinator is unreachable."""

    def __init__(self) -> None:
        self.commits = 0

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        self.commits += 1
        await asyncio.Event().wait()


def member(app: App, store: Store) -> tuple[GroupMember, Readiness]:
    registry = CollectorRegistry()
    readiness = Readiness(registry, ["kafka", "consumer", "state"])
    built = GroupMember(
        app,
        load_settings({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "STATE_STORE": "memory://"}),
        group_id="dispatch",
        topics=["postbacks.s2s"],
        stores={"postbacks.s2s": store},
        readiness=readiness,
        consumer_check="consumer",
        restore_check="state",
        kafka_health=KafkaHealth(registry, readiness),
        lag=ConsumerLag(registry),
        max_records=100,
    )
    return built, readiness


async def test_partitions_assigned_after_a_stop_are_left_to_the_next_owner() -> None:
    app, store = App(), Store()
    shell, readiness = member(app, store)
    await shell.on_assigned({P0})
    assert app.assigned_partitions == [{P0}]
    shell.stop()  # SIGTERM: the stop revokes what it owns ...
    await shell.on_revoked({P0})
    await shell.on_assigned({P0})  # ... and the rebalance under way assigns it again
    assert app.assigned_partitions == [{P0}], "nothing is started that the stop would not write back"
    assert store.restored == [{0}]
    readiness.set("kafka", True)
    readiness.set("consumer", True)
    assert readiness.ready


async def test_a_stop_abandons_a_commit_kafka_never_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(group_member, "STOP_WRITE_GRACE_SECONDS", 0.2)
    shell, _ = member(App(), Store())
    consumer = NeverCommits()
    shell.consumer = consumer  # type: ignore[assignment]
    await shell.on_assigned({P0})
    shell.stop()
    shell._processed[P0] = 10
    await asyncio.wait_for(shell.on_revoked({P0}), 5)  # before: waited for the coordinator forever
    assert consumer.commits == 1
