"""The one delivery scheduler (contract §4): when to send each postback, in which request, to whom first.

S2S and the ad platforms differ only in a small strategy, a `Deliverer`: `scheduler.py` (S2S, one
request per postback) and `batch_scheduler.py` (ad platforms: batches, per-row verdicts, credentials).
Everything else is here. It owns no I/O of its own: requests go through a Transport, the verdicts
come from the deliverer and `core/retry_policy.decide`, the health of an endpoint from
`core/circuit_breaker`, the pacing from `rate_limiter`. The Kafka layer feeds it (`submit`), writes
each `FinalOutcome` to `postbacks.results` (`on_final`), and persists `pending()` when it stops;
resubmitting those with their attempts is how a restart resumes.

Queues and isolation: postbacks are queued per destination and deliverer queue key (an S2S host; an
ad account or pixel with one set of credentials), each queue a heap by due time with its own worker
tasks, at most the destination's concurrency limit of them. A destination that answers in 30 s, or
not at all, only ever ties up its own workers; others wait for nothing but the global in-flight
bound. A queue's head that is due opens a batch, sent `linger` later with every row of that queue due
by then, or at once when `max_batch` rows are due (S2S: one row, no linger).

One attempt: each row's precheck (a row held back is not an attempt), the request's credentials, the
breaker of the endpoint (the destination and the deliverer's `breaker_scope`: an S2S URL's path, so one
failing path does not hold back its host's others; an open one defers the rows, never past their
give-up deadline), the request (a malformed
row is rejected alone instead of failing its batch), the rate limit and the slots, the answer
classified row by row, one breaker record per request, and each row decided on its own: a delivered
row is final and never sent again, a row to retry goes back to its queue. A request whose credentials
were refused (`auth_expired`) is repeated at once with fresh ones; a second refusal in a row is final.

Clocks: decisions (due times, give-up age, breaker state, latency) use the injected `clock` (aware UTC
datetimes), so tests and a resumed state agree on one timeline; waits are real `asyncio` sleeps
computed from it. The rate limiter paces in real monotonic time: it only spaces requests out.

A worker whose attempt raises (a bug: a deliverer, a classifier, a credentials resolver) is never
silently gone: the error is logged and counted (`on_task_failure`), the rows it held go back to their
queue as a failed attempt would (or to dead-letter past their age), and the worker carries on; a
worker task that dies anyway is logged, counted and replaced.

Exactly one `on_final` per postback_id: a postback is marked final (and forgotten from the pending
set) before `on_final` is called, and a postback_id that is pending or was finalised is ignored when
submitted again. That dedupe is in memory and bounded; across restarts it is the Kafka layer's job.
A drain lets attempts in flight finish, cuts the rest, and still reports any outcome already decided.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import itertools
import logging
import math
import random
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, NotRequired, Protocol, Self, TypedDict, TypeVar

from dispatchers.core.circuit_breaker import BreakerState, CircuitBreakers
from dispatchers.core.http import DEFAULT_CONNECTION_LIMIT, HttpRequest, HttpResponse, Transport, TransportError
from dispatchers.core.outcome import Outcome, Verdict
from dispatchers.core.retry_policy import FinalResult, RetryAt, RetryPolicy, classify_transport_error, decide
from dispatchers.engine.rate_limiter import ConcurrencyLimits, RateLimiters

log = logging.getLogger(__name__)

# Requests in flight across all destinations. More than the transport's connection pool would only
# queue inside aiohttp, where no per-destination isolation applies, so the default is the pool size.
DEFAULT_MAX_IN_FLIGHT = DEFAULT_CONNECTION_LIMIT
# Finalised postback_ids remembered to ignore a resubmission (a Kafka batch redelivered after a
# rebalance). 100k ids is about 15 MB and covers far more than one uncommitted batch; the durable
# dedupe across restarts belongs to the Kafka layer.
DEFAULT_REMEMBERED_FINALS = 100_000
# drain(): a final outcome already decided when the workers are cancelled gets this long to be
# reported. Without it the destination has the postback and postbacks.results never hears of it, and
# (the dispatcher's state still `pending`) the partition's next owner sends it again. A report is a
# few Kafka writes, milliseconds when Kafka is healthy; when it is not, a stop abandons those writes
# sooner anyway (service/group_member.py STOP_WRITE_GRACE_SECONDS).
FINAL_REPORT_GRACE_SECONDS = 10.0
DEFAULT_STOP_TIMEOUT_SECONDS = 10.0
# A half-open breaker whose probes are still in flight has no `open_until`; other postbacks of that
# endpoint look again this much later (or a tenth of the breaker's open interval, if that is shorter).
# A probe lasts at most the request timeout, and a second of extra delay after an endpoint recovered
# costs nothing.
HALF_OPEN_RECHECK_SECONDS = 1.0
# A worker waiting for a due time looks at the clock at least this often, so a wall-clock step (NTP,
# or a test clock moved forward) is noticed without every idle destination waking up often.
MAX_IDLE_WAIT_SECONDS = 30.0
# The reason of a RETRY outcome whose credentials the destination refused: repeated once with new ones.
AUTH_EXPIRED = "auth_expired"
# What a malformed postback (a missing field, a payout that is not a decimal) raises in a deliverer.
BAD_POSTBACK_ERRORS = (KeyError, TypeError, ValueError, AttributeError)
_DETAIL_LIMIT = 300

Postback = Mapping[str, Any]
QueueKey = tuple[str, ...]  # destination_id, then the deliverer's queue key
C = TypeVar("C")  # what a deliverer authorises its requests with (S2S: nothing, None)


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
    queued: bool = False  # in its queue's heap (False while a worker holds it)
    internal_errors: int = 0  # attempts cut short by a bug: they back off like failed attempts


class CredentialsUnavailable(Exception):
    """No usable credentials for a request; `outcome` says whether retrying can help."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.detail)
        self.outcome = outcome


