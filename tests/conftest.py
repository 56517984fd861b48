"""Shared fixtures: one Kafka-protocol broker for the whole run.

KAFKA_BOOTSTRAP_SERVERS points the tests at any cluster; unset, the embedded broker (Tansu) is
started for the session and stopped at the end. Tests isolate themselves by topic prefix and app id.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest


def pytest_configure(config: pytest.Config) -> None:
    """The "60 days later" run (POSTBACK_TEST_DAYS_AHEAD) must really have moved the clock."""
    days = os.environ.get("POSTBACK_TEST_DAYS_AHEAD", "").strip()
    if days:
        shifted = getattr(sys.modules.get("sitecustomize"), "SHIFTED_DAYS", 0)
        if shifted != int(days):
            raise pytest.UsageError(
                f"POSTBACK_TEST_DAYS_AHEAD={days} but the clock is not shifted: put tests/clock_shift on PYTHONPATH"
            )


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if configured:
        yield configured
        return
    from postback_router.embedded_broker import start_broker

    log_path = tmp_path_factory.mktemp("broker") / "tansu.log"
    broker = start_broker(log_path=str(log_path))
    try:
        yield broker.bootstrap_servers
    finally:
        broker.stop()
