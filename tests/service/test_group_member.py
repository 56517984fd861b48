"""The consumer-group member shell: restore before use (and /readyz meanwhile), owned partitions only,
commits after the handler's outputs, revocation in order. No broker: the consumer and stores are fakes."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError
from prometheus_client import CollectorRegistry

from service import group_member
from service.consumer_health import ConsumerLag, KafkaHealth
from service.group_member import GroupMember
from service.ops_http import Liveness, Readiness, add_ops_routes
from service.settings import load_settings

P0 = TopicPartition("conversions", 0)
P1 = TopicPartition("conversions", 1)
R0 = TopicPartition("campaign-rules", 0)
CHECKS = ("kafka", "consumer", "state")


@dataclass
class Record:
    offset: int
    key: bytes | None = None
    value: bytes | None = None


class Events:
    """What happened, in order, across the fakes."""

    def __init__(self) -> None:
        self.items: list[tuple[str, Any]] = []

    def add(self, what: str, detail: Any = None) -> None:
        self.items.append((what, detail))

    def names(self) -> list[str]:
        return [name for name, _ in self.items]


class FakeStore:
    changelog_topic = "app-changelog"

    def __init__(self, events: Events) -> None:
        self.events = events
        self.partitions: set[int] = set()
        self.restore_started = asyncio.Event()
        self.release_restore = asyncio.Event()
        self.release_restore.set()
        self.fail_restore = False
        self.fail_times = 0  # the next assign calls that fail before one succeeds
        self.failures = 0
        self.failed = asyncio.Event()
        self.applied: list[tuple[int, bytes, bytes | None, int]] = []

    async def assign(self, partitions: set[int]) -> None:
        self.restore_started.set()
        await self.release_restore.wait()
        if self.fail_restore or self.fail_times > 0:
            self.fail_times -= 1
            self.failures += 1
            self.failed.set()
            raise ConnectionError("broker went away")
        self.partitions |= partitions
        self.events.add("restored", sorted(partitions))

    def revoke(self, partitions: set[int]) -> None:
        self.partitions -= partitions
        self.events.add("released", sorted(partitions))

    def close(self) -> None:
        self.events.add("closed")

    def apply(self, partition: int, key: bytes, value: bytes | None, changelog_offset: int) -> None:
        self.applied.append((partition, key, value, changelog_offset))


class FakeConsumer:
    def __init__(self, events: Events, fail_with: BaseException | None = None) -> None:
        self.events = events
        self.fail_with = fail_with

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        self.events.add("commit", dict(offsets))
        if self.fail_with is not None:
            raise self.fail_with


class FakeProducer:
    """send() returns a future per record, acknowledged at consecutive offsets from 100."""

    def __init__(self, events: Events) -> None:
        self.events = events
        self.next_offset = 100

    async def send(
        self, topic: str, value: bytes | None, key: bytes | None = None, partition: int | None = None
    ) -> Any:
        self.events.add("send", (topic, key, value, partition))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.set_result(type("Metadata", (), {"offset": self.next_offset})())
        self.next_offset += 1
        return future


class FakeApp:
    def __init__(self, events: Events, member: GroupMember | None = None) -> None:
        self.events = events
        self.member = member
        self.fail_handle = False

    async def prepare(self) -> None:
        self.events.add("prepare")

    async def handle(self, batch: Mapping[TopicPartition, list[Any]]) -> None:
        self.events.add("handle", {tp: [r.offset for r in records] for tp, records in batch.items()})
        if self.fail_handle:
            raise RuntimeError("bug")

    async def assigned(self, partitions: set[TopicPartition]) -> None:
        self.events.add("assigned", partitions)

    async def revoked(self, partitions: set[TopicPartition]) -> None:
        self.events.add("revoked", partitions)

    async def close(self) -> None:
        self.events.add("app closed")


class Harness:
    def __init__(self) -> None:
        self.events = Events()
        registry = CollectorRegistry()
        self.readiness = Readiness(registry, CHECKS)
        self.readiness.set("kafka", True)
        self.readiness.set("consumer", True)
        self.store = FakeStore(self.events)
        self.app = FakeApp(self.events)
        self.member = GroupMember(
            self.app,
            load_settings({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "STATE_STORE": "memory://"}),
            group_id="app",
            topics=["conversions", "campaign-rules"],
            stores={"conversions": self.store},
            readiness=self.readiness,
            consumer_check="consumer",
            restore_check="state",
            kafka_health=KafkaHealth(registry, self.readiness),
            lag=ConsumerLag(registry),
            max_records=100,
        )
        self.consumer = FakeConsumer(self.events)
        self.member.consumer = self.consumer  # type: ignore[assignment]
        self.member.producer = FakeProducer(self.events)  # type: ignore[assignment]


async def test_nothing_to_restore_is_ready() -> None:
    h = Harness()
    assert h.member.restoring is False
    assert h.readiness.ready


async def test_readyz_fails_from_the_assignment_until_the_partitions_are_restored() -> None:
    h = Harness()
    h.store.release_restore.clear()
    assignment = asyncio.create_task(h.member.on_assigned({P0, P1, R0}))
    await h.store.restore_started.wait()
    assert h.member.restoring is True
    assert h.readiness.checks()["state"] is False
    assert not h.readiness.ready
    h.store.release_restore.set()
    await assignment
    assert h.member.restoring is False
    assert h.readiness.ready
    # the stores restore first (only their topic's partitions), then the application hears of it
    assert h.events.items == [("restored", [0, 1]), ("assigned", {P0, P1, R0})]


async def test_readyz_fails_while_a_batch_holds_the_lock_at_the_assignment() -> None:
    h = Harness()
    async with h.member.lock:  # a batch (or the worker's sweep) in progress
        assignment = asyncio.create_task(h.member.on_assigned({P0}))
        await asyncio.sleep(0)
        assert not h.readiness.ready
    await assignment
    assert h.readiness.ready


async def test_a_failed_restore_stays_not_ready_and_its_partitions_are_neither_handled_nor_committed() -> None:
    h = Harness()
    h.store.fail_restore = True
    assignment = asyncio.create_task(h.member.on_assigned({P0}))
    await h.store.failed.wait()  # retried until it succeeds, or until a stop, which gives up
    h.member.stop()
    with pytest.raises(ConnectionError):  # aiokafka logs what its rebalance listener raises
        await assignment
    assert h.readiness.checks()["state"] is False
    await h.member.handle_fetched({P0: [Record(5)]})
    assert h.events.names() == []  # no handle, no commit: the records are read again after the next assignment


async def test_a_batch_goes_to_the_handler_with_owned_partitions_only_then_is_committed() -> None:
    h = Harness()
    await h.member.on_assigned({P0, R0})
    h.events.items.clear()
    await h.member.handle_fetched({P0: [Record(3), Record(4)], P1: [Record(9)], R0: [Record(0)]})
    assert h.events.items == [
        ("handle", {P0: [3, 4], R0: [0]}),  # P1 is not ours (revoked since the fetch): its owner reads it
        ("commit", {P0: 5, R0: 1}),
    ]


async def test_a_handler_that_raises_commits_nothing() -> None:
    h = Harness()
    await h.member.on_assigned({P0})
    h.app.fail_handle = True
    with pytest.raises(RuntimeError):
        await h.member.handle_fetched({P0: [Record(3)]})
    assert "commit" not in h.events.names()


async def test_revocation_runs_the_hook_then_commits_then_releases_the_stores() -> None:
    h = Harness()
    await h.member.on_assigned({P0, P1})
    h.events.items.clear()
    h.member._processed[P0] = 8  # handled, its commit not done yet (the loop commits after releasing the lock)
    await h.member.on_revoked({P0, P1})
    assert h.events.items == [("revoked", {P0, P1}), ("commit", {P0: 8}), ("released", [0, 1])]
    await h.member.handle_fetched({P0: [Record(8)]})  # fetched before the revocation: no longer ours
    assert len(h.events.items) == 3


async def test_a_commit_refused_after_a_rebalance_is_dropped_not_raised() -> None:
    h = Harness()
    h.consumer.fail_with = CommitFailedError("rebalanced")
    await h.member.on_assigned({P0})
    await h.member.handle_fetched({P0: [Record(1)]})
    await h.member.handle_fetched({P0: [Record(2)]})
    commits = [detail for name, detail in h.events.items if name == "commit"]
    assert commits == [{P0: 2}, {P0: 3}]  # each tried once; the new owner reads from the last commit


async def test_write_changelog_applies_each_change_after_its_acknowledgement_at_its_offset() -> None:
    h = Harness()
    await h.member.write_changelog(h.store, [(0, b"a", b"1"), (3, b"b", None)], "writing")
    assert [d for n, d in h.events.items if n == "send"] == [
        ("app-changelog", b"a", b"1", 0),
        ("app-changelog", b"b", None, 3),
    ]
    assert h.store.applied == [(0, b"a", b"1", 100), (3, b"b", None, 101)]
    await h.member.write_changelog(h.store, [], "writing nothing")
    assert len(h.store.applied) == 2


async def test_a_failed_restore_is_retried_with_backoff_then_its_partition_is_handled(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(group_member, "RESTORE_RETRY_INITIAL_SECONDS", 0.01, raising=False)
    h = Harness()
    h.store.fail_times = 2
    assignment = asyncio.create_task(h.member.on_assigned({P0}))
    await h.store.failed.wait()
    # not ready meanwhile, and /readyz says why
    assert h.readiness.checks()["state"] is False
    reason = h.readiness.reasons()["state"]
    assert "app-changelog partitions [0]" in reason and "ConnectionError: broker went away" in reason, reason
    assert "retrying in" in reason
    # records fetched meanwhile wait for the restore (the partition is not processed before it)
    fetched = asyncio.create_task(h.member.handle_fetched({P0: [Record(5), Record(6)]}))
    await assignment
    await fetched
    assert h.store.failures == 2
    assert h.readiness.ready and h.readiness.reasons() == {}
    assert h.events.items == [
        ("restored", [0]),
        ("assigned", {P0}),
        ("handle", {P0: [5, 6]}),
        ("commit", {P0: 7}),
    ]
    delays = [r.getMessage().rsplit("retrying in ", 1)[1] for r in caplog.records if "retrying in" in r.getMessage()]
    assert delays == ["0.01s", "0.02s"], "the delay doubles"


async def test_a_loop_with_work_that_completes_no_batch_fails_healthz_after_the_stall_timeout() -> None:
    """A batch retried forever (here: a handler that never returns) fails /healthz once STALL_TIMEOUT is over;
    an idle loop and one completing its batches do not."""
    h = Harness()
    liveness = Liveness(stall_timeout_seconds=0.2)
    h.member._liveness = liveness
    app = web.Application()
    add_ops_routes(app, CollectorRegistry(), h.readiness, liveness)
    await h.member.on_assigned({P0})
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        assert (await client.get("/healthz")).status == 200  # idle
        await h.member.handle_fetched({P0: [Record(1)]})
        assert (await client.get("/healthz")).status == 200  # a batch completed
        release = asyncio.Event()

        async def stuck(batch: Mapping[TopicPartition, list[Any]]) -> None:
            await release.wait()

        h.app.handle = stuck  # type: ignore[method-assign]
        batch = asyncio.create_task(h.member.handle_fetched({P0: [Record(2)]}))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while (response := await client.get("/healthz")).status == 200:
            assert loop.time() < deadline, "/healthz never failed"
            await asyncio.sleep(0.02)
        assert response.status == 503
        body = await response.json()
        assert body["status"] == "stalled"
        assert "consumer has had work for" in body["reason"] and "STALL_TIMEOUT=0.2s" in body["reason"]
        assert set(body["stalled"]) == {"consumer"}
        release.set()
        await batch
        assert (await client.get("/healthz")).status == 200


class FakeCoordinator:
    """aiokafka's group coordinator as the member heartbeats through it during a restore: each heartbeat
    answers the next scripted result (True: accepted), then True."""

    def __init__(self, answers: list[bool]) -> None:
        self.generation = 7
        self._rejoin_needed_fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.answers = list(answers)
        self.heartbeats = 0
        self.beaten = asyncio.Event()

    async def _do_heartbeat(self) -> bool:
        self.heartbeats += 1
        self.beaten.set()
        return self.answers.pop(0) if self.answers else True


def heartbeating_harness(answers: list[bool]) -> tuple[Harness, FakeCoordinator]:
    h = Harness()
    h.member._settings = load_settings(
        {
            "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
            "STATE_STORE": "memory://",
            "KAFKA_SESSION_TIMEOUT": "100ms",
            "KAFKA_HEARTBEAT_INTERVAL": "10ms",
        }
    )
    coordinator = FakeCoordinator(answers)
    h.consumer._coordinator = coordinator  # type: ignore[attr-defined]
    return h, coordinator


async def test_the_member_heartbeats_while_it_restores_inside_the_assignment_callback() -> None:
    """aiokafka sends no heartbeat until its assignment callback returns: a restore longer than the session
    timeout got the member removed from the group while it went on to deliver what the new owner delivered
    too (two results records per postback in the chaos run)."""
    h, coordinator = heartbeating_harness([])
    h.store.release_restore.clear()
    assignment = asyncio.create_task(h.member.on_assigned({P0}))
    await h.store.restore_started.wait()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while coordinator.heartbeats < 3:
        assert loop.time() < deadline, "no heartbeat during the restore"
        await asyncio.sleep(0.01)
    h.store.release_restore.set()
    await assignment
    assert h.events.items == [("restored", [0]), ("assigned", {P0})]
    running = [t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("restore-heartbeat")]
    assert running == [], "the member's heartbeats end with the restore (aiokafka's take over)"


@pytest.mark.parametrize("why", ["removed", "rebalancing"])
async def test_a_member_removed_or_rebalanced_during_its_restore_does_not_take_the_partitions_up(why: str) -> None:
    # removed: UnknownMemberId, a heartbeat refused (aiokafka resets the generation)
    h, coordinator = heartbeating_harness([False] if why == "removed" else [])
    h.store.release_restore.clear()
    assignment = asyncio.create_task(h.member.on_assigned({P0}))
    await coordinator.beaten.wait()
    if why == "rebalancing":  # RebalanceInProgress: accepted, and aiokafka asks for a rejoin
        coordinator._rejoin_needed_fut.set_result(None)
        coordinator.beaten.clear()
        await coordinator.beaten.wait()
    h.store.release_restore.set()
    await assignment
    assert h.events.items == [("restored", [0])], "the application never hears of them"
    assert h.readiness.ready
    await h.member.handle_fetched({P0: [Record(3)]})
    await h.member.on_revoked({P0})  # the rebalance it rejoins: the store lets the partition go
    assert h.events.items == [("restored", [0]), ("revoked", set()), ("released", [0])]
