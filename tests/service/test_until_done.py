"""kafka_io.until_done: retries a Kafka write until it succeeds, telling `on_result` about it."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

import service.kafka_io as kafka_io
from service.consumer_health import KafkaHealth
from service.kafka_io import until_done
from service.ops_http import Readiness


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kafka_io, "RETRY_INITIAL_SECONDS", 0.0001)


class Flaky:
    """Fails `failures` times, then answers `result`."""

    def __init__(self, failures: int, result: object = "ok") -> None:
        self.failures = failures
        self.result = result
        self.calls = 0

    async def __call__(self) -> object:
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError(f"broker unreachable ({self.calls})")
        return self.result


async def test_first_try_succeeds_without_on_result_calls() -> None:
    heard: list[tuple[str, bool]] = []
    operation = Flaky(0, result={"offset": 7})
    assert await until_done(operation, "produce", lambda what, ok: heard.append((what, ok))) == {"offset": 7}
    assert operation.calls == 1
    assert heard == []


async def test_each_failure_then_one_success_are_reported() -> None:
    heard: list[tuple[str, bool]] = []
    operation = Flaky(3, result=[1, 2])
    assert await until_done(operation, "changelog", lambda what, ok: heard.append((what, ok))) == [1, 2]
    assert operation.calls == 4
    assert heard == [("changelog", False)] * 3 + [("changelog", True)]


async def test_without_on_result_it_still_retries() -> None:
    operation = Flaky(2)
    assert await until_done(operation, "results") == "ok"
    assert operation.calls == 3


async def test_the_retry_delay_starts_at_the_initial_value_and_doubles(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kafka_io, "RETRY_INITIAL_SECONDS", 0.001)
    monkeypatch.setattr(kafka_io, "RETRY_MAX_SECONDS", 0.003)
    delays: list[float] = []
    real_sleep = asyncio.sleep

    async def recording_sleep(delay: float) -> None:
        delays.append(delay)
        await real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", recording_sleep)  # the module kafka_io calls
    await until_done(Flaky(4), "produce")
    assert delays == [0.001, 0.002, 0.003, 0.003]


async def test_cancellation_is_not_retried_nor_reported() -> None:
    heard: list[tuple[str, bool]] = []
    calls = 0

    async def cancelled() -> None:
        nonlocal calls
        calls += 1
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await until_done(cancelled, "produce", lambda what, ok: heard.append((what, ok)))
    assert calls == 1
    assert heard == []


async def test_kafka_health_as_on_result() -> None:
    registry = CollectorRegistry()
    readiness = Readiness(registry, ["kafka"])
    readiness.set("kafka", True)
    seen_ready: list[bool] = []
    operation = Flaky(2)

    async def watched() -> object:
        seen_ready.append(readiness.ready)
        return await operation()

    await until_done(watched, "produce", KafkaHealth(registry, readiness))
    assert seen_ready == [True, False, False]  # not ready while the write keeps failing
    assert readiness.ready
    assert registry.get_sample_value("postback_kafka_retries_total", {"operation": "produce"}) == 2
