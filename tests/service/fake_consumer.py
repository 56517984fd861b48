"""What the group member uses of AIOKafkaConsumer besides fetching, with aiokafka's semantics: only assigned
partitions can be paused, a partition assigned again starts unpaused, seeks are kept as positions."""

from __future__ import annotations

from collections.abc import Iterable

from aiokafka import TopicPartition


class AssignedConsumer:
    def __init__(self, assigned: Iterable[TopicPartition] = ()) -> None:
        self.assigned: set[TopicPartition] = set(assigned)
        self.paused_set: set[TopicPartition] = set()
        self.committed_offsets: dict[TopicPartition, int] = {}
        self.positions: dict[TopicPartition, int] = {}  # where each seek left a partition

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

    def resume(self, *partitions: TopicPartition) -> None:
        self.paused_set -= set(partitions)

    async def committed(self, tp: TopicPartition) -> int | None:
        return self.committed_offsets.get(tp)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.positions[tp] = offset

    async def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        for tp in partitions:
            self.positions[tp] = 0
