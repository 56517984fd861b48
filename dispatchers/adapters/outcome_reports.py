"""Exactly one `postbacks.results` record per postback, and no request sent again once answered (contract
§4, §6 Faults), without Kafka transactions (the development broker has none): the delivery-state
changelog is the one source of truth, and each step is written, acknowledged, before the next one.

1. The outcome is known (the destination answered, or the postback was given up): its state becomes
   `decided`, holding the records that report it, each with its partition and an offset at or below
   that partition's end at this moment (dispatchers/core/delivery_state.py). From here on it is never
   sent again: a restart finds it `decided`, not `pending`.
2. The records go to `postbacks.results` (and `postbacks.dead-letter` unless delivered), keyed by
   postback_id, each to the partition written in the state (the partition the default partitioner
   would choose for the key, so consumers see the same layout as before).
3. Its state becomes `final`.

Whoever is assigned the partition and finds a state still `decided` (its dispatcher was killed between
1 and 3, or stopped while Kafka was unreachable) reads each of those results and dead-letter partitions
from the lowest offset recorded to its end, writes only the records whose postback_id is not there, and
then the state `final`: a record is written twice only if it was still on its way to the broker when
this read ended, which would take a previous owner still running after losing its partition. A record is
found by its key and its replay number (absent: 0), so the record of an earlier delivery cycle of the same
postback (a replay, dispatchers/core/replay.py) never stands in for the one of the cycle being reported.

The partition ends come from this process's own acknowledged writes, and at first from ListOffsets
(kafka_io.end_offsets: a lower bound even where the broker under-reports it); the check then reads
only what was written to those partitions since, a little more when a partition was idle here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from aiokafka import TopicPartition
from aiokafka.partitioner import murmur2

from dispatchers.core.delivery_records import (
    UNKEEPABLE_REASON,
    Finished,
    bounded_dead_letter,
    bounded_result,
    dead_letter_record,
    decided_state,
    final_state,
    result_record,
    shrink_delivery_state,
)
from dispatchers.core.delivery_state import (
    FIRST_CYCLE,
    DeliveryState,
    EmitRecord,
    EmitRole,
    ReplayCycle,
    encode_delivery_state,
)
from service.changelog_store import ChangelogStore
from service.group_member import GroupMember
from service.kafka_connection import KafkaConnection
from service.kafka_io import Outgoing, end_offsets, read_partitions, until_done

log = logging.getLogger(__name__)

StateChange = tuple[int, bytes, DeliveryState]  # (partition, postback_id, state)


class OutcomeReports:
    def __init__(
        self, member: GroupMember, store: ChangelogStore, topics: Mapping[EmitRole, str], kafka: KafkaConnection
    ) -> None:
        """`topics`: where each role's records go (`results`, `dead_letter`)."""
        self._member = member
        self._store = store
        self._topics = dict(topics)
        self._roles = {topic: role for role, topic in self._topics.items()}
        self._kafka = kafka
        self._partitions: dict[str, list[int]] = {}  # topic -> its partitions, sorted
        self._ends: dict[TopicPartition, int] = {}  # a lower bound of each partition's end
        self._lookup = asyncio.Lock()

    async def write_states(self, states: Sequence[StateChange]) -> list[StateChange]:
        """Write delivery states to the changelog (acknowledged) and the store; the ones Kafka could never
        take are returned (a `pending` state larger than the changelog accepts: its postback cannot be kept).
        A `decided` state too large is written with its dead-letter record bounded instead."""
        changes = [(partition, key, encode_delivery_state(state)) for partition, key, state in states]
        unwritten = await self._member.write_changelog(self._store, changes, "writing delivery state", _shrink_state)
        refused = {(partition, key) for partition, key, _ in unwritten}
        return [change for change in states if (change[0], change[1]) in refused]

    async def report(self, partition: int, final: Finished, cycle: ReplayCycle = FIRST_CYCLE) -> None:
        """The outcome of one postback of `partition` (in its delivery `cycle`): decided (acknowledged), its
        records written, final."""
        key = final.postback["postback_id"].encode()
        records: list[tuple[EmitRole, dict[str, Any]]] = [("results", result_record(final, cycle.number))]
        if final.result != "delivered":
            dead = dead_letter_record(final, cycle.number)
            if final.last_outcome.reason == UNKEEPABLE_REASON:
                dead = bounded_dead_letter(dead)  # the postback is known to be too large to write whole
            records.append(("dead_letter", dead))
        emit = tuple([await self._placed(role, key, value) for role, value in records])
        unwritten = await self.write_states([(partition, key, decided_state(final, emit, int(time.time()), cycle))])
        if unwritten:  # not even bounded: without it a crash from here on may report this postback twice
            log.error("the decided state of postback %s could not be written; reporting it anyway", key.decode())
        await self._emit([(key, emit)])
        await self.write_states([(partition, key, final_state(final.attempts, final.result, int(time.time()), cycle))])

    async def finish_decided(self, decided: Sequence[StateChange]) -> list[DeliveryState]:
        """States found `decided` (on assignment): write each record that is not in its partition yet, then
        the states `final`. Returns the states whose results record this wrote."""
        if not decided:
            return []
        start: dict[TopicPartition, int] = {}
        for _, _, state in decided:
            for record in state.emit:
                tp = TopicPartition(self._topics[record.role], record.partition)
                start[tp] = min(start.get(tp, record.from_offset), record.from_offset)
        keys = {key for _, key, _ in decided}
        present = await until_done(
            lambda: self._keys_since(start, keys),
            "reading results and dead-letter for decided postbacks",
            self._member.kafka_health,
            give_up=self._member.writes_given_up(),
        )
        missing: list[tuple[bytes, tuple[EmitRecord, ...]]] = []
        reported: list[DeliveryState] = []
        for _, key, state in decided:
            absent = tuple(
                record
                for record in state.emit
                if (TopicPartition(self._topics[record.role], record.partition), key, _replay_of(record.value))
                not in present
            )
            if absent:
                missing.append((key, absent))
            if any(record.role == "results" for record in absent):
                reported.append(state)
        await self._emit(missing)
        now = int(time.time())
        await self.write_states(
            [(partition, key, final_state(s.attempts, s.result, now, s.cycle)) for partition, key, s in decided]
        )
        log.info(
            "%d postbacks found decided and not final: %d records written that were missing, %d already there",
            len(decided),
            sum(len(records) for _, records in missing),
            sum(len(s.emit) for _, _, s in decided) - sum(len(records) for _, records in missing),
        )
        return reported

    async def _keys_since(
        self, start: dict[TopicPartition, int], keys: set[bytes]
    ) -> set[tuple[TopicPartition, bytes, int]]:
        """(partition, key, replay number) of each record of `keys` written since `start`."""
        present: set[tuple[TopicPartition, bytes, int]] = set()
        async for batch in read_partitions(self._kafka, list(start), start):
            for record in batch:
                if record.key is not None and record.key in keys:
                    replay = _replay_of(_json_object(record.value))
                    present.add((TopicPartition(record.topic, record.partition), record.key, replay))
        return present

    async def _placed(self, role: EmitRole, key: bytes, value: dict[str, Any]) -> EmitRecord:
        """Where the record of `role` for `key` goes, with a lower bound of that partition's end now."""
        topic = self._topics[role]
        partitions = self._partitions.get(topic) or await self._look_up(topic)
        # The default partitioner's choice for the key (aiokafka, like Kafka's Java client: murmur2).
        partition = partitions[(murmur2(key) & 0x7FFFFFFF) % len(partitions)]
        return EmitRecord(role, partition, self._ends.get(TopicPartition(topic, partition), 0), value)

    async def _look_up(self, topic: str) -> list[int]:
        async with self._lookup:  # once per topic, however many postbacks end meanwhile
            if topic not in self._partitions:
                producer = self._member.producer
                assert producer is not None
                give_up = self._member.writes_given_up()
                health = self._member.kafka_health
                found = await until_done(
                    lambda: producer.partitions_for(topic), f"metadata of {topic}", health, give_up=give_up
                )
                partitions = sorted(found)
                tps = [TopicPartition(topic, p) for p in partitions]
                ends = await until_done(
                    lambda: end_offsets(self._kafka, tps), f"end offsets of {topic}", health, give_up=give_up
                )
                for tp, end in ends.items():
                    self._ends[tp] = max(self._ends.get(tp, 0), end)
                self._partitions[topic] = partitions
            return self._partitions[topic]

    async def _emit(self, reports: Sequence[tuple[bytes, tuple[EmitRecord, ...]]]) -> None:
        placed = [(self._topics[r.role], key, r) for key, records in reports for r in records]
        if not placed:
            return
        outgoing: list[Outgoing] = [(topic, key, orjson.dumps(r.value), r.partition) for topic, key, r in placed]
        offsets = await self._member.send(outgoing, "writing a delivery result", self._shrink_report)
        for (topic, _, record), offset in zip(placed, offsets, strict=True):
            if offset is not None:
                tp = TopicPartition(topic, record.partition)
                self._ends[tp] = max(self._ends.get(tp, 0), offset + 1)

    def _shrink_report(self, record: Outgoing, error: BaseException) -> Outgoing | None:
        """A results or dead-letter record Kafka refused as too large, bounded; None if it cannot be smaller."""
        topic, key, value, partition = record
        role = self._roles.get(topic)
        if value is None or role is None:
            return None
        original = orjson.loads(value)
        bounded = bounded_result(original) if role == "results" else bounded_dead_letter(original)
        return None if bounded == original else (topic, key, orjson.dumps(bounded), partition)


def _json_object(value: bytes | None) -> dict[str, Any]:
    try:
        decoded = orjson.loads(value) if value is not None else None
    except orjson.JSONDecodeError:
        return {}
    return decoded if isinstance(decoded, dict) else {}


def _replay_of(record: dict[str, Any]) -> int:
    """The delivery cycle a results or dead-letter record reports (0: the first, no replay)."""
    replay = record.get("replay")
    return replay if isinstance(replay, int) else 0


def _shrink_state(record: Outgoing, error: BaseException) -> Outgoing | None:
    topic, key, value, partition = record
    smaller = shrink_delivery_state(value) if value is not None else None
    return None if smaller is None else (topic, key, smaller, partition)