class Deliverer(Protocol[C]):
    """What differs between S2S and an ad platform: how postbacks are grouped, checked, sent and judged."""

    name: str  # `s2s` or the platform kind, for logs and details
    max_batch: int  # rows in one request at most
    linger: timedelta  # how long a due row waits for batch-mates

    def queue_key(self, postback: Postback) -> tuple[str, ...]:
        """Postbacks of one destination with the same key may share a request (raises for a malformed one)."""
        ...

    def breaker_scope(self, postback: Postback) -> str:
        """What fails on its own within the destination, for its circuit breaker: an S2S URL's path; ""
        for an ad account or pixel (the same for every postback of a queue key that batches rows)."""
        ...

    def precheck(self, postback: Postback, now: datetime) -> Outcome | None:
        """An Outcome when the postback must not be sent now (REJECTED, or RETRY later); None to send it."""
        ...

    async def credentials(self, postback: Postback) -> C:
        """What the request for this postback's queue is authorised with; raises CredentialsUnavailable."""
        ...

    def invalidate(self, credentials: C) -> None:
        """The destination refused `credentials` (`auth_expired`): the next credentials() are new ones."""
        ...

    def build(self, postbacks: Sequence[Postback], credentials: C) -> HttpRequest | Outcome:
        """The request; or an Outcome for every row of an attempt that can send nothing (it still counts).

        Raises for a malformed postback (BAD_POSTBACK_ERRORS): that row is rejected alone, no attempt counted.
        """
        ...

    def classify(
        self, response: HttpResponse, postbacks: Sequence[Postback], now: datetime, credentials: C
    ) -> list[Outcome]:
        """One Outcome per postback, in request order."""
        ...


async def exchange(
    transport: Transport,
    deliverer: Deliverer[C],
    request: HttpRequest | Outcome,
    postbacks: Sequence[Postback],
    credentials: C,
    clock: Callable[[], datetime],
) -> list[Outcome]:
    """Send one request and classify the answer row by row: every row's outcome, never raising for a
    delivery problem (no answer is a transport error for every row; an Outcome is sent nowhere)."""
    if isinstance(request, Outcome):
        return [request] * len(postbacks)
    try:
        response = await transport.send(request)
    except TransportError as err:
        return [classify_transport_error(err)] * len(postbacks)
    return deliverer.classify(response, postbacks, clock(), credentials)


