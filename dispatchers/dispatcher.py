"""`postback-router dispatch --kind <kind>|all`: consume matched postbacks, deliver each once, report it.

One Dispatcher per kind, each an application of the consumer-group member shell
(service/group_member.py) in its own group on `postbacks.<kind>`: the member restores the delivery
state of assigned partitions, fetches, and commits a batch's offsets once its states are
acknowledged. S2S postbacks go through DeliveryScheduler (one request each), ad-platform ones
through BatchDeliveryScheduler (batched per account or pixel). Per consumed batch: a postback_id
that already has a delivery state is skipped (dedupe across restarts); the others get a `pending`
state, written to the state changelog and acknowledged before the input offsets are committed, and
go to the scheduler. When a postback ends, its state becomes `decided` (acknowledged) before its
record goes to `postbacks.results` (and `postbacks.dead-letter` unless delivered), then `final`
(dispatchers/adapters/outcome_reports.py, which on assignment also finishes what a previous owner
left `decided`). The records are built in dispatchers/core/delivery_records.py. A postback whose
`pending` state is too large for the changelog is rejected at once (`postback_too_large`).

A record carrying a `replay` object is a replay request (dispatchers/core/replay.py, docs/replay.md): it
starts a new delivery cycle of a postback final as rejected or dead_lettered (its `pending` state with the
attempts so far and the replay number, then reported like any postback, its records marked with that
number); a delivered postback is never replayed, a request read twice starts one cycle, one not final is
ignored.

On a rebalance or a stop the scheduler is drained: attempts in flight finish (or are cut after
DRAIN_SECONDS) and what is still pending is written back with its attempts; whoever owns the
partition next resumes it from the changelog. A crash repeats at most the attempts that were in
flight (an answer received counts as in flight until its `decided` state is acknowledged): for S2S,
which has no dedup key, that is the one window where a destination can see a postback twice.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Protocol

import orjson
from aiokafka import TopicPartition
from prometheus_client import CollectorRegistry

from dispatchers.adapters.destination_limits import circuit_breakers, concurrency_limits, rate_limiters
from dispatchers.adapters.http_transport import AiohttpTransport
from dispatchers.adapters.metrics import (
    ApiVersionSunsetGauge,
    DispatcherGauges,
    DispatcherMetrics,
    MeteredTransport,
    bounded_reason,
)
from dispatchers.adapters.outcome_reports import OutcomeReports
from dispatchers.adapters.platform_credentials import PlatformCredentials
from dispatchers.adapters.secrets import SecretStore
from dispatchers.core.circuit_breaker import BreakerState
from dispatchers.core.delivery_records import (
    decode_postback,
    pending_state,
    undecodable_record,
    unkeepable_outcome,
    utc_iso,
)
from dispatchers.core.delivery_state import FIRST_CYCLE, DeliveryState, ReplayCycle, decode_delivery_state
from dispatchers.core.replay import (
    InvalidReplayRequest,
    ReplayDecision,
    ReplayRequest,
    decide_replay,
    replay_pending_state,
    split_replay_request,
)
from dispatchers.core.retry_policy import RetryPolicy
from dispatchers.engine.batch_scheduler import BatchDeliveryScheduler
from dispatchers.engine.oauth import OAuthTokenCache
from dispatchers.engine.scheduler import DeliveryScheduler
from dispatchers.engine.scheduler_core import FinalOutcome, PendingPostback
from dispatchers.platforms.api_versions import sunset_notice
from service.changelog_store import ChangelogStore, StateStoreMetrics
from service.consumer_health import ConsumerLag, KafkaHealth
from service.diagnostics import dump_tasks
from service.group_member import Batch, GroupMember
from service.kafka_io import Outgoing
from service.ops_http import DEFAULT_STALL_TIMEOUT_SECONDS, Liveness, Readiness, new_registry, ops_server
from service.settings import Settings

log = logging.getLogger(__name__)

# How long a rebalance or stop lets attempts in flight finish before cutting them: long enough for a
# normal request, short enough to stay well inside the consumer group's rebalance timeout.
DRAIN_SECONDS = 5.0
# Records handed over per fetched batch.
MAX_BATCH_RECORDS = 1000


class PostbackScheduler(Protocol):
    def submit(
        self,
        postback: dict[str, Any],
        *,
        attempts: int = 0,
        first_attempt_at: datetime | None = None,
        not_before: datetime | None = None,
        replay: bool = False,
    ) -> None: ...

    async def start(self) -> None: ...

    async def drain(self, timeout: float) -> list[PendingPostback]: ...


class Dispatcher:
    def __init__(self, settings: Settings, kind: str, process: ProcessHealth | None = None) -> None:
        self.kind = kind
        self.process = process or ProcessHealth(new_registry("dispatcher"), [kind], settings.stall_timeout_seconds)
        self.metrics = self.process.metrics
        self.settings = settings
        self.topic = settings.topics.postbacks[self.kind]
        self.group_id = f"{settings.app_id}-dispatch-{self.kind}"
        self.store = ChangelogStore(
            settings.kafka,
            settings.delivery_state_changelog(self.kind),
            "memory" if settings.state_store == "memory://" else "rocksdb",
            Path(settings.state_dir) / self.group_id,
            metrics=self.process.state_metrics,
        )
        self._transport = AiohttpTransport(allow_private_targets=settings.allow_private_targets)
        self._metered = MeteredTransport(self._transport, self.metrics, kind)
        # Shared by the schedulers of successive assignments, so that a rebalance does not reset
        # an open breaker and hammer a failing endpoint again. BREAKER_*, DESTINATION_* settings.
        self._breakers = circuit_breakers(settings)
        self._rate_limits = rate_limiters(settings)
        self._policy = RetryPolicy(
            base_delay_seconds=settings.retry_base_delay_seconds,
            max_delay_seconds=settings.retry_max_delay_seconds,
            max_age_seconds=settings.delivery_max_age_seconds,
        )
        self._credentials = PlatformCredentials(
            SecretStore(), OAuthTokenCache(self._transport), **dict(settings.platform_urls)
        )
        self._scheduler = self._new_scheduler()
        self._partition_of: dict[str, int] = {}  # postback_id -> partition, while not final
        self._cycles: dict[str, ReplayCycle] = {}  # postback_id -> its replay cycle, while not final (replays only)
        self.member = GroupMember(
            self,
            settings,
            group_id=self.group_id,
            topics=[self.topic],
            stores={self.topic: self.store},
            readiness=self.process.readiness,
            consumer_check=f"consumer:{kind}",
            restore_check=f"state:{kind}",
            kafka_health=self.process.kafka_health,
            lag=self.process.lag,
            # A batch never holds more than the back-pressure bound: at most one batch is taken past it.
            max_records=min(MAX_BATCH_RECORDS, settings.dispatch_max_pending),
            liveness=self.process.liveness,
            fetch_paused=self._fetch_paused,
        )
        self._reports = OutcomeReports(
            self.member,
            self.store,
            {"results": settings.topics.results, "dead_letter": settings.topics.dead_letter},
            settings.kafka,
        )

    def _new_scheduler(self) -> PostbackScheduler:
        common: dict[str, Any] = {
            "policy": self._policy,
            "breakers": self._breakers,
            "rate_limits": self._rate_limits,
            "concurrency": concurrency_limits(self.settings),
            "timeout_seconds": self.settings.delivery_timeout_seconds,
            "on_final": self._on_final,
            "on_task_failure": self._task_failed,
        }
        if self.kind == "s2s":
            return DeliveryScheduler(self._metered, **common)
        return BatchDeliveryScheduler(
            self._metered,
            kind=self.kind,
            credentials=self._credentials,
            api_version=self.settings.platform_api_versions.get(self.kind),
            **common,
        )

    def stop(self) -> None:
        self.member.stop()

    def pending_count(self) -> int:
        """Postbacks accepted by this dispatcher and not final yet."""
        return len(self._partition_of)

    def breaker_states(self) -> list[tuple[str, BreakerState]]:
        return list(self._breakers.states().items())

    @property
    def paused(self) -> bool:
        """Not fetching postbacks: back-pressure (`_fetch_paused`)."""
        return self.member.paused

    def _fetch_paused(self) -> bool:
        """Asked by the member before each fetch: stop fetching once DISPATCH_MAX_PENDING postbacks taken
        are not final, fetch again once they are down to DISPATCH_RESUME_PENDING. What is not fetched
        waits in Kafka, not in memory, whatever the backlog of a destination that is down."""
        pending = self.pending_count()
        settings = self.settings
        if self.member.paused:
            paused = pending > settings.dispatch_resume_pending
        else:
            paused = pending >= settings.dispatch_max_pending
        if paused != self.member.paused:
            log.log(
                logging.WARNING if paused else logging.INFO,
                "%s fetching %s: %d postbacks not final (DISPATCH_MAX_PENDING=%d, DISPATCH_RESUME_PENDING=%d)",
                "paused" if paused else "resumed",
                self.topic,
                pending,
                settings.dispatch_max_pending,
                settings.dispatch_resume_pending,
                extra={"kind": self.kind},
            )
        return paused

    def _task_failed(self, task: str) -> None:
        self.metrics.task_failures.labels(self.kind, task).inc()

    async def run(self) -> None:
        try:
            await self.member.run()
        finally:
            log.info("dispatcher stopped")

    async def prepare(self) -> None:
        await self._transport.start()
        log.info("dispatching %s from %s as group %s", self.kind, self.topic, self.group_id)

    async def close(self) -> None:
        await self._transport.close()

    async def handle(self, batch: Batch) -> None:
        now = int(time.time())
        received = utc_iso(datetime.now(UTC))
        accepted: list[tuple[int, DeliveryState]] = []  # (partition, its pending state)
        rejected: list[tuple[bytes | None, dict[str, Any]]] = []
        for tp, records in batch.items():
            for record in records:
                postback = decode_postback(record.value, self.kind)
                request: ReplayRequest | None = None
                if postback is not None:
                    try:
                        postback, request = split_replay_request(postback)
                    except InvalidReplayRequest:
                        self.metrics.replays.labels(self.kind, "invalid").inc()
                        postback = None
                if postback is None:
                    rejected.append(undecodable_record(record.key, record.value, received))
                    continue
                pid = postback["postback_id"]
                if request is not None:
                    state = self._take_replay(tp.partition, postback, request, now, received)
                    if state is not None:
                        self._partition_of[pid] = tp.partition
                        self._cycles[pid] = state.cycle
                        accepted.append((tp.partition, state))
                    continue
                if pid in self._partition_of or self.store.get_raw(pid.encode(), tp.partition) is not None:
                    self.metrics.duplicates.labels(self.kind).inc()
                    continue  # already pending or final: never delivered twice
                self._partition_of[pid] = tp.partition
                accepted.append((tp.partition, DeliveryState("pending", now, 0, received, None, postback)))
        if rejected:
            await self._produce_undecodable(rejected)
        states = [
            (partition, state.postback["postback_id"].encode(), state)
            for partition, state in accepted
            if state.postback
        ]
        unkept = {key for _, key, _ in await self._write_states(states)}
        for _, state in accepted:
            postback = state.postback
            assert postback is not None  # every accepted state is pending with its postback
            if postback["postback_id"].encode() in unkept:
                # not sent: its retries could not be resumed (a replay keeps the attempts of its earlier cycles)
                await self._reject_unkeepable(postback, state.attempts)
            else:
                replay = state.cycle.number > 0
                self._scheduler.submit(
                    postback, attempts=state.attempts, first_attempt_at=datetime.now(UTC), replay=replay
                )

    def _take_replay(
        self, partition: int, postback: dict[str, Any], request: ReplayRequest, now: int, received: str
    ) -> DeliveryState | None:
        """The `pending` state of the new delivery cycle a replay request starts, or None when it starts none
        (dispatchers/core/replay.py): a delivered postback is never replayed, a request read twice starts one
        cycle, a postback not final ignores it. Each decision is counted and logged."""
        pid = postback["postback_id"]
        raw = self.store.get_raw(pid.encode(), partition)
        state = decode_delivery_state(raw) if raw is not None else None
        decision: ReplayDecision = decide_replay(state, request.request_id, pid in self._partition_of)
        self.metrics.replays.labels(self.kind, decision).inc()
        log.log(
            logging.WARNING if decision in ("delivered", "unknown") else logging.INFO,
            "replay request %s",
            _REPLAY_DECISIONS[decision],
            extra={
                "postback_id": pid,
                "kind": self.kind,
                "destination_id": postback.get("destination_id"),
                "replay_request_id": request.request_id,
                "requested_by": request.requested_by,
            },
        )
        if decision != "start" or state is None:
            return None
        return replay_pending_state(state, postback, request.request_id, now, received)

    async def _reject_unkeepable(self, postback: dict[str, Any], attempts: int) -> None:
        now = datetime.now(UTC)
        outcome = unkeepable_outcome("the broker refused it as too large")
        await self._on_final(FinalOutcome(postback, "rejected", attempts, outcome, 0.0, now, now))

    async def _on_final(self, final: FinalOutcome) -> None:
        pid = final.postback["postback_id"]
        partition = self._partition_of.get(pid)
        if partition is None:  # never: a postback is reported before its partition is written back and released
            log.error("postback %s ended on no partition of this dispatcher's: not reported here", pid)
            return
        # decided (acknowledged) -> results and dead-letter -> final; see dispatchers/adapters/outcome_reports.py
        await self._reports.report(partition, final, self._cycles.get(pid, FIRST_CYCLE))
        self._partition_of.pop(pid, None)
        self._cycles.pop(pid, None)
        self._count_final(final)
        postback = final.postback
        # One line per delivery would be most of the log and a measurable share of the CPU at volume
        # (postback_deliveries_total counts them); a postback that failed is worth a line each.
        log.log(
            logging.DEBUG if final.result == "delivered" else logging.INFO,
            "postback %s after %d attempt(s): %s",
            final.result,
            final.attempts,
            final.last_outcome.reason,
            extra={
                "postback_id": pid,
                "conversion_id": postback.get("conversion_id"),
                "kind": self.kind,
                "destination_id": postback.get("destination_id"),
            },
        )

    def _count_reported(self, state: DeliveryState) -> None:
        """A postback whose results record was written after a restart (its outcome decided before it)."""
        result = state.result or "rejected"
        self.metrics.deliveries.labels(self.kind, result).inc()
        if result != "delivered":
            dead = next((e.value for e in state.emit if e.role == "dead_letter"), {})
            self.metrics.dead_letters.labels(self.kind, bounded_reason(str(dead.get("reason", "unknown")))).inc()

    def _count_final(self, final: FinalOutcome) -> None:
        metrics = self.metrics
        metrics.deliveries.labels(self.kind, final.result).inc()
        if final.result == "delivered":
            metrics.delivered_at(self.kind, final.postback.get("occurred_at"), final.finished_at)
        else:
            metrics.dead_letters.labels(self.kind, bounded_reason(final.last_outcome.reason)).inc()

    async def _park_pending(self) -> None:
        """Drain the scheduler and write back what is still pending, with its attempts so far."""
        pending = await self._scheduler.drain(DRAIN_SECONDS)
        self._scheduler = self._new_scheduler()
        now = int(time.time())
        states = []
        for item in pending:
            pid = item.postback["postback_id"]
            partition = self._partition_of.pop(pid, None)
            cycle = self._cycles.pop(pid, FIRST_CYCLE)
            if partition is not None:
                states.append((partition, pid.encode(), pending_state(item, now, cycle)))
        # What is left was reported, or its report cut by a stop: its state (decided, or still pending) is
        # in the changelog, and whoever is assigned its partition next takes it from there.
        self._partition_of.clear()
        self._cycles.clear()
        await self._write_states(states)

    async def _write_states(
        self, states: list[tuple[int, bytes, DeliveryState]]
    ) -> list[tuple[int, bytes, DeliveryState]]:
        """Write delivery states (acknowledged); returns those Kafka could never take (see OutcomeReports)."""
        return await self._reports.write_states(states)

    async def _produce_undecodable(self, rejected: list[tuple[bytes | None, dict[str, Any]]]) -> None:
        # Not a postback (no trustworthy postback_id): kept in dead-letter with its bytes, no result record.
        records: list[Outgoing] = [
            (self.settings.topics.dead_letter, key, orjson.dumps(dead), None) for key, dead in rejected
        ]
        await self.member.send(records, "writing an undecodable postback to dead-letter")
        self.metrics.dead_letters.labels(self.kind, "invalid_message").inc(len(records))
        log.warning(
            "%d undecodable record(s) on %s kept in %s", len(records), self.topic, self.settings.topics.dead_letter
        )

    async def assigned(self, partitions: set[TopicPartition]) -> None:
        resumed = 0
        decided: list[tuple[int, bytes, DeliveryState]] = []
        for partition, key, raw in self.store.items():
            state = decode_delivery_state(raw)
            if state.status == "pending" and state.postback is not None:
                self._partition_of[key.decode()] = partition
                if state.cycle.number:
                    self._cycles[key.decode()] = state.cycle
                first = datetime.fromisoformat(state.first_attempt_at) if state.first_attempt_at else None
                self._scheduler.submit(state.postback, attempts=state.attempts, first_attempt_at=first)
                resumed += 1
            elif state.status == "decided":
                decided.append((partition, key, state))  # answered: never sent again, only reported
        for state in await self._reports.finish_decided(decided):
            self._count_reported(state)
        await self._scheduler.start()
        log.info(
            "assigned %s partitions %s; resumed %d pending postbacks",
            self.topic,
            sorted(self.store.partitions),
            resumed,
        )

    async def revoked(self, partitions: set[TopicPartition]) -> None:
        await self._park_pending()


_REPLAY_DECISIONS: dict[ReplayDecision, str] = {
    "start": "taken: a new delivery cycle of the postback starts",
    "delivered": "refused: the postback was delivered, it is never replayed",
    "duplicate": "read again: its delivery cycle was started already",
    "not_final": "ignored: the postback is still being delivered",
    "unknown": "ignored: this dispatcher has no delivery state of the postback",
}


class ProcessHealth:
    """What the dispatchers of one process share: registry, metrics, readiness, liveness (one batch loop per
    kind), lag and Kafka health."""

    def __init__(
        self,
        registry: CollectorRegistry,
        kinds: list[str],
        stall_timeout_seconds: float = DEFAULT_STALL_TIMEOUT_SECONDS,
    ) -> None:
        self.registry = registry
        self.metrics = DispatcherMetrics(registry)
        checks = ["kafka"] + [f"{prefix}:{kind}" for kind in kinds for prefix in ("consumer", "state")]
        self.readiness = Readiness(registry, checks)  # each kind's GroupMember sets its consumer and state checks
        self.kafka_health = KafkaHealth(registry, self.readiness)
        self.lag = ConsumerLag(registry)
        self.liveness = Liveness(stall_timeout_seconds)
        self.state_metrics = StateStoreMetrics(registry)


def utc_today() -> date:
    return datetime.now(UTC).date()


def check_api_versions(
    versions: Mapping[str, str], registry: CollectorRegistry, today: Callable[[], date] = utc_today
) -> None:
    """At start-up, for each platform kind run (kind -> API version): one log line about its sunset, and
    the `postback_platform_api_days_to_sunset` gauge on the registry.

    WARNING within 30 days of a known sunset, ERROR from the sunset day on (the platform refuses the
    requests); it never stops the dispatcher, whose other kinds (and S2S) still deliver.
    """
    registry.register(ApiVersionSunsetGauge(versions, today))
    day = today()
    for kind, version in versions.items():
        level, message = sunset_notice(kind, version, day)
        log.log(level, message, extra={"kind": kind})


async def run_dispatcher(settings: Settings, kind: str, *, today: Callable[[], date] = utc_today) -> None:
    """Run the dispatcher of one kind, or of every kind (`all`) side by side, until SIGTERM/SIGINT."""
    kinds = list(settings.topics.postbacks) if kind == "all" else [kind]
    process = ProcessHealth(new_registry("dispatcher"), kinds, settings.stall_timeout_seconds)
    versions = settings.platform_api_versions
    check_api_versions({k: versions[k] for k in kinds if k in versions}, process.registry, today)
    dispatchers = [Dispatcher(settings, k, process) for k in kinds]
    process.registry.register(
        DispatcherGauges(
            pending=lambda: [(d.kind, d.pending_count()) for d in dispatchers],
            breakers=lambda: [item for d in dispatchers for item in d.breaker_states()],
            paused=lambda: [(d.kind, d.paused) for d in dispatchers],
        )
    )
    loop = asyncio.get_running_loop()

    def stop_all() -> None:
        for dispatcher in dispatchers:
            dispatcher.stop()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop_all)
    loop.add_signal_handler(signal.SIGUSR1, dump_tasks)
    server = ops_server(settings.http_host, settings.http_port, process.registry, process.readiness, process.liveness)
    await server.start()
    try:
        await asyncio.gather(*(dispatcher.run() for dispatcher in dispatchers))
    finally:
        await server.stop()
