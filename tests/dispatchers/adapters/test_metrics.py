"""The dispatchers' metrics: attempts and durations per request, reasons, end-to-end time, gauges."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import CollectorRegistry

import dispatchers.adapters.metrics as metrics_module
from dispatchers.adapters.handler_transport import HandlerTransport
from dispatchers.adapters.metrics import DispatcherGauges, DispatcherMetrics, MeteredTransport, bounded_reason
from dispatchers.core.circuit_breaker import BreakerState
from dispatchers.core.http import HttpRequest, HttpResponse, TransportError

ATTEMPTS = "postback_delivery_attempts_total"
DURATION = "postback_delivery_duration_seconds"
END_TO_END = "postback_end_to_end_seconds"
NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)


class FakeClock:
    """Stands in for the `time` module of dispatchers.adapters.metrics: perf_counter moves only when told."""

    def __init__(self) -> None:
        self.now = 100.0

    def perf_counter(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(metrics_module, "time", fake)
    return fake


@pytest.fixture
def metrics() -> DispatcherMetrics:
    return DispatcherMetrics(CollectorRegistry())


def value(metrics: DispatcherMetrics, name: str, **labels: str) -> float:
    sample = metrics.registry.get_sample_value(name, labels)
    return 0.0 if sample is None else sample


def answering(*statuses: int) -> HandlerTransport:
    queue = list(statuses)

    async def handler(request: HttpRequest) -> HttpResponse:
        return HttpResponse(queue.pop(0), {}, b"")

    return HandlerTransport(handler)


def failing(error: Exception) -> HandlerTransport:
    async def handler(request: HttpRequest) -> HttpResponse:
        raise error

    return HandlerTransport(handler)


REQUEST = HttpRequest("GET", "http://pb.example/postback?clickid=1")


# --- MeteredTransport ---------------------------------------------------------------------------------


async def test_responses_are_counted_by_status_class(metrics: DispatcherMetrics) -> None:
    inner = answering(200, 204, 404, 400, 429, 503, 302)
    transport = MeteredTransport(inner, metrics, "s2s")
    statuses = [(await transport.send(REQUEST)).status for _ in range(7)]
    assert statuses == [200, 204, 404, 400, 429, 503, 302]
    assert len(inner.requests) == 7  # passed on, not answered by the wrapper
    assert value(metrics, ATTEMPTS, kind="s2s", result="2xx") == 2
    assert value(metrics, ATTEMPTS, kind="s2s", result="4xx") == 3
    assert value(metrics, ATTEMPTS, kind="s2s", result="5xx") == 1
    assert value(metrics, ATTEMPTS, kind="s2s", result="3xx") == 1
    assert value(metrics, ATTEMPTS, kind="s2s", result="timeout") == 0
    assert value(metrics, ATTEMPTS, kind="s2s", result="error") == 0
    assert value(metrics, ATTEMPTS, kind="meta", result="2xx") == 0


async def test_every_result_label_exists_from_the_start(metrics: DispatcherMetrics) -> None:
    # a rate() over a counter that appears only at its first increment misses that increment
    MeteredTransport(answering(), metrics, "tiktok")
    for result in ("1xx", "2xx", "3xx", "4xx", "5xx", "timeout", "error"):
        assert metrics.registry.get_sample_value(ATTEMPTS, {"kind": "tiktok", "result": result}) == 0.0


async def test_a_status_outside_http_ranges_counts_as_error(metrics: DispatcherMetrics) -> None:
    transport = MeteredTransport(answering(999), metrics, "s2s")
    assert (await transport.send(REQUEST)).status == 999
    assert value(metrics, ATTEMPTS, kind="s2s", result="error") == 1


async def test_a_timeout_is_counted_as_timeout_and_re_raised(metrics: DispatcherMetrics) -> None:
    transport = MeteredTransport(failing(TransportError("timeout", "no answer")), metrics, "meta")
    with pytest.raises(TransportError) as caught:
        await transport.send(REQUEST)
    assert caught.value.kind == "timeout"
    assert value(metrics, ATTEMPTS, kind="meta", result="timeout") == 1
    assert value(metrics, ATTEMPTS, kind="meta", result="error") == 0


async def test_handler_transport_timeout_is_counted_as_timeout(metrics: DispatcherMetrics) -> None:
    async def never(request: HttpRequest) -> HttpResponse:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    transport = MeteredTransport(HandlerTransport(never), metrics, "s2s")
    with pytest.raises(TransportError):
        await transport.send(HttpRequest("GET", "http://pb.example/x", timeout_seconds=0.01))
    assert value(metrics, ATTEMPTS, kind="s2s", result="timeout") == 1


@pytest.mark.parametrize("kind", ["connect", "refused_target", "other"])
async def test_other_transport_errors_are_counted_as_error_and_re_raised(metrics: DispatcherMetrics, kind: str) -> None:
    error = TransportError(kind, "boom")  # type: ignore[arg-type]
    transport = MeteredTransport(failing(error), metrics, "google_ads")
    with pytest.raises(TransportError) as caught:
        await transport.send(REQUEST)
    assert caught.value is error
    assert value(metrics, ATTEMPTS, kind="google_ads", result="error") == 1
    assert value(metrics, ATTEMPTS, kind="google_ads", result="timeout") == 0


async def test_a_bug_in_a_transport_still_counts_an_attempt(metrics: DispatcherMetrics) -> None:
    transport = MeteredTransport(failing(RuntimeError("bug")), metrics, "s2s")
    with pytest.raises(RuntimeError):
        await transport.send(REQUEST)
    assert value(metrics, ATTEMPTS, kind="s2s", result="error") == 1


async def test_durations_are_observed_for_answers_and_failures(metrics: DispatcherMetrics, clock: FakeClock) -> None:
    async def slow_ok(request: HttpRequest) -> HttpResponse:
        clock.now += 0.3
        return HttpResponse(200, {}, b"")

    async def slow_fail(request: HttpRequest) -> HttpResponse:
        clock.now += 2.0
        raise TransportError("connect", "reset")

    await MeteredTransport(HandlerTransport(slow_ok), metrics, "s2s").send(REQUEST)
    with pytest.raises(TransportError):
        await MeteredTransport(HandlerTransport(slow_fail), metrics, "s2s").send(REQUEST)
    assert value(metrics, f"{DURATION}_count", kind="s2s") == 2
    assert value(metrics, f"{DURATION}_sum", kind="s2s") == pytest.approx(2.3)
    assert value(metrics, f"{DURATION}_bucket", kind="s2s", le="0.25") == 0
    assert value(metrics, f"{DURATION}_bucket", kind="s2s", le="0.5") == 1
    assert value(metrics, f"{DURATION}_bucket", kind="s2s", le="1.0") == 1
    assert value(metrics, f"{DURATION}_bucket", kind="s2s", le="2.5") == 2
    assert value(metrics, f"{DURATION}_count", kind="meta") == 0


# --- bounded_reason -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reason", ["http_503", "INVALID_ARGUMENT", "timeout", "ssrf.refused", "a", "x" * 48, "OAuthException_190"]
)
def test_bounded_reason_keeps_safe_codes(reason: str) -> None:
    assert bounded_reason(reason) == reason


@pytest.mark.parametrize(
    "reason",
    [
        "",
        "x" * 49,
        "invalid click id",
        "http 503",
        "user@example.com",
        "http://pb.example/?clickid=1",
        "ünïcode",
        "a-b",
        'quote"d',
    ],
)
def test_bounded_reason_maps_anything_else_to_other(reason: str) -> None:
    assert bounded_reason(reason) == "other"


def test_bounded_reason_refuses_a_trailing_newline() -> None:
    assert bounded_reason("http_503\n") == "other"


# --- delivered_at -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("occurred_at", "seconds"),
    [
        pytest.param("2025-03-01T11:59:58Z", 2.0, id="z-suffix"),
        pytest.param("2025-03-01T11:59:58.5+00:00", 1.5, id="offset-utc"),
        pytest.param("2025-03-01T13:59:00+02:00", 60.0, id="other-offset"),
        pytest.param("2025-03-01T11:00:00", 3600.0, id="naive-is-utc"),
        pytest.param("2025-02-28T12:00:00Z", 86400.0, id="a-day"),
    ],
)
def test_delivered_at_observes_occurred_at_to_now(metrics: DispatcherMetrics, occurred_at: str, seconds: float) -> None:
    metrics.delivered_at("s2s", occurred_at, NOW)
    assert value(metrics, f"{END_TO_END}_count", kind="s2s") == 1
    assert value(metrics, f"{END_TO_END}_sum", kind="s2s") == pytest.approx(seconds)


def test_delivered_at_clamps_a_future_occurred_at_to_zero(metrics: DispatcherMetrics) -> None:
    metrics.delivered_at("meta", (NOW + timedelta(minutes=5)).isoformat(), NOW)
    assert value(metrics, f"{END_TO_END}_count", kind="meta") == 1
    assert value(metrics, f"{END_TO_END}_sum", kind="meta") == 0.0
    assert value(metrics, f"{END_TO_END}_bucket", kind="meta", le="0.05") == 1


@pytest.mark.parametrize("occurred_at", [None, 1740830400, 1740830400.5, NOW, ["2025-03-01"], "", "yesterday"])
def test_delivered_at_ignores_non_strings_and_garbage(metrics: DispatcherMetrics, occurred_at: object) -> None:
    metrics.delivered_at("s2s", occurred_at, NOW)
    assert value(metrics, f"{END_TO_END}_count", kind="s2s") == 0


# --- DispatcherGauges ---------------------------------------------------------------------------------


def test_gauges_are_read_when_collected(metrics: DispatcherMetrics) -> None:
    pending: dict[str, int] = {"s2s": 3, "meta": 0}
    breakers: dict[str, BreakerState] = {
        "pb.example": BreakerState.OPEN,
        "act_123": BreakerState.HALF_OPEN,
        "tracker.example": BreakerState.CLOSED,
    }

    def pending_now() -> Iterable[tuple[str, int]]:
        return list(pending.items())

    def breakers_now() -> Iterable[tuple[str, BreakerState]]:
        return list(breakers.items())

    metrics.registry.register(DispatcherGauges(pending_now, breakers_now))
    registry = metrics.registry
    assert registry.get_sample_value("postback_deliveries_pending", {"kind": "s2s"}) == 3
    assert registry.get_sample_value("postback_deliveries_pending", {"kind": "meta"}) == 0
    assert registry.get_sample_value("postback_circuit_open", {"destination": "pb.example"}) == 1
    assert registry.get_sample_value("postback_circuit_open", {"destination": "act_123"}) == 1
    assert registry.get_sample_value("postback_circuit_open", {"destination": "tracker.example"}) == 0

    # the next scrape reads the current values, and forgets what is gone
    pending["s2s"] = 7
    breakers["pb.example"] = BreakerState.CLOSED
    del breakers["act_123"]
    assert registry.get_sample_value("postback_deliveries_pending", {"kind": "s2s"}) == 7
    assert registry.get_sample_value("postback_circuit_open", {"destination": "pb.example"}) == 0
    assert registry.get_sample_value("postback_circuit_open", {"destination": "act_123"}) is None


def test_gauges_with_nothing_to_report(metrics: DispatcherMetrics) -> None:
    metrics.registry.register(DispatcherGauges(list, list))
    names = {family.name for family in metrics.registry.collect()}
    assert {"postback_deliveries_pending", "postback_circuit_open"} <= names
    assert metrics.registry.get_sample_value("postback_deliveries_pending", {"kind": "s2s"}) is None


def test_back_pressure_gauge_and_task_failures(metrics: DispatcherMetrics) -> None:
    """Issue 8, defect 5: a paused kind shows; a delivery task that failed is counted."""
    paused = {"s2s": True, "meta": False}
    metrics.registry.register(DispatcherGauges(list, list, paused=lambda: list(paused.items())))
    registry = metrics.registry
    assert registry.get_sample_value("postback_dispatch_paused", {"kind": "s2s"}) == 1
    assert registry.get_sample_value("postback_dispatch_paused", {"kind": "meta"}) == 0
    paused["s2s"] = False
    assert registry.get_sample_value("postback_dispatch_paused", {"kind": "s2s"}) == 0
    metrics.task_failures.labels("s2s", "delivery_worker").inc()
    labels = {"kind": "s2s", "task": "delivery_worker"}
    assert registry.get_sample_value("postback_dispatch_task_failures_total", labels) == 1
