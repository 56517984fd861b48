"""The ops endpoints: /metrics, /healthz, /readyz, the readiness checks and the server on HTTP_PORT."""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter

from postback_router.embedded_broker import free_loopback_port
from schemas.version import __version__
from service.ops_http import (
    ListenError,
    Liveness,
    OpsServer,
    Readiness,
    add_ops_routes,
    check_listen,
    new_registry,
    ops_server,
)

# --- Readiness ----------------------------------------------------------------------------------------


def test_not_ready_until_every_check_holds() -> None:
    registry = CollectorRegistry()
    readiness = Readiness(registry, ["kafka", "state"])
    assert readiness.checks() == {"kafka": False, "state": False}
    assert not readiness.ready
    assert registry.get_sample_value("postback_ready") == 0.0
    readiness.set("kafka", True)
    assert not readiness.ready
    assert registry.get_sample_value("postback_ready") == 0.0
    readiness.set("state", True)
    assert readiness.ready
    assert registry.get_sample_value("postback_ready") == 1.0
    readiness.set("kafka", False)  # a check can fail again later
    assert not readiness.ready
    assert readiness.checks() == {"kafka": False, "state": True}
    assert registry.get_sample_value("postback_ready") == 0.0


def test_no_checks_is_never_ready() -> None:
    registry = CollectorRegistry()
    assert not Readiness(registry, []).ready
    assert registry.get_sample_value("postback_ready") == 0.0


def test_unknown_check_raises() -> None:
    readiness = Readiness(CollectorRegistry(), ["kafka"])
    with pytest.raises(KeyError, match="katka"):
        readiness.set("katka", True)
    assert readiness.checks() == {"kafka": False}


def test_checks_returns_a_copy() -> None:
    readiness = Readiness(CollectorRegistry(), ["kafka"])
    readiness.checks()["kafka"] = True
    assert not readiness.ready


def test_a_failing_check_can_say_why_until_it_is_set_again() -> None:
    readiness = Readiness(CollectorRegistry(), ["kafka", "state"])
    readiness.set("state", False, "restoring app-changelog partitions [0] failed (ConnectionError); retrying in 1s")
    assert readiness.reasons() == {
        "state": "restoring app-changelog partitions [0] failed (ConnectionError); retrying in 1s"
    }
    readiness.set("state", False)  # failing still, no reason given now
    assert readiness.reasons() == {}
    readiness.set("state", True, "ignored: the check holds")
    assert readiness.reasons() == {}


# --- Liveness -----------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_loop_is_stalled_once_it_has_had_work_longer_than_the_stall_timeout() -> None:
    clock = FakeClock()
    liveness = Liveness(stall_timeout_seconds=60, clock=clock)
    assert liveness.stalled() == {}
    clock.now += 3600  # idle for an hour: not stalled, there was nothing to do
    assert liveness.stalled() == {}
    liveness.busy("consumer:s2s")
    clock.now += 30
    liveness.busy("consumer:s2s")  # still the same work: the clock does not restart
    liveness.busy("consumer:meta")
    clock.now += 30
    assert liveness.stalled() == {}  # exactly the timeout is not over it
    clock.now += 1
    assert liveness.stalled() == {"consumer:s2s": 61}
    liveness.done("consumer:s2s")  # a batch completed
    assert liveness.stalled() == {}
    clock.now += 30
    assert liveness.stalled() == {"consumer:meta": 61}


# --- new_registry -------------------------------------------------------------------------------------
# --- new_registry -------------------------------------------------------------------------------------


def test_new_registry_has_runtime_collectors_and_build_info() -> None:
    registry = new_registry("dispatcher")
    names = {metric.name for metric in registry.collect()}
    assert any(name.startswith("process_") for name in names), names
    assert any(name.startswith("python_gc_") for name in names), names
    assert "python_info" in names
    assert registry.get_sample_value("postback_build_info", {"version": __version__, "process": "dispatcher"}) == 1.0


def test_each_registry_is_separate() -> None:
    # two processes in one test run (or two calls) must not collide on metric names
    worker, api = new_registry("worker"), new_registry("api")
    assert worker.get_sample_value("postback_build_info", {"version": __version__, "process": "api"}) is None
    assert api.get_sample_value("postback_build_info", {"version": __version__, "process": "api"}) == 1.0


# --- routes -------------------------------------------------------------------------------------------


@pytest.fixture
def registry() -> CollectorRegistry:
    return new_registry("worker")


@pytest.fixture
def readiness(registry: CollectorRegistry) -> Readiness:
    return Readiness(registry, ["kafka", "state"])


