"""Back-pressure (issue 8, defect 5), through the broker: with a dead destination and a small
DISPATCH_MAX_PENDING, a dispatcher stops fetching (what it holds in memory never exceeds the bound plus one
batch) instead of taking the whole backlog in; a rebalance while it is paused (a second dispatcher joins)
keeps it so; when the destination recovers both fetch again and every postback is delivered exactly once.

The dispatchers run in this process (each exactly as `postback-router dispatch --kind s2s` runs it), so that
the number of postbacks each holds is read after every batch it takes, not sampled from /metrics.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from typing import Any

import orjson
import pytest

from devtools.fakes.s2s_sink import S2SSink
from dispatchers.dispatcher import Dispatcher
from service.group_member import Batch
from service.settings import load_settings
from tests import factories as f
from tests.integration.kafka_helpers import Deployment

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

MAX_PENDING = 20
RESUME_PENDING = 5
POSTBACKS = 150
ENV = {
    "POSTBACK_ALLOW_PRIVATE_TARGETS": "1",  # the sink is on loopback
    "HTTP_PORT": "0",
    "DISPATCH_MAX_PENDING": str(MAX_PENDING),
    "DISPATCH_RESUME_PENDING": str(RESUME_PENDING),
    "RETRY_BASE_DELAY": "50ms",
    "RETRY_MAX_DELAY": "200ms",
    "DELIVERY_TIMEOUT": "2s",
    "BREAKER_OPEN_SECONDS": "200ms",
    "BREAKER_MAX_OPEN_SECONDS": "400ms",
}


def postback(sink: S2SSink, n: int) -> dict[str, Any]:
    """A matched S2S postback as the worker writes it to postbacks.s2s."""
    template = sink.url("/dead?cid={clickid}")
    return {
        "schema_version": 1,
        "postback_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"back-pressure/{n}")),
        "kind": "s2s",
        "destination_id": "s2s:127.0.0.1",
        "entry_id": "dead",
        "campaign_id": "camp-1",
        "conversion_id": f"cv-{n}",
        "click_id": f"click-{n}",
        "type": "deposit",
        "status": "approved",
        "status_source": "event",
        "payout": "10.00",
        "conversion_payout": "10.00",
        "currency": "USD",
        "transaction_id": None,
        "occurred_at": f.OCCURRED_AT,
        "occurred_at_unix": f.OCCURRED_AT_UNIX,
        "matched_at": f.OCCURRED_AT,
        "entry": f.s2s_entry("dead", url=template),
        "url": template.replace("{clickid}", f"click-{n}"),
        "method": "GET",
        "click_ids": {},
        "user": {},
        "subs": {},
        "source": {"topic": "conversions", "partition": 0, "offset": n},
    }


class Running:
    """An in-process dispatcher whose pending count is recorded after every batch it takes."""

    def __init__(self, deployment: Deployment) -> None:
        self.dispatcher = Dispatcher(load_settings({**deployment.env(), **ENV}), "s2s")
        self.after_batches: list[int] = []
        self.was_paused = False
        handle = self.dispatcher.handle

        async def counted(batch: Batch) -> None:
            await handle(batch)
            self.after_batches.append(self.dispatcher.pending_count())

        self.dispatcher.handle = counted  # type: ignore[method-assign]
        self.task = asyncio.create_task(self.dispatcher.run())

    def held_most(self) -> int:
        return max(self.after_batches, default=0)

    async def stop(self) -> None:
        self.dispatcher.stop()
        await asyncio.wait_for(self.task, 30)


async def until(predicate: Any, what: str, timeout: float = 30.0, *running: Running) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        for r in running:
            r.was_paused = r.was_paused or r.dispatcher.paused
            if r.task.done():
                r.task.result()  # a dispatcher that died says why
                raise AssertionError("a dispatcher stopped")
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        await asyncio.sleep(0.02)


async def test_a_dead_destination_pauses_fetching_and_every_postback_is_delivered_once_after_it_recovers(
    deployment: Deployment, sink: S2SSink
) -> None:
    started = time.monotonic()
    sink.fail_next(1_000_000, 503, path="/dead")
    postbacks = [postback(sink, n) for n in range(POSTBACKS)]
    await deployment.produce("postbacks.s2s", [(pb["conversion_id"], orjson.dumps(pb)) for pb in postbacks])
    # The bound plus one batch (a batch is no larger than the bound): a batch is taken only below the bound;
    # after a rebalance, one fetched while the partitions' pending states were being resumed.
    bound = MAX_PENDING + MAX_PENDING

    first = Running(deployment)
    running = [first]
    try:
        await until(lambda: first.dispatcher.paused and sink.count("/dead") >= 20, "a pause", 30, *running)
        # Dead for a while: the breaker probes it, the dispatcher takes nothing more in.
        await until(lambda: sink.count("/dead") >= 60, "more failed attempts", 30, *running)
        assert first.dispatcher.paused
        assert first.held_most() <= bound, f"held {first.after_batches}"
        assert await deployment.read("postbacks.results") == []

        # A rebalance while paused: a second dispatcher joins; partitions move, come back, stay paused.
        second = Running(deployment)
        running.append(second)
        await until(
            lambda: len(second.dispatcher.member._owned) > 0, "the second dispatcher's partitions", 45, *running
        )
        await until(lambda: all(r.dispatcher.paused for r in running if r.after_batches), "paused again", 30, *running)
        assert all(r.held_most() <= bound for r in running), [r.after_batches for r in running]

        sink.recover("/dead")
        results = await deployment.wait_for("postbacks.results", lambda r: len(r) >= POSTBACKS, "every result", 45)
        await until(lambda: not any(r.dispatcher.paused for r in running), "fetching resumed", 10, *running)
        owned = [sorted(tp.partition for tp in r.dispatcher.member._owned) for r in running]
    finally:
        for r in running:
            await r.stop()

    assert Counter(r.json()["result"] for r in results) == Counter(delivered=POSTBACKS)
    assert len({r.json()["postback_id"] for r in results}) == len(results) == POSTBACKS, "one result each"
    delivered = Counter(r.query["cid"] for r in sink.delivered("/dead"))
    assert delivered == Counter({f"click-{n}": 1 for n in range(POSTBACKS)}), "each delivered exactly once"
    assert all(r.held_most() <= bound for r in running), [r.after_batches for r in running]
    assert first.was_paused
    print(
        f"\n{POSTBACKS} postbacks, DISPATCH_MAX_PENDING={MAX_PENDING}: held at most "
        f"{[r.held_most() for r in running]} after a batch (bound + one batch: {bound}), partitions {owned}, "
        f"{sink.count('/dead')} requests, {time.monotonic() - started:.1f}s"
    )
