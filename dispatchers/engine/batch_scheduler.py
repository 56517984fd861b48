"""The in-memory delivery scheduler for ad-platform postbacks (contract §4): batching, per-row verdicts, retries.

The counterpart of `scheduler.DeliveryScheduler` for Google Ads, Meta, TikTok and Microsoft Ads, with the
same public surface and the same `FinalOutcome`/`PendingPostback` records, so `runner.py` drives either.
Requests are built and answers classified by the pure platform modules (`dispatchers/platforms/*`); this
module decides when to send what, in which batch, and what a row's outcome means for it.

Batching: postbacks are queued per (destination_id, platform batch_key, credentials name), so every
request holds rows the platform accepts together and one set of credentials serves it. A queue's head
that is due opens a batch; it is sent `linger_seconds` later with every row of that queue due by then,
or at once when MAX_BATCH rows are due. Rows are classified one by one: a delivered row is final and
never sent again, a row to retry goes back to its queue alone.

Isolation, clocks, drain and the exactly-once `on_final` work as in `scheduler.py`: workers per queue,
at most the destination's concurrency limit of them; decisions on the injected `clock`; breaker, rate
limit and concurrency keyed by `destination_id` with one breaker record per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import math
import random
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import ModuleType
from typing import Any, Protocol

from dispatchers.core.circuit_breaker import CircuitBreakers
from dispatchers.core.http import HttpRequest, Transport, TransportError
from dispatchers.core.outcome import Outcome, Verdict
from dispatchers.core.retry_policy import RetryPolicy, classify_transport_error
from dispatchers.engine.oauth import TokenKey
from dispatchers.engine.rate_limiter import ConcurrencyLimits, RateLimiters
from dispatchers.engine.scheduler import HALF_OPEN_RECHECK_SECONDS, MAX_IDLE_WAIT_SECONDS
from dispatchers.engine.scheduler_core import (
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_REMEMBERED_FINALS,
    FinalOutcome,
    Job,
    SchedulerCore,
    utc_now,
)
from dispatchers.platforms import google_ads, meta, microsoft_ads, tiktok
from dispatchers.platforms.api_versions import DEFAULT_VERSIONS
from schemas.kinds import OAUTH_KINDS

log = logging.getLogger(__name__)

PLATFORMS: Mapping[str, ModuleType] = {
    "google_ads": google_ads,
    "meta": meta,
    "tiktok": tiktok,
    "microsoft_ads": microsoft_ads,
}

# contract §6 wants a p99 of 50 ms: a short linger still turns a burst into one request instead of hundreds.
DEFAULT_LINGER_SECONDS = 0.05
AUTH_EXPIRED = "auth_expired"
# Exceptions a malformed postback (a missing field, a payout that is not a decimal) raises in a builder.
_BAD_POSTBACK_ERRORS = (KeyError, TypeError, ValueError, AttributeError)


class CredentialsUnavailable(Exception):
    """No usable credentials for a request; `outcome` says whether retrying can help."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.detail)
        self.outcome = outcome


@dataclass(frozen=True, slots=True)
class RequestCredentials:
    """What one request needs; repr shows no token."""

    access_token: str = field(repr=False)
    developer_token: str | None = field(default=None, repr=False)
    token_key: TokenKey | None = None  # the OAuth cache entry the access token came from

    def secrets(self) -> tuple[str, ...]:
        """Values a response detail must never show."""
        return tuple(value for value in (self.access_token, self.developer_token) if value)


def _final_auth(outcome: Outcome) -> Outcome:
    """A second `auth_expired` in a row: a fresh token was refused too, so no refresh will fix it."""
    return Outcome(Verdict.REJECTED, AUTH_EXPIRED, outcome.detail, http_status=outcome.http_status)