@pytest.fixture
async def client(
    registry: CollectorRegistry, readiness: Readiness
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    app = web.Application()
    add_ops_routes(app, registry, readiness)
    async with TestClient(TestServer(app, host="127.0.0.1")) as running:
        yield running


async def test_metrics_is_prometheus_text_with_registered_counters(
    client: TestClient[web.Request, web.Application], registry: CollectorRegistry
) -> None:
    counter = Counter("postback_unit_test_things", "Things counted by a unit test.", ["kind"], registry=registry)
    counter.labels("s2s").inc(3)
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"] == CONTENT_TYPE_LATEST
    body = await response.text()
    assert "# TYPE postback_unit_test_things_total counter" in body
    assert 'postback_unit_test_things_total{kind="s2s"} 3.0' in body
    assert f'postback_build_info{{process="worker",version="{__version__}"}} 1.0' in body
    assert "postback_ready 0.0" in body


async def test_healthz_answers_even_when_not_ready(client: TestClient[web.Request, web.Application]) -> None:
    response = await client.get("/healthz")
    assert response.status == 200
    assert await response.json() == {"status": "alive"}


async def test_readyz_names_the_failing_checks_then_200(
    client: TestClient[web.Request, web.Application], readiness: Readiness
) -> None:
    response = await client.get("/readyz")
    assert response.status == 503
    assert await response.json() == {"ready": False, "checks": {"kafka": False, "state": False}}

    readiness.set("kafka", True)
    response = await client.get("/readyz")
    assert response.status == 503
    assert await response.json() == {"ready": False, "checks": {"kafka": True, "state": False}}

    readiness.set("state", True)
    response = await client.get("/readyz")
    assert response.status == 200
    assert await response.json() == {"ready": True, "checks": {"kafka": True, "state": True}}
    metrics = await (await client.get("/metrics")).text()
    assert "postback_ready 1.0" in metrics


async def test_readyz_says_why_a_check_fails_when_it_was_told(
    client: TestClient[web.Request, web.Application], readiness: Readiness
) -> None:
    readiness.set("kafka", True)
    readiness.set("state", False, "restoring conversions [0, 1]")
    response = await client.get("/readyz")
    assert response.status == 503
    assert await response.json() == {
        "ready": False,
        "checks": {"kafka": True, "state": False},
        "reasons": {"state": "restoring conversions [0, 1]"},
    }


async def test_healthz_fails_naming_the_stalled_loop(registry: CollectorRegistry, readiness: Readiness) -> None:
    clock = FakeClock()
    liveness = Liveness(stall_timeout_seconds=120, clock=clock)
    app = web.Application()
    add_ops_routes(app, registry, readiness, liveness)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        liveness.busy("consumer")
        clock.now += 120
        response = await client.get("/healthz")
        assert (response.status, await response.json()) == (200, {"status": "alive"})
        clock.now += 5
        response = await client.get("/healthz")
        assert response.status == 503
        assert await response.json() == {
            "status": "stalled",
            "reason": "consumer has had work for 125s without completing a batch (STALL_TIMEOUT=120s)",
            "stalled": {"consumer": 125.0},
        }
        liveness.done("consumer")
        response = await client.get("/healthz")
        assert (response.status, await response.json()) == (200, {"status": "alive"})


async def test_other_paths_are_404(client: TestClient[web.Request, web.Application]) -> None:
    assert (await client.get("/metrics/extra")).status == 404
    assert (await client.post("/healthz")).status == 405


# --- OpsServer ----------------------------------------------------------------------------------------


def refuses_connections(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


async def test_ops_server_serves_on_its_port_then_stops() -> None:
    registry = CollectorRegistry()
    readiness = Readiness(registry, ["kafka"])
    readiness.set("kafka", True)
    port = free_loopback_port()
    server = ops_server("127.0.0.1", port, registry, readiness)
    await server.start()
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/readyz") as response:
                assert response.status == 200
            async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                assert "postback_ready 1.0" in await response.text()
    finally:
        await server.stop()
    assert refuses_connections(port)


async def test_port_zero_serves_nothing_and_start_stop_work() -> None:
    app = web.Application()
    add_ops_routes(app, CollectorRegistry(), Readiness(CollectorRegistry(), ["kafka"]))
    server = OpsServer(app, "127.0.0.1", 0)
    await server.start()
    # nothing was set up: no site, so no socket of this process listens for it
    assert server._runner.sites == set()
    assert server._runner.server is None
    await server.stop()


async def test_port_in_use_is_a_runtime_error_naming_http_port() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = OpsServer(web.Application(), "127.0.0.1", port)
        with pytest.raises(RuntimeError) as caught:
            await server.start()
        assert f"HTTP_PORT={port}" in str(caught.value)
        assert "HTTP_HOST=127.0.0.1" in str(caught.value)
        # a ListenError: the command line names the flag or variable from it (see test_cli.py)
        assert isinstance(caught.value, ListenError)
        assert caught.value.in_use and not caught.value.bad_host
        assert caught.value.address == f"127.0.0.1:{port}"
        await server.stop()  # stopping after a failed start is harmless


async def test_check_listen_refuses_a_taken_port_and_leaves_a_free_one_free() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(ListenError) as caught:
            await check_listen("127.0.0.1", taken.getsockname()[1])
        assert caught.value.in_use
    port = free_loopback_port()
    await check_listen("127.0.0.1", port)
    server = ops_server("127.0.0.1", port, CollectorRegistry(), Readiness(CollectorRegistry(), ["kafka"]))
    await server.start()  # the check let the port go again
    await server.stop()


async def test_check_listen_names_an_address_of_another_machine_a_bad_host() -> None:
    with pytest.raises(ListenError) as caught:
        await check_listen("192.0.2.1", 8080)  # TEST-NET-1 (RFC 5737): no address of this machine
    assert caught.value.bad_host and not caught.value.in_use
    assert caught.value.reason == os.strerror(errno.EADDRNOTAVAIL).lower()  # not the bind call's long text
    assert ListenError("::1", 8080, OSError(98, "x")).address == "[::1]:8080"
