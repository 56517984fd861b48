"""One member of a Kafka consumer group: the shell the worker and each dispatcher run their own work in.

The member owns the consumer and the producer, the subscription, rebalances, the fetch loop and the
commits; the application (streams/worker.py, dispatchers/dispatcher.py) keeps what is its own, in
the hooks of GroupApplication. One step at a time holds the member's `lock`: a batch, a rebalance,
whatever else the application runs under it (the worker's fired-state sweep).

- **Assignment:** the changelog stores restore the newly assigned partitions (the `restore_check`
  of /readyz fails from the moment the partitions are assigned until they are restored: `restoring`),
  then `assigned` runs. Nothing fetched from a partition is handled before that. A restore that
  fails is retried with backoff (RESTORE_RETRY_*), /readyz giving the error meanwhile, until it
  succeeds or the member stops: aiokafka only logs what a rebalance callback raises, and the
  partitions' records would be skipped until the next rebalance. aiokafka sends no heartbeat until
  its assignment callback returns, so the member heartbeats itself while it restores: a restore
  longer than the session timeout got the member removed from the group while it went on to deliver
  what the partitions' new owner delivered too (two results records per postback in the chaos run).
  A member that learns meanwhile that it is no longer in that generation of the group (removed, or a
  rebalance under way) does not take the partitions up: the rebalance it rejoins assigns them again.
- **Batches:** whatever the consumer has fetched (up to `max_records`) goes to `handle`, with only
  the partitions this member owns: one revoked since the fetch is left to its new owner. From the
  moment a batch of owned partitions is fetched until it is committed the loop is busy for
  `liveness` (/healthz fails once that lasts longer than STALL_TIMEOUT). `handle`
  writes through `send` and `write_changelog`, which return once every record is acknowledged; the
  batch's offsets are committed only after `handle` returns, so a crash repeats the batch instead
  of losing its outputs.
- **Back-pressure:** before each fetch the member asks the application whether to fetch at all
  (`fetch_paused`); while it says no, every assigned partition is paused (aiokafka `pause`), those
  assigned meanwhile too, and the loop keeps polling (heartbeats, rebalances) without records. A
  paused partition's records already fetched are dropped by aiokafka and fetched again from the same
  position once it is resumed: nothing is lost, skipped or re-ordered.
- **Writes** (`send`, `write_changelog`): retried until Kafka acknowledges every record, each record
  sent again only while it is not acknowledged (kafka_io.OutgoingRecords). A record Kafka can never
  take (too large, kafka_io.UNWRITABLE_ERRORS) is not retried: it is logged, counted
  (`postback_kafka_unwritable_records_total`) and replaced by what the caller's `shrink` makes of it
  (a bounded record), or given up (its offset None), and the batch goes on.
- **Revocation:** `revoked` runs (the dispatcher writes back what is pending), then what was handled
  is committed, then the stores release the partitions. A stop does the same for every partition
  it owns, then leaves the group. Partitions assigned once a stop has begun are not taken up (not
  restored, `assigned` not run): they are the next owner's.
- **A stop is bounded**, Kafka reachable or not: writes still retrying STOP_WRITE_GRACE_SECONDS after
  the stop are abandoned (kafka_io.WriteAbandoned; their input is not committed, so the next owner does
  that work again), and the last commit, leaving the group and flushing the producer each get at most
  STOP_STEP_TIMEOUT_SECONDS.

A commit refused because the group rebalanced meanwhile is logged and dropped: the partitions' new
owner reads those records again from the last commit, and the changelog stores make the repeat harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping, Sequence
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from service.consumer_health import ConsumerLag, KafkaHealth
from service.kafka_io import OnUnwritable, Outgoing, OutgoingRecords, WriteAbandoned, unless_given_up, until_done
from service.ops_http import Liveness, Readiness
from service.settings import Settings

log = logging.getLogger(__name__)

# How long one fetch waits for records when there are none: bounds how fast a stop is noticed.
FETCH_TIMEOUT_MS = 200
# A stop lets Kafka writes retry this long (a dispatcher's drain and write-back fit well inside it), then
# abandons them; each later Kafka step of the stop gets STOP_STEP_TIMEOUT_SECONDS. With the drain
# (dispatchers/dispatcher.py DRAIN_SECONDS) a stop ends within about 25 s even when Kafka is unreachable,
# inside the 30 s a Kubernetes pod gets (deploy/kubernetes, terminationGracePeriodSeconds).
STOP_WRITE_GRACE_SECONDS = 10.0
STOP_STEP_TIMEOUT_SECONDS = 3.0
# A failed restore of assigned partitions is tried again after this long, doubling up to the maximum.
RESTORE_RETRY_INITIAL_SECONDS = 1.0
RESTORE_RETRY_MAX_SECONDS = 30.0

Batch = Mapping[TopicPartition, list[Any]]  # aiokafka ConsumerRecords by partition, each list non-empty


class GroupApplication(Protocol):
    async def prepare(self) -> None:
        """After the producer has started, before joining the group."""

    async def handle(self, batch: Batch) -> None:
        """A fetched batch of owned partitions; its offsets are committed once this returns."""

    async def assigned(self, partitions: set[TopicPartition]) -> None:
        """Partitions assigned, their stores restored."""

    async def revoked(self, partitions: set[TopicPartition]) -> None:
        """Partitions about to be committed and released (at a stop: every owned one)."""

    async def close(self) -> None:
        """After leaving the group, before the producer stops."""


class PartitionStore(Protocol):
    """State kept per owned partition of an input topic (service/changelog_store.py)."""

    changelog_topic: str

    async def assign(self, partitions: set[int]) -> None: ...
    def revoke(self, partitions: set[int]) -> None: ...
    def close(self) -> None: ...
    def apply(self, partition: int, key: bytes, value: bytes | None, changelog_offset: int) -> None: ...


class GroupMember:
    def __init__(
        self,
        app: GroupApplication,
        settings: Settings,
        *,
        group_id: str,
        topics: Sequence[str],
        stores: Mapping[str, PartitionStore],
        readiness: Readiness,
        consumer_check: str,
        restore_check: str,
        kafka_health: KafkaHealth,
        lag: ConsumerLag,
        max_records: int,
        liveness: Liveness | None = None,
        fetch_paused: Callable[[], bool] | None = None,
    ) -> None:
        """`stores`: input topic -> the store that keeps its partitions' state. `readiness` has the checks
        `kafka`, `consumer_check` (in the group) and `restore_check` (no assigned partition being restored).
        `liveness`: where the batch loop reports its work, as the loop `consumer_check`.
        `fetch_paused`: asked before each fetch; True stops fetching (back-pressure) until it says False."""
        self._app = app
        self._settings = settings
        self.group_id = group_id
        self._topics = list(topics)
        self._stores = dict(stores)
        self._readiness = readiness
        self._consumer_check = consumer_check
        self._restore_check = restore_check
        self.kafka_health = kafka_health
        self._lag = lag
        self._max_records = max_records
        self._liveness = liveness
        self._fetch_paused = fetch_paused
        self.paused = False  # fetching stopped at the application's request (`fetch_paused`)
        self.lock = asyncio.Lock()
        self.producer: AIOKafkaProducer | None = None
        self.consumer: AIOKafkaConsumer | None = None
        self.restoring = False
        self._set_restoring(False)  # nothing to restore until partitions are assigned
        self._owned: set[TopicPartition] = set()  # assigned and restored
        self._processed: dict[TopicPartition, int] = {}  # next offset to commit, per partition
        self._stopping = asyncio.Event()
        # done STOP_WRITE_GRACE_SECONDS after a stop: the writes still retrying then are abandoned
        self._give_up: asyncio.Future[None] | None = None

    def stop(self) -> None:
        """Stop: the loop ends, owned partitions are revoked and committed, the group is left. Bounded (see above)."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        asyncio.get_running_loop().call_later(STOP_WRITE_GRACE_SECONDS, self._abandon_writes)

    def _abandon_writes(self) -> None:
        give_up = self.writes_given_up()
        if not give_up.done():
            give_up.set_result(None)

    def writes_given_up(self) -> asyncio.Future[None]:
        """Done once a stop's grace is over: Kafka work still retrying then gives up (kafka_io.until_done)."""
        if self._give_up is None:
            self._give_up = asyncio.get_running_loop().create_future()
        return self._give_up

    async def run(self, background: Sequence[tuple[str, Callable[[], Coroutine[Any, Any, None]]]] = ()) -> None:
        """Join the group and handle batches until `stop()`; `background`: (task name, coroutine) run meanwhile."""
        settings = self._settings
        self.producer = AIOKafkaProducer(**settings.kafka.client_kwargs(), acks="all", linger_ms=1)
        await self.producer.start()
        self._readiness.set("kafka", True)
        tasks: list[asyncio.Task[None]] = []
        try:
            await self._app.prepare()
            self.consumer = AIOKafkaConsumer(
                **settings.kafka.client_kwargs(),
                group_id=self.group_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                session_timeout_ms=int(settings.session_timeout_seconds * 1000),
                heartbeat_interval_ms=int(settings.heartbeat_interval_seconds * 1000),
                max_poll_interval_ms=300_000,
                isolation_level="read_committed",
            )
            self.consumer.subscribe(self._topics, listener=_Rebalance(self))
            await self.consumer.start()
            self._readiness.set(self._consumer_check, True)
            tasks = [
                asyncio.create_task(self._lag.run(self.consumer), name=f"consumer-lag:{self.group_id}"),
                asyncio.create_task(
                    self.kafka_health.probe_forever(self.producer.client), name=f"kafka-probe:{self.group_id}"
                ),
                *(asyncio.create_task(work(), name=name) for name, work in background),
            ]
            while not self._stopping.is_set():
                self._apply_back_pressure()
                fetched = await self.consumer.getmany(timeout_ms=FETCH_TIMEOUT_MS, max_records=self._max_records)
                if fetched:
                    await self.handle_fetched(fetched)
        except WriteAbandoned as exc:  # only ever at a stop: the batch stays uncommitted for the next owner
            log.warning("stopping without Kafka: %s", exc)
        finally:
            self.stop()  # however the loop ended: what follows is bounded
            self._readiness.set(self._consumer_check, False)
            for task in tasks:
                task.cancel()
            if self.consumer is not None:
                async with self.lock:
                    try:
                        await self._app.revoked(set(self._owned))
                    except WriteAbandoned as exc:
                        log.warning("stopping without Kafka: %s; the next owner resumes from the changelog", exc)
                    await self._commit()
                # leaves the group: the partitions move at once
                await _bounded(self.consumer.stop(), "leaving the consumer group")
            for store in self._stores.values():
                store.close()
            await self._app.close()
            await _bounded(self.producer.stop(), "flushing the producer")

    def _apply_back_pressure(self) -> None:
        """Pause every assigned partition while the application asks for it (`fetch_paused`), resume them
        when it no longer does. Checked before each fetch, so a batch that fills the application up is
        the last one it gets."""
        consumer = self.consumer
        if self._fetch_paused is None or consumer is None:
            return
        self.paused = self._fetch_paused()
        if self.paused:
            unpaused = consumer.assignment() - consumer.paused()
            if unpaused:
                consumer.pause(*unpaused)
        else:
            paused = consumer.paused()
            if paused:
                consumer.resume(*paused)

    async def handle_fetched(self, fetched: Batch) -> None:
        liveness = self._liveness
        if liveness is not None and any(records and tp in self._owned for tp, records in fetched.items()):
            liveness.busy(self._consumer_check)  # work to do: a stall from here on fails /healthz
        async with self.lock:
            # a partition revoked (or not restored) since the fetch is not ours: its owner reads it again
            batch = {tp: records for tp, records in fetched.items() if records and tp in self._owned}
            if batch:
                await self._app.handle(batch)
                for tp, records in batch.items():
                    self._processed[tp] = records[-1].offset + 1
        await self._commit()
        if liveness is not None:
            liveness.done(self._consumer_check)

    async def send(
        self, records: Sequence[Outgoing], what: str, shrink: OnUnwritable | None = None
    ) -> list[int | None]:
        """Produce every record without awaiting each, then await all the acknowledgements, retried until
        Kafka takes them (kafka_io.until_done: `what` names the retries), a record only until it is
        acknowledged; their offsets. A record Kafka can never take is replaced by `shrink(record, error)`
        (once), or given up when that is None: its offset is None. WriteAbandoned at a stop (see above)."""
        producer = self.producer
        assert producer is not None

        def unwritable(record: Outgoing, error: BaseException) -> Outgoing | None:
            replacement = shrink(record, error) if shrink is not None else None
            topic, key, value, _ = record
            self.kafka_health.unwritable(topic)
            log.error(
                "%s: a record of %d bytes for %s can never be written (%s: %s); %s",
                what,
                len(key or b"") + len(value or b""),
                topic,
                type(error).__name__,
                error,
                "a bounded one is written instead" if replacement is not None else "it is given up",
            )
            return replacement

        outgoing = OutgoingRecords(producer, records, unwritable)
        return list(await until_done(outgoing.send_missing, what, self.kafka_health, give_up=self.writes_given_up()))

    async def write_changelog(
        self,
        store: PartitionStore,
        changes: Sequence[tuple[int, bytes, bytes | None]],
        what: str,
        shrink: OnUnwritable | None = None,
    ) -> list[tuple[int, bytes, bytes | None]]:
        """Write (partition, key, value; None deletes) to the store's changelog, then, acknowledged, to the store.

        Returns the changes Kafka could never take (see `send`; `shrink` as there): not in the store either.
        """
        if not changes:
            return []
        offsets = await self.send(
            [(store.changelog_topic, key, value, p) for p, key, value in changes], what, shrink=shrink
        )
        unwritten = []
        for (partition, key, value), offset in zip(changes, offsets, strict=True):
            if offset is None:
                unwritten.append((partition, key, value))
            else:
                store.apply(partition, key, value, offset)
        return unwritten

    async def _commit(self) -> None:
        if not self._processed or self.consumer is None:
            return
        offsets, self._processed = self._processed, {}
        try:
            await unless_given_up(self.consumer.commit(offsets), self.writes_given_up(), "committing")
        except (CommitFailedError, IllegalStateError) as exc:
            log.warning("commit after a rebalance failed (%s); the new owner reads those records again", exc)
        except WriteAbandoned:
            log.warning("commit abandoned at a stop; the new owner reads those records again")

    def _set_restoring(self, restoring: bool, reason: str | None = None) -> None:
        self.restoring = restoring
        self._readiness.set(self._restore_check, not restoring, reason)

    def _partitions_by_store(self, tps: set[TopicPartition]) -> Iterator[tuple[PartitionStore, set[int]]]:
        for topic, store in self._stores.items():
            yield store, {tp.partition for tp in tps if tp.topic == topic}

    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        if self.paused and self.consumer is not None:
            self.consumer.pause(*assigned)  # fetching is still paused: partitions assigned now wait too
        # Not ready from now on, before the lock is ours (a batch or a sweep may hold it): the restore
        # is what /readyz waits for. A restore that fails is retried, not ready and the partitions unowned
        # meanwhile; a stop gives up (the error is raised) and leaves them unowned.
        # A stop under way (a SIGTERM landing in a rebalance) takes up nothing more: its revocation of
        # what it owns may already be done, so whatever the application started on these partitions
        # (the dispatcher: resumed deliveries) would run on with nobody to write it back.
        if self._stopping.is_set():
            log.info("partitions %s assigned while stopping: left to the next owner", _describe(assigned))
            return
        self._set_restoring(True, f"restoring partitions {_describe(assigned)}")
        async with self.lock:
            if self._stopping.is_set():  # the stop's revocation held the lock meanwhile
                log.info("partitions %s assigned while stopping: left to the next owner", _describe(assigned))
                self._set_restoring(False)
                return
            async with self._heartbeating() as still_member:
                await self._restore(assigned)
            if not still_member():
                log.warning(
                    "partitions %s restored, but the group rebalanced meanwhile: left to the next assignment",
                    _describe(assigned),
                )
                self._set_restoring(False)
                return
            self._owned |= assigned
            await self._app.assigned(assigned)
            self._apply_back_pressure()  # what `assigned` resumed (pending work of these partitions) counts too
        self._set_restoring(False)

    @contextlib.asynccontextmanager
    async def _heartbeating(self) -> AsyncIterator[Callable[[], bool]]:
        """Heartbeat every HEARTBEAT_INTERVAL while the body runs (inside aiokafka's assignment callback, where
        aiokafka does not); yields `still_member()`: False once a heartbeat was refused (the member was
        removed from the group, or the group is rebalancing), so the assignment is no longer this member's."""
        coordinator = getattr(self.consumer, "_coordinator", None)  # aiokafka's; the unit tests' fakes have none
        refused = False

        async def beat() -> None:
            nonlocal refused
            assert coordinator is not None
            generation = coordinator.generation
            while True:
                await asyncio.sleep(self._settings.heartbeat_interval_seconds)
                try:
                    # aiokafka's own heartbeat request; a refusal also makes it reset or rejoin as usual
                    ok = await coordinator._do_heartbeat()
                except KafkaError as exc:
                    log.warning("heartbeat during the restore failed (%s: %s)", type(exc).__name__, exc)
                    continue
                if not ok or coordinator.generation != generation or coordinator._rejoin_needed_fut.done():
                    refused = True
                    return

        task = asyncio.create_task(beat(), name=f"restore-heartbeat:{self.group_id}") if coordinator else None
        try:
            yield lambda: not refused
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _restore(self, assigned: set[TopicPartition]) -> None:
        """Each store restores its newly assigned partitions, retried with backoff until it succeeds or a stop."""
        delay = RESTORE_RETRY_INITIAL_SECONDS
        what = f"partitions {_describe(assigned)}"
        while True:
            try:
                for store, partitions in self._partitions_by_store(assigned):
                    what = f"{store.changelog_topic} partitions {sorted(partitions)}"
                    await store.assign(partitions)  # partitions restored before are skipped on a retry
                return
            except Exception as exc:
                if self._stopping.is_set():
                    raise
                reason = f"restoring {what} failed ({type(exc).__name__}: {exc}); retrying in {delay:g}s"
                log.warning("%s", reason, exc_info=True)
                self._set_restoring(True, reason)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
                if self._stopping.is_set():
                    raise
                delay = min(delay * 2, RESTORE_RETRY_MAX_SECONDS)

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        async with self.lock:
            await self._app.revoked(revoked & self._owned)  # not those restored but never taken up
            await self._commit()
            for store, partitions in self._partitions_by_store(revoked):
                store.revoke(partitions)
            self._owned -= revoked


async def _bounded(step: Coroutine[Any, Any, None], what: str) -> None:
    """One Kafka step of a stop, given at most STOP_STEP_TIMEOUT_SECONDS: Kafka may be unreachable."""
    try:
        await asyncio.wait_for(step, STOP_STEP_TIMEOUT_SECONDS)
    except TimeoutError:
        log.warning("%s did not end within %.0fs; going on with the stop", what, STOP_STEP_TIMEOUT_SECONDS)
    except Exception as exc:  # aiokafka re-raises what its background tasks met (Kafka unreachable)
        log.warning("%s failed (%s: %s); going on with the stop", what, type(exc).__name__, exc)
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise  # this stop itself is cancelled
        # aiokafka's consumer.stop() re-raises the cancellation of its own fetch task
        log.warning("%s was cut short; going on with the stop", what)


def _describe(tps: set[TopicPartition]) -> str:
    by_topic: dict[str, list[int]] = {}
    for tp in tps:
        by_topic.setdefault(tp.topic, []).append(tp.partition)
    return ", ".join(f"{topic} {sorted(partitions)}" for topic, partitions in sorted(by_topic.items()))


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, member: GroupMember) -> None:
        self._member = member

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._member.on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._member.on_assigned(set(assigned))
