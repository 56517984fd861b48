"""`postback-router dispatch --kind <kind>|all`: consume matched postbacks, deliver each once, report it.

One Dispatcher per kind, each an application of the consumer-group member shell
(service/group_member.py) in its own group on `postbacks.<kind>`: the member restores the delivery
state of assigned partitions, fetches, and commits a batch's offsets once its states are
acknowledged. S2S postbacks go through DeliveryScheduler (one request each), ad-platform ones
through BatchDeliveryScheduler (batched per account or pixel). Per consumed batch: a postback_id
that already has a delivery state is skipped (dedupe across restarts); the others get a `pending`
state, written to the state changelog and acknowledged before the input offsets are committed, and
go to the scheduler. When a postback ends, its record goes to `postbacks.results` (and
`postbacks.dead-letter` unless delivered), then its state becomes `final`. The records are built in
dispatchers/core/delivery_records.py.

On a rebalance or a stop the scheduler is drained: attempts in flight finish (or are cut after
DRAIN_SECONDS) and what is still pending is written back with its attempts; whoever owns the
partition next resumes it from the changelog. A crash repeats at most the attempts that were in
flight: for S2S, which has no dedup key, that is the one window where a destination can see a
postback twice.
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

from dispatchers.adapters.http_transport import AiohttpTransport
from dispatchers.adapters.metrics import (
    ApiVersionSunsetGauge,
    DispatcherGauges,
    DispatcherMetrics,
    MeteredTransport,
    bounded_reason,
)
from dispatchers.adapters.platform_credentials import PlatformCredentials
from dispatchers.adapters.secrets import SecretStore
from dispatchers.core.circuit_breaker import BreakerState, CircuitBreakers
from dispatchers.core.delivery_records import (
    dead_letter_record,
    decode_postback,
    pending_state,
    result_record,
    undecodable_record,
    utc_iso,
)
from dispatchers.core.delivery_state import DeliveryState, decode_delivery_state, encode_delivery_state
from dispatchers.core.retry_policy import RetryPolicy
from dispatchers.engine.batch_scheduler import BatchDeliveryScheduler
from dispatchers.engine.oauth import OAuthTokenCache
from dispatchers.engine.rate_limiter import ConcurrencyLimits, RateLimit, RateLimiters
from dispatchers.engine.scheduler import DeliveryScheduler
from dispatchers.engine.scheduler_core import FinalOutcome, PendingPostback
from dispatchers.platforms.api_versions import sunset_notice
from service.changelog_store import ChangelogStore
from service.consumer_health import ConsumerLag, KafkaHealth
from service.diagnostics import dump_tasks
from service.group_member import Batch, GroupMember
from service.kafka_io import Outgoing
from service.ops_http import Readiness, new_registry, ops_server
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
    ) -> None: ...

    async def start(self) -> None: ...

    async def drain(self, timeout: float) -> list[PendingPostback]: ...


class Dispatcher:
    def __init__(self, settings: Settings, kind: str, process: ProcessHealth | None = None) -> None:
        self.kind = kind
        self.process = process or ProcessHealth(new_registry("dispatcher"), [kind])
        self.metrics = self.process.metrics
        self.settings = settings
        self.topic = settings.topics.postbacks[self.kind]
        self.group_id = f"{settings.app_id}-dispatch-{self.kind}"
        self.store = ChangelogStore(
            settings.bootstrap_servers,
            settings.delivery_state_changelog(self.kind),
            "memory" if settings.state_store == "memory://" else "rocksdb",
            Path(settings.state_dir) / self.group_id,
        )
        self._transport = AiohttpTransport(allow_private_targets=settings.allow_private_targets)
        self._metered = MeteredTransport(self._transport, self.metrics, kind)
        # Shared by the schedulers of successive assignments, so that a rebalance does not reset
        # an open breaker and hammer a failing endpoint again.
        self._breakers = CircuitBreakers()
        rate = settings.destination_rate_limit
        self._rate_limits = RateLimiters(RateLimit(rate.rate_per_second, rate.burst) if rate else None)
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
            max_records=MAX_BATCH_RECORDS,
        )

    def _new_scheduler(self) -> PostbackScheduler:
        common: dict[str, Any] = {
            "policy": self._policy,
            "breakers": self._breakers,
            "rate_limits": self._rate_limits,
            "concurrency": ConcurrencyLimits(self.settings.destination_concurrency),
            "timeout_seconds": self.settings.delivery_timeout_seconds,
            "on_final": self._on_final,
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
        accepted: list[tuple[int, dict[str, Any]]] = []
        rejected: list[tuple[bytes | None, dict[str, Any]]] = []
        for tp, records in batch.items():
            for record in records:
                postback = decode_postback(record.value, self.kind)
                if postback is None:
                    rejected.append(undecodable_record(record.key, record.value, received))
                    continue
                pid = postback["postback_id"]
                if pid in self._partition_of or self.store.get_raw(pid.encode(), tp.partition) is not None:
                    self.metrics.duplicates.labels(self.kind).inc()
                    continue  # already pending or final: never delivered twice
                self._partition_of[pid] = tp.partition
                accepted.append((tp.partition, postback))
        if rejected:
            await self._produce_undecodable(rejected)
        states = [
            (partition, postback["postback_id"].encode(), DeliveryState("pending", now, 0, received, None, postback))
            for partition, postback in accepted
        ]
        await self._write_states(states)
        for _, postback in accepted:
            self._scheduler.submit(postback, first_attempt_at=datetime.now(UTC))

    async def _on_final(self, final: FinalOutcome) -> None:
        pid = final.postback["postback_id"]
        partition = self._partition_of.pop(pid, None)
        topics = self.settings.topics
        records: list[Outgoing] = [(topics.results, pid.encode(), orjson.dumps(result_record(final)), None)]
        if final.result != "delivered":
            records.append((topics.dead_letter, pid.encode(), orjson.dumps(dead_letter_record(final)), None))
        await self.member.send(records, "writing a delivery result")
        self._count_final(final)
        postback = final.postback
        log.info(
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
        if partition is not None:
            state = DeliveryState("final", int(time.time()), final.attempts, None, final.result, None)
            await self._write_states([(partition, pid.encode(), state)])

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
            if partition is not None:
                states.append((partition, pid.encode(), pending_state(item, now)))
        await self._write_states(states)

    async def _write_states(self, states: list[tuple[int, bytes, DeliveryState]]) -> None:
        changes = [(partition, key, encode_delivery_state(state)) for partition, key, state in states]
        await self.member.write_changelog(self.store, changes, "writing delivery state")

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
        for partition, key, raw in self.store.items():
            state = decode_delivery_state(raw)
            if state.status == "pending" and state.postback is not None:
                self._partition_of[key.decode()] = partition
                first = datetime.fromisoformat(state.first_attempt_at) if state.first_attempt_at else None
                self._scheduler.submit(state.postback, attempts=state.attempts, first_attempt_at=first)
                resumed += 1
        await self._scheduler.start()
        log.info(
            "assigned %s partitions %s; resumed %d pending postbacks",
            self.topic,
            sorted(self.store.partitions),
            resumed,
        )

    async def revoked(self, partitions: set[TopicPartition]) -> None:
        await self._park_pending()


class ProcessHealth:
    """What the dispatchers of one process share: registry, metrics, readiness, lag and Kafka health."""

    def __init__(self, registry: CollectorRegistry, kinds: list[str]) -> None:
        self.registry = registry
        self.metrics = DispatcherMetrics(registry)
        checks = ["kafka"] + [f"{prefix}:{kind}" for kind in kinds for prefix in ("consumer", "state")]
        self.readiness = Readiness(registry, checks)  # each kind's GroupMember sets its consumer and state checks
        self.kafka_health = KafkaHealth(registry, self.readiness)
        self.lag = ConsumerLag(registry)


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
    process = ProcessHealth(new_registry("dispatcher"), kinds)
    versions = settings.platform_api_versions
    check_api_versions({k: versions[k] for k in kinds if k in versions}, process.registry, today)
    dispatchers = [Dispatcher(settings, k, process) for k in kinds]
    process.registry.register(
        DispatcherGauges(
            pending=lambda: [(d.kind, d.pending_count()) for d in dispatchers],
            breakers=lambda: [item for d in dispatchers for item in d.breaker_states()],
        )
    )
    loop = asyncio.get_running_loop()

    def stop_all() -> None:
        for dispatcher in dispatchers:
            dispatcher.stop()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop_all)
    loop.add_signal_handler(signal.SIGUSR1, dump_tasks)
    server = ops_server(settings.http_host, settings.http_port, process.registry, process.readiness)
    await server.start()
    try:
        await asyncio.gather(*(dispatcher.run() for dispatcher in dispatchers))
    finally:
        await server.stop()