class CredentialsResolver(Protocol):
    """Turns a rule entry's `credentials` secret NAME into the tokens of one request, and knows each
    platform's base URL (dispatchers/adapters/platform_credentials.py, or a stand-in in tests)."""

    def base_url(self, kind: str) -> str: ...

    async def resolve(self, kind: str, secret_name: object) -> RequestCredentials:
        """Raises CredentialsUnavailable (REJECTED or RETRY) when there are none."""
        ...

    def invalidate(self, credentials: RequestCredentials) -> None:
        """The platform refused the access token: the next resolve() fetches a new one."""
        ...


# --- queues --------------------------------------------------------------------------------------------


QueueKey = tuple[str, str, str]  # destination_id, platform batch_key, credentials secret name


@dataclass(slots=True)
class _Queue:
    key: QueueKey
    heap: list[tuple[datetime, int, Job]] = field(default_factory=list)
    workers: set[asyncio.Task[None]] = field(default_factory=set)
    busy: int = 0  # workers holding a batch they popped
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def destination_id(self) -> str:
        return self.key[0]

    def wake(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    def due_count(self, now: datetime) -> int:
        return sum(1 for due, _, _ in self.heap if due <= now)


class BatchDeliveryScheduler(SchedulerCore):
    """Delivers matched ad-platform postbacks in batches, with per-row verdicts, retries, limits and a breaker."""

    def __init__(
        self,
        transport: Transport,
        *,
        kind: str,
        policy: RetryPolicy,
        breakers: CircuitBreakers,
        rate_limits: RateLimiters,
        concurrency: ConcurrencyLimits,
        timeout_seconds: float,
        on_final: Callable[[FinalOutcome], Awaitable[None]],
        credentials: CredentialsResolver,
        api_version: str | None = None,
        linger_seconds: float = DEFAULT_LINGER_SECONDS,
        clock: Callable[[], datetime] = utc_now,
        rand: Callable[[], float] = random.random,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        remembered_finals: int = DEFAULT_REMEMBERED_FINALS,
    ) -> None:
        if kind not in PLATFORMS:
            raise ValueError(f"kind must be one of {', '.join(PLATFORMS)}, got {kind!r}")
        if timeout_seconds <= 0 or linger_seconds < 0:
            raise ValueError("timeout_seconds must be positive and linger_seconds not negative")
        super().__init__(
            concurrency=concurrency,
            on_final=on_final,
            clock=clock,
            max_in_flight=max_in_flight,
            remembered_finals=remembered_finals,
        )
        self.kind = kind
        self._platform = PLATFORMS[kind]
        self._max_batch: int = self._platform.MAX_BATCH
        self._transport = transport
        self._policy = policy
        self._breakers = breakers
        self._rate_limits = rate_limits
        self._timeout = timeout_seconds
        self._credentials = credentials
        # The platform API version of every request (settings: GOOGLE_ADS_API_VERSION, ...).
        self._api_version = api_version or DEFAULT_VERSIONS[kind]
        self._linger = timedelta(seconds=linger_seconds)
        self._rand = rand
        self._queues: dict[QueueKey, _Queue] = {}
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
        """Queue a matched postback of this scheduler's kind; a postback_id already pending or final is ignored.

        Same contract as `DeliveryScheduler.submit`. A postback whose platform fields are malformed is
        accepted and rejected (`invalid_postback`) when its turn comes, so one bad record never stops a batch.
        """
        job = self._accept(postback, attempts, first_attempt_at, not_before)
        if job is not None:
            self._push(self._queue_for(job), job, job.next_attempt_at)

    def _groups(self) -> list[_Queue]:
        return list(self._queues.values())

    def _queue_for(self, job: Job) -> _Queue:
        entry = job.postback.get("entry")
        credentials = entry.get("credentials") if isinstance(entry, dict) else None
        try:
            batch_key = str(self._platform.batch_key(job.postback))
        except _BAD_POSTBACK_ERRORS:
            # A queue of its own: the postback is rejected by the precheck without delaying anyone.
            batch_key = f"invalid:{job.postback_id}"
        key = (job.destination_id, batch_key, credentials if isinstance(credentials, str) else "")
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = _Queue(key)
        return queue

    def _push(self, queue: _Queue, job: Job, due: datetime) -> None:
        job.next_attempt_at = due
        heapq.heappush(queue.heap, (due, next(self._order), job))
        queue.wake()
        self._spawn_workers(queue)

    def _spawn_workers(self, queue: _Queue) -> None:
        if not self._started or self._stopping:
            return
        # Enough idle workers for the batches queued, never more than the destination may have in flight.
        batches = math.ceil(len(queue.heap) / self._max_batch)
        wanted = min(self._concurrency.limit_for(queue.destination_id), queue.busy + batches)
        while len(queue.workers) < wanted:
            task = asyncio.create_task(self._run_worker(queue), name=f"postback-batch:{queue.destination_id}")
            queue.workers.add(task)
            task.add_done_callback(self._worker_done)

    def _worker_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("batch delivery worker %s crashed", task.get_name(), exc_info=task.exception())

    async def _run_worker(self, queue: _Queue) -> None:
        try:
            while not self._stopping and queue.heap:
                now = self._clock()
                head_due = queue.heap[0][0]
                send_at = head_due + self._linger
                if head_due > now or (send_at > now and not self._batch_full(queue, now)):
                    # Not due yet, or lingering for batch-mates: wake on a change (more rows, stopping) or in time.
                    wait = (send_at if head_due <= now else head_due) - now
                    changed = queue.changed
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(changed.wait(), min(wait.total_seconds(), MAX_IDLE_WAIT_SECONDS))
                    continue
                batch: list[Job] = []
                while queue.heap and queue.heap[0][0] <= now and len(batch) < self._max_batch:
                    batch.append(heapq.heappop(queue.heap)[2])
                queue.busy += 1
                try:
                    await self._attempt(queue, batch)
                finally:
                    queue.busy -= 1
        finally:
            current = asyncio.current_task()
            if current is not None:
                queue.workers.discard(current)
            if not queue.workers and not queue.heap and self._queues.get(queue.key) is queue:
                del self._queues[queue.key]

    def _batch_full(self, queue: _Queue, now: datetime) -> bool:
        # The length check first: the scan only runs once the heap could hold a full batch.
        return len(queue.heap) >= self._max_batch and queue.due_count(now) >= self._max_batch

    def _requeue(self, queue: _Queue, job: Job, due: datetime) -> None:
        job.next_attempt_at = due
        heapq.heappush(queue.heap, (due, next(self._order), job))
        queue.wake()
        # A worker that is busy sending may be the only one: let another pick the row up when it is due.
        self._spawn_workers(queue)

    # --- one batch -------------------------------------------------------------------------------------

    async def _attempt(self, queue: _Queue, batch: list[Job]) -> None:
        now = self._clock()
        sendable: list[Job] = []
        for job in batch:
            verdict = self._precheck(job, now)
            if verdict is None:
                sendable.append(job)
            elif verdict.verdict is Verdict.REJECTED:
                await self._finalize(job, "rejected", verdict, now, job.first_attempt_at or now)
            else:  # Microsoft's event_in_future: nothing was sent, so no attempt is counted; the age starts
                if job.first_attempt_at is None:
                    job.first_attempt_at = now
                job.last_outcome = verdict
                await self._retry_later(queue, job, verdict, now, job.first_attempt_at, self._rand())
        if not sendable:
            return
        try:
            credentials = await self._credentials.resolve(self.kind, queue.key[2])
        except CredentialsUnavailable as exc:
            await self._settle_all(queue, sendable, exc.outcome, count_attempt=True)
            return
        if not await self._breaker_allows(queue, sendable, now):
            return
        await self._send(queue, sendable, credentials)

    def _precheck(self, job: Job, now: datetime) -> Outcome | None:
        try:
            outcome: Outcome | None = self._platform.precheck(job.postback, now)
        except _BAD_POSTBACK_ERRORS as exc:
            return Outcome(Verdict.REJECTED, "invalid_postback", f"{type(exc).__name__}: {exc}"[:300])
        return outcome

    async def _breaker_allows(self, queue: _Queue, jobs: list[Job], now: datetime) -> bool:
        destination_id = queue.destination_id
        breaker_now = now.timestamp()
        if self._breakers.allow(destination_id, breaker_now):
            return True
        # Nothing is sent; the age still starts, so rows for an endpoint that stays down are dead-lettered.
        open_until = self._breakers.get(destination_id, breaker_now).open_until
        due = (
            datetime.fromtimestamp(open_until, UTC)
            if open_until is not None
            else now + timedelta(seconds=HALF_OPEN_RECHECK_SECONDS)
        )
        for job in jobs:
            if job.first_attempt_at is None:
                job.first_attempt_at = now
            if self._policy.give_up(job.first_attempt_at, now):
                outcome = job.last_outcome or Outcome(
                    Verdict.RETRY, "circuit_open", f"circuit breaker open for {destination_id}"
                )
                await self._finalize(job, "dead_lettered", outcome, now, job.first_attempt_at)
            else:
                self._requeue(queue, job, min(due, self._policy.deadline(job.first_attempt_at)))
        return False

    async def _send(self, queue: _Queue, jobs: list[Job], credentials: RequestCredentials) -> None:
        """One request for `jobs`, plus one immediate repeat with a fresh token if the platform refused the token."""
        destination_id = queue.destination_id
        refreshed = False
        while True:
            jobs, request, malformed = self._prepare(jobs, credentials)
            for job, outcome in malformed:
                now = self._clock()
                await self._finalize(job, "rejected", outcome, now, job.first_attempt_at or now)
            if request is None:
                return
            await self._rate_limits.acquire(destination_id)
            async with self._global_slots, self._concurrency.slot(destination_id):
                if self._stopping:  # stopped while waiting for the rate limit or a slot: nothing was sent
                    for job in jobs:
                        self._requeue(queue, job, job.next_attempt_at)
                    return
                outcomes = await self._exchange(jobs, request, credentials)
            finished = self._clock()
            expired = [o.verdict is Verdict.RETRY and o.reason == AUTH_EXPIRED for o in outcomes]
            # One record per request. A refused token says nothing about the endpoint's health.
            request_failed = all(o.verdict is Verdict.RETRY for o in outcomes) and not any(expired)
            self._breakers.record(destination_id, not request_failed, finished.timestamp())
            rows = list(zip(jobs, outcomes, expired, strict=True))
            if any(expired) and not refreshed:
                self._credentials.invalidate(credentials)
                await self._settle(queue, [(job, outcome) for job, outcome, is_expired in rows if not is_expired])
                retry = [job for job, _, is_expired in rows if is_expired]
                try:
                    credentials = await self._credentials.resolve(self.kind, queue.key[2])
                except CredentialsUnavailable as exc:
                    await self._settle_all(queue, retry, exc.outcome, count_attempt=False)
                    return
                jobs, refreshed = retry, True
                continue
            await self._settle(
                queue, [(job, _final_auth(outcome) if is_expired else outcome) for job, outcome, is_expired in rows]
            )
            return

    def _prepare(
        self, jobs: list[Job], credentials: RequestCredentials
    ) -> tuple[list[Job], HttpRequest | None, list[tuple[Job, Outcome]]]:
        """The request for `jobs`; a malformed postback is set aside (rejected) instead of failing its batch."""
        try:
            return jobs, self._build([job.postback for job in jobs], credentials), []
        except _BAD_POSTBACK_ERRORS:
            pass
        good: list[Job] = []
        malformed: list[tuple[Job, Outcome]] = []
        for job in jobs:
            try:
                self._build([job.postback], credentials)
            except _BAD_POSTBACK_ERRORS as exc:
                detail = f"cannot build a {self.kind} request: {type(exc).__name__}: {exc}"[:300]
                malformed.append((job, Outcome(Verdict.REJECTED, "invalid_postback", detail)))
            else:
                good.append(job)
        request = self._build([job.postback for job in good], credentials) if good else None
        return good, request, malformed

    def _build(self, postbacks: Sequence[dict[str, Any]], credentials: RequestCredentials) -> HttpRequest:
        options: dict[str, Any] = {
            "base_url": self._credentials.base_url(self.kind),
            "access_token": credentials.access_token,
            "api_version": self._api_version,
            "timeout_seconds": self._timeout,
        }
        if self.kind in OAUTH_KINDS:
            options["developer_token"] = credentials.developer_token
        request: HttpRequest = self._platform.build_request(postbacks, **options)
        return request

    async def _exchange(self, jobs: list[Job], request: HttpRequest, credentials: RequestCredentials) -> list[Outcome]:
        """Send the request (counting an attempt for each row first) and classify the answer row by row."""
        started = self._clock()
        for job in jobs:
            if job.first_attempt_at is None:
                job.first_attempt_at = started
            job.attempts += 1  # counted before sending: a cancelled request may still have arrived
            job.next_attempt_at = started
        try:
            response = await self._transport.send(request)
        except asyncio.CancelledError:
            cancelled = Outcome(
                Verdict.RETRY, "cancelled", "request cancelled when the scheduler stopped; its result is unknown"
            )
            stopped = self._clock()
            for job in jobs:
                job.last_outcome = cancelled
                job.next_attempt_at = stopped
            raise
        except TransportError as err:
            return [classify_transport_error(err)] * len(jobs)
        except Exception as exc:  # a bug in a transport must cost a retry, not the worker
            log.exception("a %s request for %s raised", self.kind, jobs[0].destination_id)
            return [Outcome(Verdict.RETRY, "internal_error", f"{type(exc).__name__}: {exc}"[:300])] * len(jobs)
        outcomes: list[Outcome] = self._platform.classify_response(
            response, [job.postback for job in jobs], now=self._clock(), secrets=credentials.secrets()
        )
        return outcomes

    # --- verdicts --------------------------------------------------------------------------------------

    async def _settle_all(self, queue: _Queue, jobs: Iterable[Job], outcome: Outcome, *, count_attempt: bool) -> None:
        """The same outcome for rows that were not sent (no credentials, token endpoint down)."""
        now = self._clock()
        for job in jobs:
            if job.first_attempt_at is None:
                job.first_attempt_at = now
            # A failing token endpoint counts as an attempt so that its retries back off like any other.
            if count_attempt and outcome.verdict is Verdict.RETRY:
                job.attempts += 1
        await self._settle(queue, [(job, outcome) for job in jobs])

    async def _settle(self, queue: _Queue, results: list[tuple[Job, Outcome]]) -> None:
        now = self._clock()
        # One draw per request: rows retried together come back together and go out as one batch again.
        draw = self._rand()
        for job, outcome in results:
            first_attempt_at = job.first_attempt_at or now
            job.last_outcome = outcome
            if outcome.verdict in (Verdict.DELIVERED, Verdict.DUPLICATE):
                await self._finalize(job, "delivered", outcome, now, first_attempt_at)
            elif outcome.verdict is Verdict.REJECTED:
                await self._finalize(job, "rejected", outcome, now, first_attempt_at)
            else:
                await self._retry_later(queue, job, outcome, now, first_attempt_at, draw)

    async def _retry_later(
        self, queue: _Queue, job: Job, outcome: Outcome, now: datetime, first_attempt_at: datetime, draw: float
    ) -> None:
        if self._policy.give_up(first_attempt_at, now):
            await self._finalize(job, "dead_lettered", outcome, now, first_attempt_at)
            return
        delay = self._policy.next_delay(max(job.attempts, 1), outcome.retry_after_seconds, lambda: draw)
        due = now + timedelta(seconds=delay)
        deadline = self._policy.deadline(first_attempt_at)
        if due > deadline:
            # One last attempt at the deadline, unless the platform asked for a longer pause (as scheduler.py).
            due = max(deadline, now + timedelta(seconds=outcome.retry_after_seconds or 0.0))
        self._requeue(queue, job, due)
