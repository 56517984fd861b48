"""The dispatchers' Prometheus metrics, one set per process whatever the number of kinds it runs.

Label values are bounded: kinds, outcomes, HTTP status classes, reason codes (capped to a safe
shape), and destinations (a traffic source's host or a platform account, as configured in rules).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, date, datetime

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from dispatchers.core.circuit_breaker import BreakerState
from dispatchers.core.http import HttpRequest, HttpResponse, Transport, TransportError
from dispatchers.platforms.api_versions import days_to_sunset

_REASON = re.compile(r"^[A-Za-z0-9_.]{1,48}$")
# From a fast loopback answer to the delivery timeout's upper range.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# Conversion to delivery: seconds when all is well, hours when a destination was down, days for a
# late status update of an old conversion.
END_TO_END_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600, 7 * 86400)


def bounded_reason(reason: str) -> str:
    return reason if _REASON.fullmatch(reason) else "other"


class DispatcherMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.deliveries = Counter(
            "postback_deliveries_total",
            "Postbacks that reached their final outcome (delivered, rejected, dead_lettered), by kind.",
            ["kind", "outcome"],
            registry=registry,
        )
        self.dead_letters = Counter(
            "postback_dead_letter_total",
            "Records written to postbacks.dead-letter, by kind and reason.",
            ["kind", "reason"],
            registry=registry,
        )
        self.attempts = Counter(
            "postback_delivery_attempts_total",
            "HTTP requests to destinations, by kind and result (2xx, 3xx, 4xx, 5xx, timeout, error).",
            ["kind", "result"],
            registry=registry,
        )
        self.duration = Histogram(
            "postback_delivery_duration_seconds",
            "Duration of one HTTP request to a destination (a batch counts once).",
            ["kind"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.end_to_end = Histogram(
            "postback_end_to_end_seconds",
            "From the conversion's occurred_at to its postback's delivery.",
            ["kind"],
            buckets=END_TO_END_BUCKETS,
            registry=registry,
        )
        self.duplicates = Counter(
            "postback_duplicates_skipped_total",
            "Postbacks consumed again that already had a delivery state (not delivered twice).",
            ["kind"],
            registry=registry,
        )
        self.replays = Counter(
            "postback_replay_requests_total",
            "Replay requests taken from postbacks.<kind>, by kind and decision: start (a new delivery cycle), "
            "delivered (refused: it was delivered), duplicate (a request read again), not_final (ignored: "
            "still being delivered), unknown (ignored: no delivery state), invalid (to dead-letter).",
            ["kind", "decision"],
            registry=registry,
        )
        self.task_failures = Counter(
            "postback_dispatch_task_failures_total",
            "Delivery tasks that raised (logged; the task carries on or is replaced, its postbacks retried), "
            "by kind and task: delivery_worker, report.",
            ["kind", "task"],
            registry=registry,
        )

    def delivered_at(self, kind: str, occurred_at: object, now: datetime) -> None:
        if isinstance(occurred_at, str):
            try:
                moment = datetime.fromisoformat(occurred_at.replace("Z", "+00:00"))
            except ValueError:
                return
            if moment.utcoffset() is None:
                moment = moment.replace(tzinfo=UTC)
            self.end_to_end.labels(kind).observe(max((now - moment).total_seconds(), 0.0))


class DispatcherGauges(Collector):
    """Gauges read when scraped: pending postbacks and back-pressure per kind, circuit state per destination."""

    def __init__(
        self,
        pending: Callable[[], Iterable[tuple[str, int]]],
        breakers: Callable[[], Iterable[tuple[str, BreakerState]]],
        paused: Callable[[], Iterable[tuple[str, bool]]] = lambda: (),
    ) -> None:
        self._pending = pending
        self._breakers = breakers
        self._paused = paused

    def collect(self) -> Iterable[GaugeMetricFamily]:
        pending = GaugeMetricFamily(
            "postback_deliveries_pending",
            "Postbacks accepted and not yet final (queued, retrying, in flight).",
            labels=["kind"],
        )
        for kind, count in self._pending():
            pending.add_metric([kind], count)
        circuits = GaugeMetricFamily(
            "postback_circuit_open",
            "1 while a destination's circuit breaker is open or half-open (not hammered), 0 when closed.",
            labels=["destination"],
        )
        for destination, state in self._breakers():
            circuits.add_metric([destination], 0.0 if state is BreakerState.CLOSED else 1.0)
        paused = GaugeMetricFamily(
            "postback_dispatch_paused",
            "1 while the dispatcher of a kind does not fetch postbacks: it holds DISPATCH_MAX_PENDING not final "
            "(back-pressure), until they are down to DISPATCH_RESUME_PENDING.",
            labels=["kind"],
        )
        for kind, is_paused in self._paused():
            paused.add_metric([kind], 1.0 if is_paused else 0.0)
        yield pending
        yield circuits
        yield paused

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []


class ApiVersionSunsetGauge(Collector):
    """`postback_platform_api_days_to_sunset{kind,version}`: days left until the platform turns the API
    version a dispatcher calls off, computed when scraped (negative once past). A version without a
    published sunset date has no sample: there is no number to give, and no series means no alert.
    """

    def __init__(self, versions: Mapping[str, str], today: Callable[[], date]) -> None:
        self._versions = dict(versions)  # kind -> version
        self._today = today

    def collect(self) -> Iterable[GaugeMetricFamily]:
        gauge = GaugeMetricFamily(
            "postback_platform_api_days_to_sunset",
            "Days until the platform sunsets the API version the dispatcher calls (negative: past); "
            "no sample when no sunset date is known.",
            labels=["kind", "version"],
        )
        today = self._today()
        for kind, version in sorted(self._versions.items()):
            days = days_to_sunset(kind, version, today)
            if days is not None:
                gauge.add_metric([kind, version], float(days))
        yield gauge

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []


class MeteredTransport:
    """A Transport that counts and times every request it passes on, by kind."""

    def __init__(self, inner: Transport, metrics: DispatcherMetrics, kind: str) -> None:
        self._inner = inner
        self._attempts = {result: metrics.attempts.labels(kind, result) for result in _RESULTS}
        self._duration = metrics.duration.labels(kind)

    async def send(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        try:
            response = await self._inner.send(request)
        except TransportError as error:
            self._attempts["timeout" if error.kind == "timeout" else "error"].inc()
            raise
        except Exception:  # a bug in a transport still cost an attempt (the schedulers retry it)
            self._attempts["error"].inc()
            raise
        finally:
            self._duration.observe(time.perf_counter() - started)
        self._attempts[_status_class(response.status)].inc()
        return response


_RESULTS = ("1xx", "2xx", "3xx", "4xx", "5xx", "timeout", "error")


def _status_class(status: int) -> str:
    return f"{status // 100}xx" if 100 <= status < 600 else "error"
