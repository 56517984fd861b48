from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from devtools.fakes.s2s_sink import S2SSink
from tests.integration.kafka_helpers import Deployment


@pytest.fixture
async def deployment(kafka_bootstrap: str, tmp_path: Path) -> AsyncIterator[Deployment]:
    """Fresh topics and consumer group; every worker started through it is stopped afterwards."""
    deployed = Deployment(kafka_bootstrap, tmp_path)
    await deployed.create_topics()
    try:
        yield deployed
    finally:
        deployed.stop_all()
        for worker in deployed.workers:
            print(f"---- {worker.log_path.name} (exit codes {worker.exits})\n{worker.log_text()[-4000:]}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything here goes through the broker: marked `integration` whether or not its module says so,
    so that `make test-later` reruns only the ones also marked `time_dependent`."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture
async def sink() -> AsyncIterator[S2SSink]:
    """An S2S receiver on loopback that answers 200 and records what it got (tests that need another
    kind of receiver define their own `sink`)."""
    async with S2SSink() as running:
        yield running
