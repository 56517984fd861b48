"""The worker's click join: the stores and Kafka reads around streams/core/click_join.py.

Two stores per owned conversions partition p, both taken up and released with it (through
`ConversionsPartitionStores`, the one store the group member sees for `conversions`):

- the clicks of `clicks` partition p (`ClickStore`). The `clicks` topic is its own changelog, as a
  Kafka Streams source-topic KTable: the store restores from it on assignment (RocksDB keeps what it
  read across restarts, with the identity checks of service/changelog_store.py) and reads what is new
  in it before a batch that needs a click. The worker does not subscribe to `clicks` as a group
  member: aiokafka's default assignor (round robin) would not give one member partition p of both
  topics, so the clicks follow the conversions partitions instead, whatever the assignor.
- the conversions waiting for their click (`AwaitingClickStore`, changelog
  `<APP_ID>-awaiting-click-changelog`): a waiting conversion's offset is committed like any other,
  so nothing stalls the partition; it is looked for again at every batch and every tick
  (`CLICK_RECHECK_SECONDS`) until its click arrives or CLICK_GRACE_PERIOD has passed.

Clicks older than CLICK_ATTRIBUTION_WINDOW are never joined and are deleted from the local store by
a sweep at FIRED_STATE_SWEEP_INTERVAL, a slice of one partition at a time (the `clicks` topic's own
retention.ms deletes them in Kafka).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path

from schemas.errors import InvalidInput
from service.changelog_store import Changelog, ChangelogStore, StateStoreMetrics
from service.group_member import Batch, GroupMember
from service.kafka_connection import KafkaConnection
from service.settings import Settings
from streams.core.batch import SourceRecord
from streams.core.click_join import (
    AwaitingConversion,
    Click,
    JoinConfig,
    JoinPlan,
    click_wanted,
    decode_awaiting,
    parse_click,
    plan_join,
)

log = logging.getLogger(__name__)

# How often conversions waiting for their click are looked for again when no batch comes: a click
# published a moment after its conversion completes it within about this long.
CLICK_RECHECK_SECONDS = 2.0
# Clicks a sweep step scans while it holds the member's lock: about 12 µs each (parsed, as a lookup
# does), so a step keeps batches waiting some 60 ms at most.
SWEEP_SLICE = 5_000


class ClickStore(ChangelogStore):
    """The clicks of the owned partitions, restored from (and caught up with) the `clicks` topic."""

    def click(self, click_id: str, partition: int) -> Click | None:
        if partition not in self.partitions:
            return None
        raw = self.get_raw(click_id.encode("utf-8"), partition)
        if raw is None:
            return None
        try:
            return parse_click(click_id.encode("utf-8"), raw)
        except InvalidInput:
            return None  # an invalid click is no click: its conversion waits, then is refused as unknown_click

    async def catch_up(self) -> int:
        """Read what `clicks` holds beyond what each owned partition applied; the records read."""
        states = dict(self._partitions)
        if not states:
            return 0
        return await self._restore(states, {p: state.next_changelog_offset() for p, state in states.items()})

    def sweep(self, partition: int, now_unix: float, window_seconds: int) -> Iterator[int]:
        """Delete the clicks of `partition` older than the attribution window (and invalid ones) from the
        local store only: the worker never writes `clicks`, whose retention.ms deletes them in Kafka
        (`apply` at offset -1 moves no changelog position). A slice of SWEEP_SLICE clicks per step, each
        step yielding how many it deleted, so that the caller can let batches run in between; it stops
        when the partition was released meanwhile (its store closed)."""
        state = self._partitions.get(partition)
        if state is None:
            return
        items = state.items()
        while self._partitions.get(partition) is state:
            old, scanned = [], 0
            for key, raw in items:
                scanned += 1
                try:
                    expired = now_unix - parse_click(key, raw).clicked_at_unix > window_seconds
                except InvalidInput:
                    expired = True
                if expired:
                    old.append(key)
                if scanned >= SWEEP_SLICE:
                    break
            for key in old:
                self.apply(partition, key, None, -1)
            yield len(old)
            if scanned < SWEEP_SLICE:
                return


class AwaitingClickStore(ChangelogStore):
    """The conversions waiting for their click, per owned partition, in arrival order."""

    def entries(self) -> list[AwaitingConversion]:
        return [decode_awaiting(raw) for _, _, raw in self.items()]


class ConversionsPartitionStores:
    """The stores of a conversions partition as one (service/group_member.py's PartitionStore): the
    fired-state first, then the clicks and the awaiting conversions of the same partition."""

    def __init__(self, fired: ChangelogStore, *others: ChangelogStore) -> None:
        self._fired = fired
        self._all = (fired, *others)
        self.changelog_topic = fired.changelog_topic

    async def assign(self, partitions: set[int]) -> None:
        for store in self._all:
            await store.assign(partitions)  # each skips the partitions it restored already (a retry)

    def revoke(self, partitions: set[int]) -> None:
        for store in self._all:
            store.revoke(partitions)

    def close(self) -> None:
        for store in self._all:
            store.close()

    def apply(self, partition: int, key: bytes, value: bytes | None, changelog_offset: int) -> None:
        self._fired.apply(partition, key, value, changelog_offset)


class ClickJoin:
    def __init__(
        self,
        settings: Settings,
        backend: str,
        directory: Path,
        metrics: StateStoreMetrics | None = None,
        *,
        count_unknown: Callable[[int], None] = lambda n: None,  # conversions refused as unknown_click
        clicks_topic: Changelog | None = None,  # tests: the topics in memory
        awaiting_changelog: Changelog | None = None,
    ) -> None:
        kafka: KafkaConnection = settings.kafka
        self.clicks = ClickStore(
            kafka, settings.topics.clicks, backend, directory / "clicks", metrics=metrics, changelog=clicks_topic
        )
        self.awaiting = AwaitingClickStore(
            kafka,
            settings.awaiting_click_changelog,
            backend,
            directory / "awaiting-click",
            metrics=metrics,
            changelog=awaiting_changelog,
        )
        self.config = JoinConfig(
            invalid_topic=settings.topics.invalid(settings.topics.conversions),
            attribution_window_seconds=settings.click_attribution_window_seconds,
            grace_period_seconds=settings.click_grace_period_seconds,
        )
        self._caught_up_at = 0.0
        self._count_unknown = count_unknown

    async def plan(self, records: Sequence[SourceRecord], now_unix: float, stamp: str) -> JoinPlan:
        """The join's plan for a batch's conversion records (none: a tick for the waiting ones).

        Reading what is new in `clicks` costs a round trip (a short-lived reader), so it is done only
        when a record of the batch wants a click the store does not hold (then a click acknowledged
        before its conversion is always found), or, for the waiting conversions, at most every
        CLICK_RECHECK_SECONDS and before one is refused: a batch without campaign-less conversions
        pays nothing."""
        awaiting = self.awaiting.entries()
        wanted = [(r.partition, click_id) for r in records if (click_id := click_wanted(r.value)) is not None]
        if not awaiting and not wanted:
            return JoinPlan(ready=list(records))
        missing = any(self.clicks.click(click_id, partition) is None for partition, click_id in wanted)
        # and always before a waiting conversion is refused: its click may have just arrived
        expiring = any(now_unix - entry.since_unix >= self.config.grace_period_seconds for entry in awaiting)
        if missing or expiring or (awaiting and now_unix - self._caught_up_at >= CLICK_RECHECK_SECONDS):
            await self.clicks.catch_up()
            self._caught_up_at = now_unix
        return plan_join(self.config, records, awaiting, self.clicks.click, now_unix, stamp)

    async def write(self, member: GroupMember, join: JoinPlan) -> None:
        """Write a plan's awaiting-click changes, once the batch's outputs are acknowledged (a crash
        before this repeats the batch, and the join decides the same again)."""
        await member.write_changelog(self.awaiting, join.store_changes, "writing the awaiting-click changelog")
        if join.unknown:
            self._count_unknown(join.unknown)
            log.warning("%d conversions refused (unknown_click): no click within the grace period", join.unknown)

    async def recheck_periodically(self, member: GroupMember, handle: Callable[[Batch], Awaitable[None]]) -> None:
        """Look for the waiting conversions' clicks when no batch comes: `handle` (the worker's batch
        handler) with a batch of nothing, under the member's lock like any batch."""
        while True:
            await asyncio.sleep(CLICK_RECHECK_SECONDS)
            async with member.lock:
                if self.awaiting.partitions:
                    await handle({})

    async def sweep_periodically(self, member: GroupMember, interval_seconds: float) -> None:
        """Every `interval_seconds`, sweep each owned partition's old clicks, one slice per hold of the lock."""
        while True:
            await asyncio.sleep(interval_seconds)
            for partition in sorted(self.clicks.partitions):
                steps, swept = self.sweep_clicks(partition, time.time()), 0
                while True:
                    async with member.lock:  # one slice at a time: batches run in between
                        deleted = next(steps, None)
                    if deleted is None:
                        break
                    swept += deleted
                if swept:
                    log.info("click sweep deleted %d clicks of partition %d", swept, partition)

    def sweep_clicks(self, partition: int, now_unix: float) -> Iterator[int]:
        """One partition's sweep, in slices (see ClickStore.sweep); the worker runs it at
        FIRED_STATE_SWEEP_INTERVAL, taking the member's lock for one slice at a time."""
        return self.clicks.sweep(partition, now_unix, self.config.attribution_window_seconds)
