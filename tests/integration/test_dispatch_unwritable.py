"""A postback the dispatcher cannot keep (its `pending` state is larger than Kafka takes) is not retried
forever, holding up its kind: it is rejected at once with a bounded dead-letter record, counted, and the
postbacks after it are delivered (contract §5: bad input never stops processing)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from tests.integration.kafka_helpers import Deployment
from tests.integration.test_dispatch_crash_windows import DISPATCH_ENV, CountingSink, matched_postbacks

pytestmark = [pytest.mark.integration, pytest.mark.time_dependent]

# Over the producer's 1 MiB max_request_size once wrapped in a delivery state; the broker takes it as is.
PADDING_BYTES = 1_100_000


@pytest.fixture
async def sink() -> AsyncIterator[CountingSink]:
    async with CountingSink() as running:
        yield running


async def test_a_postback_too_large_to_keep_is_rejected_with_a_bounded_record_and_the_rest_delivered(
    deployment: Deployment, sink: CountingSink
) -> None:
    deployment.extra_env.update(DISPATCH_ENV)
    postbacks = matched_postbacks(sink)
    big = {**postbacks[0], "padding": "x" * PADDING_BYTES}
    dispatcher = deployment.start_dispatcher()
    producer = AIOKafkaProducer(bootstrap_servers=deployment.bootstrap, max_request_size=4 * 1024 * 1024)
    await producer.start()
    try:
        for postback in [big, *postbacks[1:]]:
            key = postback["conversion_id"].encode()
            await producer.send_and_wait(deployment.topic("postbacks.s2s"), orjson.dumps(postback), key=key)
    finally:
        await producer.stop()

    results = await deployment.wait_for("postbacks.results", lambda r: len(r) >= len(postbacks), "every result")
    by_id = {r.json()["postback_id"]: r.json() for r in results}
    assert len(results) == len(by_id) == len(postbacks)
    assert by_id[big["postback_id"]]["result"] == "rejected"
    assert by_id[big["postback_id"]]["last_reason"] == "postback_too_large"
    dead = {r.json()["postback_id"]: r for r in await deployment.read("postbacks.dead-letter")}
    kept = dead[big["postback_id"]]
    assert kept.value is not None and len(kept.value) < 16 * 1024, "the dead-letter record is bounded"
    assert kept.json()["postback"] is None
    assert kept.json()["original_truncated"] is True
    assert kept.json()["original_bytes"] > PADDING_BYTES
    assert (big["entry"]["url"], big["click_id"]) not in sink.received, "a postback that cannot be kept is not sent"
    for postback in postbacks[1:]:
        expected = "delivered" if postback["entry_id"] == "ok" else "rejected"
        assert by_id[postback["postback_id"]]["result"] == expected
    _, metrics = await dispatcher.http_get("/metrics")
    changelog = deployment.topic(f"{deployment.app_id}-dispatch-s2s-state")
    assert f'postback_kafka_unwritable_records_total{{topic="{changelog}"}} 1.0' in metrics
