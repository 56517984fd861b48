"""SIGTERM while Kafka is unreachable: the dispatcher stops within a bounded time (inside the 30 s a
Kubernetes pod gets), leaving its pending postbacks in the changelog for the next owner."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from postback_router.embedded_broker import start_broker
from tests import factories as f
from tests.integration.kafka_helpers import Deployment
from tests.integration.test_dispatch_crash_windows import DISPATCH_ENV

pytestmark = [pytest.mark.integration, pytest.mark.time_dependent]

STOP_BOUND_SECONDS = 30.0


async def test_a_stop_ends_in_bounded_time_when_kafka_is_unreachable(tmp_path: Path) -> None:
    broker = start_broker(log_path=str(tmp_path / "tansu.log"))  # its own broker: this test stops it
    deployment = Deployment(broker.bootstrap_servers, tmp_path)
    try:
        deployment.extra_env.update(DISPATCH_ENV)
        await deployment.create_topics()
        # A destination that refuses connections: every postback stays pending, retried.
        rules = f.compiled("camp-1", f.s2s_entry("down", url="http://127.0.0.1:1/down?cid={clickid}"))
        result = f.processor(rules).process(f.source_records([f.conversion(f"c{i}") for i in range(5)]))
        postbacks = [(m.key, m.value) for m in result.messages if m.topic == "postbacks.s2s"]
        dispatcher = deployment.start_dispatcher()
        await deployment.produce("postbacks.s2s", postbacks)
        changelog = f"{deployment.app_id}-dispatch-s2s-state"
        await deployment.wait_for(changelog, lambda r: len(r) >= len(postbacks), "every postback pending")

        broker.stop()
        started = time.monotonic()
        code = dispatcher.terminate(timeout=90)
        elapsed = time.monotonic() - started
        assert code == 0, dispatcher.log_text()[-3000:]
        assert elapsed < STOP_BOUND_SECONDS, f"the stop took {elapsed:.1f}s"
    finally:
        deployment.stop_all()
        broker.stop()
        for process in deployment.workers:
            print(f"---- {process.log_path.name} (exit codes {process.exits})\n{process.log_text()[-4000:]}")
