"""Conversions in, worker, S2S dispatcher, a real HTTP sink on loopback: every request received once."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from devtools.fakes.s2s_sink import S2SSink
from streams.core.schema_checks import full_validator
from tests import factories as f
from tests.integration.kafka_helpers import DISPATCH_ENV, Deployment, Record

pytestmark = [pytest.mark.integration, pytest.mark.time_dependent]


async def wait_until_consumed(deployment: Deployment, name: str, group_id: str, deadline: float = 60) -> None:
    """Poll until `group_id` has committed past every record now in the topic (each was handled)."""
    records = await deployment.read(name)
    last = {r.partition: r.offset for r in records}
    consumer = AIOKafkaConsumer(bootstrap_servers=deployment.bootstrap, group_id=group_id, enable_auto_commit=False)
    await consumer.start()
    try:
        loop = asyncio.get_running_loop()
        stop_at = loop.time() + deadline
        while True:
            committed = {p: await consumer.committed(TopicPartition(deployment.topic(name), p)) for p in last}
            if all((committed[p] or 0) > offset for p, offset in last.items()):
                return
            assert loop.time() < stop_at, f"{group_id} did not consume {name}: committed {committed}, last {last}"
            await asyncio.sleep(0.2)
    finally:
        await consumer.stop()


def results_by_entry(records: list[Record]) -> dict[str, Counter[str]]:
    out: dict[str, Counter[str]] = {}
    for record in records:
        result = record.json()
        out.setdefault(result["entry_id"], Counter())[result["result"]] += 1
    return out


async def test_every_postback_is_delivered_once_and_reported_once(deployment: Deployment, sink: S2SSink) -> None:
    deployment.extra_env.update(DISPATCH_ENV)
    sink.fail_next(3, 503, path="/flaky")
    sink.fail_next(2, 429, retry_after="0.2", path="/throttled")
    sink.respond_with("/reject", body="ERROR: unknown goal", status=400)
    entries = [
        f.s2s_entry(name, url=sink.url(f"/{name}?cid={{clickid}}&status={{status}}"))
        for name in ("ok", "flaky", "throttled", "reject")
    ]
    await deployment.produce("campaign-rules", [("camp-1", f.campaign("camp-1", *entries))])
    deployment.start_worker()
    deployment.start_dispatcher()
    conversions = [(f"c{i}", f.conversion(f"c{i}")) for i in range(20)]
    await deployment.produce("conversions", conversions)
    await deployment.produce("conversions", conversions[:5])  # re-deliveries: nothing new
    postbacks = await deployment.wait_for("postbacks.s2s", lambda r: len(r) >= 80, "80 postbacks")
    # the same postback twice on the topic (a worker crash can do that): the dispatcher sends it once
    await deployment.produce("postbacks.s2s", [(postbacks[0].key, postbacks[0].value)])

    results = await deployment.wait_for("postbacks.results", lambda r: len(r) >= 80, "80 results", deadline=90)
    assert len({r.json()["postback_id"] for r in results}) == len(results) == 80, "one result per postback"
    assert results_by_entry(results) == {
        "ok": Counter(delivered=20),
        "flaky": Counter(delivered=20),
        "throttled": Counter(delivered=20),
        "reject": Counter(rejected=20),
    }
    for path in ("/ok", "/flaky", "/throttled"):
        delivered = Counter(r.query["cid"] for r in sink.delivered(path))
        assert delivered == Counter({f"click-c{i}": 1 for i in range(20)}), path
    assert sink.count("/reject") == 20, "a 4xx is not retried"
    dead = [r.json() for r in await deployment.read("postbacks.dead-letter")]
    assert Counter(d["reason"] for d in dead) == Counter(http_400=20)
    for record in results:
        assert not list(full_validator("delivery-result").iter_errors(record.json()))
    for body in dead:
        assert not list(full_validator("dead-letter").iter_errors(body))
    flaky_attempts = sum(r.json()["attempts"] for r in results if r.json()["entry_id"] == "flaky")
    assert flaky_attempts == 20 + 3, "each failed attempt was retried, each postback sent once more"


@pytest.mark.parametrize("stop", ["sigterm", "sigkill"])
async def test_retries_pending_at_a_stop_are_delivered_once_after_the_restart(
    deployment: Deployment, sink: S2SSink, stop: str
) -> None:
    deployment.extra_env.update(DISPATCH_ENV)
    sink.fail_next(100_000, 503, path="/down")
    entry = f.s2s_entry("down", url=sink.url("/down?cid={clickid}"))
    await deployment.produce("campaign-rules", [("camp-1", f.campaign("camp-1", entry))])
    deployment.start_worker()
    first = deployment.start_dispatcher()
    await deployment.produce("conversions", [(f"c{i}", f.conversion(f"c{i}")) for i in range(10)])
    # every postback attempted and failing (the breaker then opens: no 30 attempts in a hurry)
    await sink.wait_for(10, timeout=60, path="/down")
    if stop == "sigterm":
        assert first.terminate() == 0  # drains: the attempts so far are written back
    else:
        first.kill()  # nothing written back: the pending states written when consumed are resumed
    assert await deployment.read("postbacks.results") == [], "nothing may be final while the sink is down"

    sink.recover("/down")
    deployment.start_dispatcher()
    results = await deployment.wait_for("postbacks.results", lambda r: len(r) >= 10, "10 results", deadline=60)
    assert Counter(r.json()["result"] for r in results) == Counter(delivered=10)
    assert Counter(r.query["cid"] for r in sink.delivered("/down")) == Counter({f"click-c{i}": 1 for i in range(10)})
    if stop == "sigterm":
        assert all(r.json()["attempts"] > 1 for r in results), "attempts made before the stop are counted"


async def test_a_postback_already_delivered_is_not_sent_again_after_a_crash(
    deployment: Deployment, sink: S2SSink
) -> None:
    deployment.extra_env.update(DISPATCH_ENV)
    entry = f.s2s_entry("ok", url=sink.url("/ok?cid={clickid}"))
    await deployment.produce("campaign-rules", [("camp-1", f.campaign("camp-1", entry))])
    deployment.start_worker()
    first = deployment.start_dispatcher()
    await deployment.produce("conversions", [(f"c{i}", f.conversion(f"c{i}")) for i in range(10)])
    await deployment.wait_for("postbacks.results", lambda r: len(r) >= 10, "10 results")
    first.kill()  # SIGKILL: no drain, offsets maybe not committed
    # the same postbacks once more on the topic, as a worker crash between produce and commit does
    postbacks = await deployment.read("postbacks.s2s")
    await deployment.produce("postbacks.s2s", [(r.key, r.value) for r in postbacks])
    deployment.start_dispatcher()
    await wait_until_consumed(deployment, "postbacks.s2s", f"{deployment.app_id}-dispatch-s2s")
    marker = f.conversion("after-restart")
    await deployment.produce("conversions", [("after-restart", marker)])
    await deployment.wait_for("postbacks.results", lambda r: len(r) >= 11, "the marker's result")
    assert Counter(r.query["cid"] for r in sink.delivered("/ok")) == Counter(
        {**{f"click-c{i}": 1 for i in range(10)}, "click-after-restart": 1}
    )
    assert len(await deployment.read("postbacks.results")) == 11, "no second result for a delivered postback"
