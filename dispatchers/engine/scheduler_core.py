"""What the S2S and the ad-platform schedulers share: the job table, final outcomes, the lifecycle.

Exactly one FinalOutcome per postback_id (a job is marked final before it is reported, and a
resubmission of a pending or recently final id is ignored), pending() for a caller to persist, and a
drain that lets attempts in flight finish, cuts the rest, and still reports any outcome already decided.
Subclasses own the queues and the sending (dispatchers/scheduler.py, dispatchers/batch_scheduler.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol, Self

from dispatchers.core.http import DEFAULT_CONNECTION_LIMIT
from dispatchers.core.outcome import Outcome
from dispatchers.engine.rate_limiter import ConcurrencyLimits

log = logging.getLogger(__name__)

FinalResult = Literal["delivered", "rejected", "dead_lettered"]

# Requests in flight across all destinations. More than the transport's connection pool would only
# queue inside aiohttp, where no per-destination isolation applies, so the default is the pool size.
DEFAULT_MAX_IN_FLIGHT = DEFAULT_CONNECTION_LIMIT
# Finalised postback_ids remembered to ignore a resubmission (a Kafka batch redelivered after a
# rebalance). 100k ids is about 15 MB and covers far more than one uncommitted batch; the durable
# dedupe across restarts belongs to the Kafka layer.
DEFAULT_REMEMBERED_FINALS = 100_000
# drain(): a final outcome already decided when the workers are cancelled gets this long to be
# reported. Without it the destination has the postback and postbacks.results never hears of it.
FINAL_REPORT_GRACE_SECONDS = 1.0
DEFAULT_STOP_TIMEOUT_SECONDS = 10.0


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class FinalOutcome:
    """How one postback ended: one record for postbacks.results (and the dead-letter topic unless delivered)."""

    postback: dict[str, Any]
    result: FinalResult
    attempts: int
    last_outcome: Outcome
    latency_seconds: float  # first attempt start -> final, across restarts (first_attempt_at is persisted)
    first_attempt_at: datetime
    finished_at: datetime


@dataclass(frozen=True, slots=True)
class PendingPostback:
    """A postback not yet final, as a caller persists it to resume later with `submit(...)`."""

    postback: dict[str, Any]
    attempts: int
    first_attempt_at: datetime | None  # None: never attempted
    next_attempt_at: datetime
    last_outcome: Outcome | None


@dataclass(slots=True)
class Job:
    postback: dict[str, Any]
    postback_id: str
    destination_id: str
    attempts: int
    first_attempt_at: datetime | None
    next_attempt_at: datetime
    last_outcome: Outcome | None = None


class WorkerGroup(Protocol):
    """A queue with its worker tasks (a destination's, or a platform batch key's)."""

    workers: set[asyncio.Task[None]]

    def wake(self) -> None: ...


class SchedulerCore:
    def __init__(
        self,
        *,
        concurrency: ConcurrencyLimits,
        on_final: Callable[[FinalOutcome], Awaitable[None]],
        clock: Callable[[], datetime],
        max_in_flight: int,
        remembered_finals: int,
    ) -> None:
        if max_in_flight < 1 or remembered_finals < 0:
            raise ValueError("max_in_flight must be at least 1 and remembered_finals at least 0")
        self._concurrency = concurrency
        self._on_final = on_final
        self._clock = clock
        self._global_slots = asyncio.Semaphore(max_in_flight)
        self._remembered_finals = remembered_finals
        self._jobs: dict[str, Job] = {}  # every postback not yet final, queued or in flight
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._reports: set[asyncio.Task[None]] = set()
        self._started = False
        self._stopping = False

    # --- for subclasses --------------------------------------------------------------------------------

    def _groups(self) -> Iterable[WorkerGroup]:
        raise NotImplementedError

    def _spawn_workers(self, group: Any) -> None:
        raise NotImplementedError

    def _accept(
        self,
        postback: dict[str, Any],
        attempts: int,
        first_attempt_at: datetime | None,
        not_before: datetime | None,
    ) -> Job | None:
        """Check a submission; the new Job (already in the job table), or None for a known postback_id.

        Raises ValueError for a postback without a string `postback_id`/`destination_id` or a naive
        datetime, RuntimeError once stopping.
        """
        if self._stopping:
            raise RuntimeError("the scheduler is stopping; persist the postback instead")
        postback_id = postback.get("postback_id")
        destination_id = postback.get("destination_id")
        if not isinstance(postback_id, str) or not postback_id:
            raise ValueError("postback has no postback_id")
        if not isinstance(destination_id, str) or not destination_id:
            raise ValueError("postback has no destination_id")
        if attempts < 0:
            raise ValueError("attempts must not be negative")
        for name, value in (("first_attempt_at", first_attempt_at), ("not_before", not_before)):
            if value is not None and value.utcoffset() is None:
                raise ValueError(f"{name} must be timezone-aware")
        if postback_id in self._jobs or postback_id in self._finished:
            return None
        now = self._clock()
        due = not_before if not_before is not None and not_before > now else now
        job = Job(postback, postback_id, destination_id, attempts, first_attempt_at, due)
        self._jobs[postback_id] = job
        return job

    async def _finalize(
        self, job: Job, result: FinalResult, outcome: Outcome, now: datetime, first_attempt_at: datetime
    ) -> None:
        # Marked final before on_final runs, with no await in between: a resubmission from here on is ignored.
        if self._jobs.pop(job.postback_id, None) is None:
            return
        job.last_outcome = outcome
        if self._remembered_finals:
            self._finished[job.postback_id] = None
            if len(self._finished) > self._remembered_finals:
                self._finished.popitem(last=False)
        final = FinalOutcome(
            postback=job.postback,
            result=result,
            attempts=job.attempts,
            last_outcome=outcome,
            latency_seconds=max((now - first_attempt_at).total_seconds(), 0.0),
            first_attempt_at=first_attempt_at,
            finished_at=now,
        )
        # Reported in its own task, shielded: cancelling a worker in drain() must not cut off the
        # record of a postback the destination already has. The worker still waits for it, so a slow
        # on_final (a producer under back-pressure) slows this destination's deliveries down.
        report = asyncio.create_task(self._report(final), name=f"postback-final:{job.postback_id}")
        self._reports.add(report)
        report.add_done_callback(self._reports.discard)
        await asyncio.shield(report)

    async def _report(self, final: FinalOutcome) -> None:
        try:
            await self._on_final(final)
        except Exception:
            # The caller commits its Kafka offset only after on_final returns, so a failed report is
            # redelivered after a restart; here it is logged and the worker carries on.
            log.exception("on_final failed for postback %s", final.postback.get("postback_id"))

    # --- public API --------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start delivering what was submitted so far and everything submitted from now on."""
        if self._stopping:
            raise RuntimeError("a stopped scheduler cannot be started again")
        self._started = True
        for group in list(self._groups()):
            self._spawn_workers(group)

    async def drain(self, timeout: float) -> list[PendingPostback]:
        """Stop starting attempts, let in-flight ones finish for up to `timeout` s, cancel the rest.

        Returns `pending()`: what a caller persists. A cancelled attempt counts as an attempt (the
        request may have reached the destination) and is due again at once when resumed.
        """
        self._stopping = True
        groups = list(self._groups())
        for group in groups:
            group.wake()
        workers = [task for group in groups for task in group.workers]
        if workers:
            _, unfinished = await asyncio.wait(workers, timeout=timeout)
            for task in unfinished:
                task.cancel()
            await asyncio.gather(*unfinished, return_exceptions=True)
        if self._reports:
            _, unreported = await asyncio.wait(set(self._reports), timeout=FINAL_REPORT_GRACE_SECONDS)
            for task in unreported:
                log.error("on_final did not return within %.1fs of stopping; cancelled", FINAL_REPORT_GRACE_SECONDS)
                task.cancel()
            await asyncio.gather(*unreported, return_exceptions=True)
        return self.pending()

    async def stop(self) -> list[PendingPostback]:
        return await self.drain(DEFAULT_STOP_TIMEOUT_SECONDS)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def pending(self) -> list[PendingPostback]:
        """Every postback not yet final (queued, waiting for a retry, or in flight), oldest submission first."""
        return [
            PendingPostback(job.postback, job.attempts, job.first_attempt_at, job.next_attempt_at, job.last_outcome)
            for job in self._jobs.values()
        ]

    def in_flight(self, destination_id: str) -> int:
        """Attempts of `destination_id` holding (or waiting for) a concurrency slot now."""
        return self._concurrency.in_use(destination_id)
