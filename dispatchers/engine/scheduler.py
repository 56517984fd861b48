"""The in-memory delivery scheduler for S2S postbacks (contract §4): when to send each postback, and to whom first.

It owns no I/O of its own: requests go through `deliver_s2s` and a Transport, the verdicts come from
`s2s`/`retry_policy`, the health of an endpoint from `circuit_breaker`, the pacing from `rate_limiter`.
The Kafka layer feeds it (`submit`), writes each `FinalOutcome` to `postbacks.results` (`on_final`),
and persists `pending()` when it stops; resubmitting those with their attempts is how a restart resumes.

Isolation: every `destination_id` has its own queue (a heap by due time) and its own worker tasks, at
most its concurrency limit of them. A destination that answers in 30 s, or not at all, only ever ties
up its own workers; other destinations wait for nothing but the global in-flight bound.

Clocks: decisions (due times, give-up age, breaker state, latency) use the injected `clock` (aware UTC
datetimes), so tests and a resumed state agree on one timeline; waits are real `asyncio` sleeps
computed from it. The rate limiter paces in real monotonic time: it only spaces requests out.

Exactly one `on_final` per postback_id: a postback is marked final (and forgotten from the pending
set) before `on_final` is called, and a postback_id that is pending or was finalised is ignored when
submitted again. That dedupe is in memory and bounded; across restarts it is the Kafka layer's job.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from dispatchers.core.circuit_breaker import CircuitBreakers
from dispatchers.core.http import Transport
from dispatchers.core.outcome import Outcome, Verdict
from dispatchers.core.retry_policy import RetryPolicy
from dispatchers.core.s2s import deliver_s2s
from dispatchers.engine.rate_limiter import ConcurrencyLimits, RateLimiters
from dispatchers.engine.scheduler_core import (
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_REMEMBERED_FINALS,
    FinalOutcome,
    Job,
    SchedulerCore,
    utc_now,
)

log = logging.getLogger(__name__)

# A half-open breaker whose probe is still in flight has no `open_until`; other postbacks of that
# destination look again this much later. A probe lasts at most the request timeout, and a second of
# extra delay after an endpoint recovered costs nothing.
HALF_OPEN_RECHECK_SECONDS = 1.0
# A worker waiting for a due time looks at the clock at least this often, so a wall-clock step (NTP,
# or a test clock moved forward) is noticed without every idle destination waking up often.
MAX_IDLE_WAIT_SECONDS = 30.0


@dataclass(slots=True)
class _Destination:
    destination_id: str
    # (due, submission order, job): the order keeps postbacks due at the same time first-in first-out
    queue: list[tuple[datetime, int, Job]] = field(default_factory=list)
    workers: set[asyncio.Task[None]] = field(default_factory=set)
    # Replaced on every change; waiters hold the old one, so setting it wakes all of them at once.
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def wake(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()


class DeliveryScheduler(SchedulerCore):
    """Delivers matched S2S postbacks with retries, per-destination isolation, limits and a breaker."""

    def __init__(
        self,
        transport: Transport,
        *,
        policy: RetryPolicy,
        breakers: CircuitBreakers,
        rate_limits: RateLimiters,
        concurrency: ConcurrencyLimits,
        timeout_seconds: float,
        on_final: Callable[[FinalOutcome], Awaitable[None]],
        clock: Callable[[], datetime] = utc_now,
        rand: Callable[[], float] = random.random,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        remembered_finals: int = DEFAULT_REMEMBERED_FINALS,
    ) -> None:
        if timeout_seconds <= 0:
            raise ValueError("timeout_seconds must be positive")
        super().__init__(
            concurrency=concurrency,
            on_final=on_final,
            clock=clock,
            max_in_flight=max_in_flight,
            remembered_finals=remembered_finals,
        )
        self._transport = transport
        self._policy = policy
        self._breakers = breakers
        self._rate_limits = rate_limits
        self._timeout = timeout_seconds
        self._rand = rand
        self._destinations: dict[str, _Destination] = {}
        self._order = itertools.count()

    # --- public API ----------------------------------------------------------------------------------

    def submit(
        self,
        postback: dict[str, Any],
        *,
        attempts: int = 0,
        first_attempt_at: datetime | None = None,
        not_before: datetime | None = None,
    ) -> None:
        """Queue a matched s2s postback; a postback_id already pending or finalised is ignored.

        `attempts`, `first_attempt_at` and `not_before` resume a postback from `pending()` of an
        earlier run: its age keeps counting from the first attempt. Raises ValueError for a postback
        without a string `postback_id`/`destination_id` or a naive datetime, RuntimeError once stopping.
        """
        job = self._accept(postback, attempts, first_attempt_at, not_before)
        if job is not None:
            self._enqueue(job)

    # --- queues and workers --------------------------------------------------------------------------

    def _groups(self) -> list[_Destination]:
        return list(self._destinations.values())

    def _enqueue(self, job: Job) -> None:
        destination = self._destinations.get(job.destination_id)
        if destination is None:
            destination = self._destinations[job.destination_id] = _Destination(job.destination_id)
        heapq.heappush(destination.queue, (job.next_attempt_at, next(self._order), job))
        destination.wake()
        self._spawn_workers(destination)

    def _spawn_workers(self, destination: _Destination) -> None:
        if not self._started or self._stopping:
            return
        # No more workers than queued postbacks: a worker whose queue is empty exits, so an idle
        # destination costs no task, and ten thousand quiet destinations cost nothing.
        wanted = min(self._concurrency.limit_for(destination.destination_id), len(destination.queue))
        while len(destination.workers) < wanted:
            task = asyncio.create_task(
                self._run_worker(destination), name=f"postback-delivery:{destination.destination_id}"
            )
            destination.workers.add(task)
            task.add_done_callback(self._worker_done)

    def _worker_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("delivery worker %s crashed", task.get_name(), exc_info=task.exception())

    async def _run_worker(self, destination: _Destination) -> None:
        try:
            while not self._stopping and destination.queue:
                due = destination.queue[0][0]
                wait = (due - self._clock()).total_seconds()
                if wait > 0:
                    changed = destination.changed
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(changed.wait(), min(wait, MAX_IDLE_WAIT_SECONDS))
                    continue  # re-read the head: an earlier postback may have arrived, or we are stopping
                _, _, job = heapq.heappop(destination.queue)
                await self._attempt(destination, job)
        finally:
            current = asyncio.current_task()
            if current is not None:
                destination.workers.discard(current)
            if not destination.workers and not destination.queue:
                self._destinations.pop(destination.destination_id, None)

    def _requeue(self, destination: _Destination, job: Job, due: datetime) -> None:
        job.next_attempt_at = due
        heapq.heappush(destination.queue, (due, next(self._order), job))
        destination.wake()

    # --- one attempt -----------------------------------------------------------------------------------

    async def _attempt(self, destination: _Destination, job: Job) -> None:
        destination_id = destination.destination_id
        now = self._clock()
        breaker_now = now.timestamp()
        if not self._breakers.allow(destination_id, breaker_now):
            # Not an attempt: nothing was sent. The age still starts here, so a postback for an endpoint
            # that stays down is dead-lettered after max_age instead of being parked behind the breaker forever.
            if job.first_attempt_at is None:
                job.first_attempt_at = now
            if self._policy.give_up(job.first_attempt_at, now):
                outcome = job.last_outcome or Outcome(
                    Verdict.RETRY, "circuit_open", f"circuit breaker open for {destination_id}"
                )
                await self._finalize(job, "dead_lettered", outcome, now, job.first_attempt_at)
                return
            # Wait for the breaker's next probe rather than spinning, but not past the give-up deadline.
            open_until = self._breakers.get(destination_id, breaker_now).open_until
            due = (
                datetime.fromtimestamp(open_until, UTC)
                if open_until is not None
                else now + timedelta(seconds=HALF_OPEN_RECHECK_SECONDS)
            )
            self._requeue(destination, job, min(due, self._policy.deadline(job.first_attempt_at)))
            return
        await self._rate_limits.acquire(destination_id)
        async with self._global_slots, self._concurrency.slot(destination_id):
            if self._stopping:  # stopped while waiting for the rate limit or a slot: nothing was sent
                self._requeue(destination, job, job.next_attempt_at)
                return
            started = self._clock()
            if job.first_attempt_at is None:
                job.first_attempt_at = started
            first_attempt_at = job.first_attempt_at
            job.attempts += 1  # counted before sending: a cancelled request may still have arrived
            job.next_attempt_at = started
            try:
                outcome = await deliver_s2s(self._transport, job.postback, self._timeout)
            except asyncio.CancelledError:
                job.last_outcome = Outcome(
                    Verdict.RETRY, "cancelled", "attempt cancelled when the scheduler stopped; its result is unknown"
                )
                job.next_attempt_at = self._clock()
                raise
            except Exception as exc:  # a bug in a transport must cost a retry, not the worker
                log.exception("delivery of postback %s raised", job.postback_id)
                outcome = Outcome(Verdict.RETRY, "internal_error", f"{type(exc).__name__}: {exc}"[:300])
        job.last_outcome = outcome
        finished = self._clock()
        if outcome.verdict is Verdict.RETRY:
            self._breakers.record(destination_id, False, finished.timestamp())
        elif outcome.http_status is not None:
            # An answer, even a 4xx rejection of this one postback, shows the endpoint is up.
            self._breakers.record(destination_id, True, finished.timestamp())
        # A rejection before any answer (invalid URL, refused target) says nothing about the endpoint.
        await self._settle(destination, job, outcome, finished, first_attempt_at)

    async def _settle(
        self, destination: _Destination, job: Job, outcome: Outcome, now: datetime, first_attempt_at: datetime
    ) -> None:
        if outcome.verdict in (Verdict.DELIVERED, Verdict.DUPLICATE):
            await self._finalize(job, "delivered", outcome, now, first_attempt_at)
        elif outcome.verdict is Verdict.REJECTED:
            await self._finalize(job, "rejected", outcome, now, first_attempt_at)
        elif self._policy.give_up(first_attempt_at, now):
            await self._finalize(job, "dead_lettered", outcome, now, first_attempt_at)
        else:
            delay = self._policy.next_delay(job.attempts, outcome.retry_after_seconds, self._rand)
            due = now + timedelta(seconds=delay)
            deadline = self._policy.deadline(first_attempt_at)
            if due > deadline:
                # One last attempt at the deadline instead of giving up to max_delay early, unless the
                # destination asked for a longer pause: then it gets that, and the attempt after it is the last.
                floor = now + timedelta(seconds=outcome.retry_after_seconds or 0.0)
                due = max(deadline, floor)
            self._requeue(destination, job, due)