class SchedulerOptions(TypedDict):
    """A Scheduler's arguments besides its Transport and Deliverer (what DeliveryScheduler and
    BatchDeliveryScheduler pass on)."""

    policy: RetryPolicy
    breakers: CircuitBreakers
    rate_limits: RateLimiters
    concurrency: ConcurrencyLimits
    on_final: Callable[[FinalOutcome], Awaitable[None]]
    clock: NotRequired[Callable[[], datetime]]
    rand: NotRequired[Callable[[], float]]
    max_in_flight: NotRequired[int]
    remembered_finals: NotRequired[int]
    on_task_failure: NotRequired[Callable[[str], None]]


@dataclass(slots=True)
class _Queue:
    key: QueueKey
    # (due, submission order, job): the order keeps postbacks due at the same time first-in first-out
    heap: list[tuple[datetime, int, Job]] = field(default_factory=list)
    workers: set[asyncio.Task[None]] = field(default_factory=set)
    busy: int = 0  # workers holding a batch they popped
    # Replaced on every change; waiters hold the old one, so setting it wakes all of them at once.
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def destination_id(self) -> str:
        return self.key[0]

    def wake(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    def due_count(self, now: datetime) -> int:
        return sum(1 for due, _, _ in self.heap if due <= now)


def _final_auth(outcome: Outcome) -> Outcome:
    """A second `auth_expired` in a row: fresh credentials were refused too, so no refresh will fix it."""
    return Outcome(Verdict.REJECTED, AUTH_EXPIRED, outcome.detail, http_status=outcome.http_status)


def _invalid(what: str, exc: Exception) -> Outcome:
    return Outcome(Verdict.REJECTED, "invalid_postback", f"{what}{type(exc).__name__}: {exc}"[:_DETAIL_LIMIT])


class Scheduler(Generic[C]):
    """Delivers postbacks with retries, per-destination isolation, limits and a breaker; `deliverer` says how."""

    def __init__(
        self,
        transport: Transport,
        deliverer: Deliverer[C],
        *,
        policy: RetryPolicy,
        breakers: CircuitBreakers,
        rate_limits: RateLimiters,
        concurrency: ConcurrencyLimits,
        on_final: Callable[[FinalOutcome], Awaitable[None]],
        clock: Callable[[], datetime] = utc_now,
        rand: Callable[[], float] = random.random,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        remembered_finals: int = DEFAULT_REMEMBERED_FINALS,
        on_task_failure: Callable[[str], None] | None = None,
    ) -> None:
        """`on_task_failure(task)` is called for each failure of one of its tasks (`delivery_worker`,
        `report`), already logged: the metric."""
        if max_in_flight < 1 or remembered_finals < 0:
            raise ValueError("max_in_flight must be at least 1 and remembered_finals at least 0")
        self._transport = transport
        self._deliverer = deliverer
        self._policy = policy
        self._breakers = breakers
        self._rate_limits = rate_limits
        self._concurrency = concurrency
        self._on_final = on_final
        self._clock = clock
        self._rand = rand
        self._on_task_failure = on_task_failure
        self._global_slots = asyncio.Semaphore(max_in_flight)
        self._remembered_finals = remembered_finals
        self._jobs: dict[str, Job] = {}  # every postback not yet final, queued or in flight
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._reports: set[asyncio.Task[None]] = set()
        self._queues: dict[QueueKey, _Queue] = {}
        self._order = itertools.count()
        self._started = False
        self._stopping = False

    # --- public API --------------------------------------------------------------------------------------

    def submit(
        self,
        postback: dict[str, Any],
        *,
        attempts: int = 0,
        first_attempt_at: datetime | None = None,
        not_before: datetime | None = None,
        replay: bool = False,
    ) -> None:
        """Queue a matched postback; a postback_id already pending or finalised is ignored, unless `replay`:
        a new delivery cycle of a postback final here (dispatchers/core/replay.py) is taken even if it is
        still remembered as finished.

        `attempts`, `first_attempt_at` and `not_before` resume a postback from `pending()` of an
        earlier run: its age keeps counting from the first attempt. Raises ValueError for a postback
        without a string `postback_id`/`destination_id` or a naive datetime, RuntimeError once stopping.
        A postback whose other fields are malformed is accepted and rejected (`invalid_postback`) when
        its turn comes, so one bad record never stops a batch.
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
        if replay:
            self._finished.pop(postback_id, None)
        if postback_id in self._jobs or postback_id in self._finished:
            return
        now = self._clock()
        due = not_before if not_before is not None and not_before > now else now
        job = Job(postback, postback_id, destination_id, attempts, first_attempt_at, due)
        self._jobs[postback_id] = job
        self._schedule(self._queue_for(job), job, due)

    async def start(self) -> None:
        """Start delivering what was submitted so far and everything submitted from now on."""
        if self._stopping:
            raise RuntimeError("a stopped scheduler cannot be started again")
        self._started = True
        for queue in list(self._queues.values()):
            self._spawn_workers(queue)

    async def drain(self, timeout: float) -> list[PendingPostback]:
        """Stop starting attempts, let in-flight ones finish for up to `timeout` s, cancel the rest.

        Returns `pending()`: what a caller persists. A cancelled attempt counts as an attempt (the
        request may have reached the destination) and is due again at once when resumed.
        """
        self._stopping = True
        queues = list(self._queues.values())
        for queue in queues:
            queue.wake()
        workers = [task for queue in queues for task in queue.workers]
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

    # --- queues and workers ------------------------------------------------------------------------------

    def _queue_for(self, job: Job) -> _Queue:
        try:
            key = (job.destination_id, *self._deliverer.queue_key(job.postback))
        except BAD_POSTBACK_ERRORS:
            # A queue of its own: the postback is rejected when its turn comes, without delaying anyone.
            key = (job.destination_id, f"invalid:{job.postback_id}")
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = _Queue(key)
        return queue

    def _schedule(self, queue: _Queue, job: Job, due: datetime) -> None:
        job.next_attempt_at = due
        job.queued = True
        heapq.heappush(queue.heap, (due, next(self._order), job))
        queue.wake()
        # A worker that is busy sending may be the only one: let another pick the row up when it is due.
        self._spawn_workers(queue)

    def _spawn_workers(self, queue: _Queue) -> None:
        if not self._started or self._stopping:
            return
        # Enough workers for the batches queued, never more than the destination may have in flight. A
        # worker whose queue is empty exits, so an idle destination costs no task.
        batches = math.ceil(len(queue.heap) / self._deliverer.max_batch)
        wanted = min(self._concurrency.limit_for(queue.destination_id), queue.busy + batches)
        while len(queue.workers) < wanted:
            name = f"postback-delivery:{self._deliverer.name}:{queue.destination_id}"
            task = asyncio.create_task(self._run_worker(queue), name=name)
            queue.workers.add(task)
            task.add_done_callback(functools.partial(self._worker_done, queue=queue))

    def _worker_done(self, task: asyncio.Task[None], queue: _Queue) -> None:
        if task.cancelled() or task.exception() is None:
            return
        log.error(
            "delivery worker %s crashed; replaced",
            task.get_name(),
            exc_info=task.exception(),
            extra={"destination_id": queue.destination_id, "kind": self._deliverer.name},
        )
        self._task_failed("delivery_worker")
        if queue.heap and self._queues.get(queue.key) is queue:
            self._spawn_workers(queue)  # its rows still queued get a worker again

    def _task_failed(self, task: str) -> None:
        if self._on_task_failure is not None:
            try:
                self._on_task_failure(task)
            except Exception:
                log.exception("on_task_failure raised")

    async def _run_worker(self, queue: _Queue) -> None:
        linger = self._deliverer.linger
        try:
            while not self._stopping and queue.heap:
                now = self._clock()
                head_due = queue.heap[0][0]
                send_at = head_due + linger
                if head_due > now or (send_at > now and not self._batch_full(queue, now)):
                    # Not due yet, or lingering for batch-mates: wake on a change (more rows, stopping) or in time.
                    wait = (send_at if head_due <= now else head_due) - now
                    changed = queue.changed
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(changed.wait(), min(wait.total_seconds(), MAX_IDLE_WAIT_SECONDS))
                    continue  # re-read the head: an earlier postback may have arrived, or we are stopping
                batch: list[Job] = []
                queue.busy += 1
                try:
                    while queue.heap and queue.heap[0][0] <= now and len(batch) < self._deliverer.max_batch:
                        job = heapq.heappop(queue.heap)[2]
                        job.queued = False
                        batch.append(job)
                    await self._attempt(queue, batch)
                except Exception as exc:  # a bug: its rows are retried later, the worker carries on
                    log.exception(
                        "a %s attempt for %s raised; its postbacks are retried later",
                        self._deliverer.name,
                        queue.destination_id,
                        extra={"destination_id": queue.destination_id, "kind": self._deliverer.name},
                    )
                    self._task_failed("delivery_worker")
                    await self._recover(queue, batch, exc)
                finally:
                    queue.busy -= 1
        finally:
            current = asyncio.current_task()
            if current is not None:
                queue.workers.discard(current)
            if not queue.workers and not queue.heap and self._queues.get(queue.key) is queue:
                del self._queues[queue.key]

    async def _recover(self, queue: _Queue, batch: list[Job], exc: Exception) -> None:
        """An attempt cut short by a bug: each of its rows still pending and not queued again goes back to
        its queue as after a failed attempt (backing off, so a row that always raises costs little),
        or to dead-letter past its age; none is left behind."""
        now = self._clock()
        outcome = Outcome(Verdict.RETRY, "internal_error", f"{type(exc).__name__}: {exc}"[:_DETAIL_LIMIT])
        for job in batch:
            if self._jobs.get(job.postback_id) is not job or job.queued:
                continue  # final already, or back in its queue
            first_attempt_at = job.first_attempt_at = job.first_attempt_at or now
            job.last_outcome = outcome
            job.internal_errors += 1
            if self._policy.give_up(first_attempt_at, now):
                await self._finalize(job, "dead_lettered", outcome, now, first_attempt_at)
                continue
            delay = self._policy.next_delay(job.attempts + job.internal_errors, None, self._rand)
            self._schedule(queue, job, min(now + timedelta(seconds=delay), self._policy.deadline(first_attempt_at)))

    def _batch_full(self, queue: _Queue, now: datetime) -> bool:
        # The length check first: the scan only runs once the heap could hold a full batch.
        max_batch = self._deliverer.max_batch
        return len(queue.heap) >= max_batch and queue.due_count(now) >= max_batch

    # --- one attempt -------------------------------------------------------------------------------------

    async def _attempt(self, queue: _Queue, batch: list[Job]) -> None:
        now = self._clock()
        sendable: list[Job] = []
        held: list[tuple[Job, Outcome]] = []
        for job in batch:
            try:
                verdict = self._deliverer.precheck(job.postback, now)
            except BAD_POSTBACK_ERRORS as exc:
                verdict = _invalid("", exc)
            if verdict is None:
                sendable.append(job)
                continue
            if verdict.verdict is Verdict.RETRY and job.first_attempt_at is None:
                job.first_attempt_at = now  # nothing was sent, so no attempt is counted; the age starts
            held.append((job, verdict))
        await self._settle(queue, held)
        if not sendable:
            return
        try:
            credentials = await self._deliverer.credentials(sendable[0].postback)
        except CredentialsUnavailable as exc:
            await self._settle_all(queue, sendable, exc.outcome, count_attempt=True)
            return
        scope = self._breaker_scope(sendable[0].postback)
        if await self._breaker_allows(queue, sendable, now, scope):
            await self._send(queue, sendable, credentials, scope)

    def _breaker_scope(self, postback: Postback) -> str:
        try:
            return self._deliverer.breaker_scope(postback)
        except BAD_POSTBACK_ERRORS:
            return ""  # the destination's breaker: such a postback is rejected when its request is built

    async def _breaker_allows(self, queue: _Queue, jobs: list[Job], now: datetime, scope: str) -> bool:
        destination_id = queue.destination_id
        breaker_now = now.timestamp()
        if self._breakers.allow(destination_id, breaker_now, scope):
            return True
        # Not an attempt: nothing is sent. The age still starts, so a postback for an endpoint that stays
        # down is dead-lettered after max_age instead of being parked behind the breaker forever. It waits
        # for the breaker's next probe rather than spinning, but not past its give-up deadline.
        breaker = self._breakers.get(destination_id, breaker_now, scope)
        open_until = breaker.open_until
        recheck = min(HALF_OPEN_RECHECK_SECONDS, breaker.config.cooldown_seconds / 10)
        due = datetime.fromtimestamp(open_until, UTC) if open_until is not None else now + timedelta(seconds=recheck)
        for job in jobs:
            if job.first_attempt_at is None:
                job.first_attempt_at = now
            if self._policy.give_up(job.first_attempt_at, now):
                outcome = job.last_outcome or Outcome(
                    Verdict.RETRY, "circuit_open", f"circuit breaker open for {destination_id}"
                )
                await self._finalize(job, "dead_lettered", outcome, now, job.first_attempt_at)
            else:
                self._schedule(queue, job, min(due, self._policy.deadline(job.first_attempt_at)))
        return False

    async def _send(self, queue: _Queue, jobs: list[Job], credentials: C, scope: str) -> None:
        """One request for `jobs`, plus one immediate repeat with new credentials if they were refused."""
        destination_id = queue.destination_id
        refreshed = False
        while True:
            jobs, request = await self._prepare(jobs, credentials)
            if request is None:
                return
            await self._rate_limits.acquire(destination_id)
            async with self._global_slots, self._concurrency.slot(destination_id):
                if self._stopping:  # stopped while waiting for the rate limit or a slot: nothing was sent
                    for job in jobs:
                        self._schedule(queue, job, job.next_attempt_at)
                    return
                outcomes = await self._exchange(jobs, request, credentials)
            expired = [o.verdict is Verdict.RETRY and o.reason == AUTH_EXPIRED for o in outcomes]
            self._record_health(destination_id, scope, outcomes, any(expired))
            rows = list(zip(jobs, outcomes, expired, strict=True))
            if any(expired) and not refreshed:
                self._deliverer.invalidate(credentials)
                await self._settle(queue, [(job, outcome) for job, outcome, is_expired in rows if not is_expired])
                retry = [job for job, _, is_expired in rows if is_expired]
                try:
                    credentials = await self._deliverer.credentials(retry[0].postback)
                except CredentialsUnavailable as exc:
                    await self._settle_all(queue, retry, exc.outcome, count_attempt=False)
                    return
                jobs, refreshed = retry, True
                continue
            await self._settle(
                queue, [(job, _final_auth(outcome) if is_expired else outcome) for job, outcome, is_expired in rows]
            )
            return

    async def _prepare(self, jobs: list[Job], credentials: C) -> tuple[list[Job], HttpRequest | Outcome | None]:
        """The request for `jobs`; a malformed postback is rejected alone instead of failing its batch."""
        build = self._deliverer.build
        try:
            return jobs, build([job.postback for job in jobs], credentials)
        except BAD_POSTBACK_ERRORS:
            pass
        good: list[Job] = []
        for job in jobs:
            try:
                build([job.postback], credentials)
            except BAD_POSTBACK_ERRORS as exc:
                now = self._clock()
                outcome = _invalid(f"cannot build a {self._deliverer.name} request: ", exc)
                await self._finalize(job, "rejected", outcome, now, job.first_attempt_at or now)
            else:
                good.append(job)
        return good, build([job.postback for job in good], credentials) if good else None

    async def _exchange(self, jobs: list[Job], request: HttpRequest | Outcome, credentials: C) -> list[Outcome]:
        """Send the request (counting an attempt for each row first) and classify the answer row by row."""
        started = self._clock()
        for job in jobs:
            if job.first_attempt_at is None:
                job.first_attempt_at = started
            job.attempts += 1  # counted before sending: a cancelled request may still have arrived
            job.next_attempt_at = started
        postbacks = [job.postback for job in jobs]
        try:
            return await exchange(self._transport, self._deliverer, request, postbacks, credentials, self._clock)
        except asyncio.CancelledError:
            cancelled = Outcome(
                Verdict.RETRY, "cancelled", "request cancelled when the scheduler stopped; its result is unknown"
            )
            stopped = self._clock()
            for job in jobs:
                job.last_outcome = cancelled
                job.next_attempt_at = stopped
            raise
        except Exception as exc:  # a bug in a transport or a classifier must cost a retry, not the worker
            log.exception("a %s request for %s raised", self._deliverer.name, jobs[0].destination_id)
            return [Outcome(Verdict.RETRY, "internal_error", f"{type(exc).__name__}: {exc}"[:_DETAIL_LIMIT])] * len(
                jobs
            )

    def _record_health(
        self, destination_id: str, scope: str, outcomes: list[Outcome], credentials_refused: bool
    ) -> None:
        """One breaker record per request: a failure when every row is to be retried (a refused token
        aside, which says nothing about the endpoint); a success when anything was answered, even a
        rejection; nothing for a rejection before any answer (an invalid URL, a refused target)."""
        now = self._clock().timestamp()
        if all(o.verdict is Verdict.RETRY for o in outcomes) and not credentials_refused:
            success = False
        elif any(o.http_status is not None for o in outcomes):
            success = True
        else:
            return
        breaker = self._breakers.get(destination_id, now, scope)
        before = breaker.state
        breaker.record(success, now)
        after = breaker.state
        if after is before:
            return  # openings (a half-open round that failed too) and closings are what an operator needs
        where = f"{destination_id}{scope}"
        context = {"destination_id": destination_id, "kind": self._deliverer.name}
        if after is BreakerState.OPEN:
            wait = max((breaker.open_until or now) - now, 0.0)
            log.warning("circuit breaker of %s open; next probe in %.1fs", where, wait, extra=context)
        elif after is BreakerState.CLOSED:
            log.info("circuit breaker of %s closed", where, extra=context)

    # --- verdicts ----------------------------------------------------------------------------------------

    async def _settle_all(self, queue: _Queue, jobs: list[Job], outcome: Outcome, *, count_attempt: bool) -> None:
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
        """Each row final, or back in its queue when due again (dispatchers/core/retry_policy.decide)."""
        if not results:
            return
        now = self._clock()
        # One draw per request: rows retried together come back together and go out as one batch again.
        draw = self._rand()
        # Every row is decided before anything is awaited: a worker cancelled by drain() while one row
        # is being reported must not leave its batch-mates, answered too, pending (sent again).
        reports: list[asyncio.Task[None]] = []
        for job, outcome in results:
            first_attempt_at = job.first_attempt_at or now
            job.last_outcome = outcome
            decision = decide(outcome, job.attempts, first_attempt_at, now, self._policy, draw)
            if isinstance(decision, RetryAt):
                self._schedule(queue, job, decision.when)
            else:
                report = self._mark_final(job, decision.result, outcome, now, first_attempt_at)
                if report is not None:
                    reports.append(report)
        if reports:
            await asyncio.shield(asyncio.gather(*reports))

    async def _finalize(
        self, job: Job, result: FinalResult, outcome: Outcome, now: datetime, first_attempt_at: datetime
    ) -> None:
        report = self._mark_final(job, result, outcome, now, first_attempt_at)
        if report is not None:
            await asyncio.shield(report)

    def _mark_final(
        self, job: Job, result: FinalResult, outcome: Outcome, now: datetime, first_attempt_at: datetime
    ) -> asyncio.Task[None] | None:
        """Final from now on (out of pending(), a resubmission ignored), and its report started; None if it was
        final already."""
        if self._jobs.pop(job.postback_id, None) is None:
            return None
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
        # Reported in its own task, awaited shielded: cancelling a worker in drain() must not cut off the
        # record of a postback the destination already has. The worker still waits for it, so a slow
        # on_final (a producer under back-pressure) slows this destination's deliveries down.
        report = asyncio.create_task(self._report(final), name=f"postback-final:{job.postback_id}")
        self._reports.add(report)
        report.add_done_callback(self._reports.discard)
        return report

    async def _report(self, final: FinalOutcome) -> None:
        try:
            await self._on_final(final)
        except Exception:
            # The postback's durable state stays what on_final left it (the dispatcher: pending, or decided
            # once the answer is recorded), which the partition's next owner resumes; here it is logged and
            # counted, and the worker carries on.
            log.exception("on_final failed for postback %s", final.postback.get("postback_id"))
            self._task_failed("report")
