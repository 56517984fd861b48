"""Local RocksDB state is used only when it belongs to the live changelog; `dispatch --kind all` lag series.

Topics deleted and recreated (what a fresh cluster looks like to a process that kept its STATE_DIR): the
local state of the old changelog must not make the worker filter conversions as duplicates, nor the
dispatcher skip postbacks that have no results record in the new topics.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from devtools.fakes.s2s_sink import S2SSink
from schemas.kinds import KINDS
from tests import factories as f
from tests.integration.kafka_helpers import DEFAULT_DEADLINE_SECONDS, DISPATCH_ENV, Deployment, Record, WorkerProcess

pytestmark = pytest.mark.integration

CONVERSIONS = 20


async def recreate_topics(deployment: Deployment) -> None:
    """Delete every topic of the deployment (changelogs too), then create them again, empty."""
    admin = AIOKafkaAdminClient(bootstrap_servers=deployment.bootstrap)
    await admin.start()
    try:
        ours = [t for t in await admin.list_topics() if t.startswith(deployment.prefix)]
        assert any(t.endswith("-changelog") or t.endswith("-state") for t in ours), ours
        await admin.delete_topics(ours)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DEFAULT_DEADLINE_SECONDS
        while [t for t in await admin.list_topics() if t.startswith(deployment.prefix)]:
            assert loop.time() < deadline, "topics not deleted"
            await asyncio.sleep(0.1)
    finally:
        await admin.close()
    await deployment.create_topics()


def start_worker_with(deployment: Deployment, env: dict[str, str]) -> WorkerProcess:
    log_path = deployment.tmp_path / f"worker-{len(deployment.workers)}.log"
    worker = WorkerProcess({**deployment.env(), **env}, log_path).start()
    deployment.workers.append(worker)
    return worker


def discarded_in(process: WorkerProcess) -> list[str]:
    return [line for line in process.log_text().splitlines() if "local state discarded" in line]


async def test_a_worker_whose_topics_were_recreated_fires_the_same_conversions_again(deployment: Deployment) -> None:
    deployment.extra_env["STATE_STORE"] = "rocksdb://"
    rules = [("camp-1", f.campaign("camp-1", f.s2s_entry("src")))]
    conversions = [(f"r{i}", f.conversion(f"r{i}")) for i in range(CONVERSIONS)]
    await deployment.produce("campaign-rules", rules)
    first = deployment.start_worker()
    await deployment.produce("conversions", conversions)
    await deployment.wait_for("postbacks.s2s", lambda r: len(r) >= CONVERSIONS, f"{CONVERSIONS} postbacks")
    assert first.terminate() == 0

    # A fresh cluster, as far as the worker can tell: the same topic names, empty; the same STATE_DIR.
    await recreate_topics(deployment)
    await deployment.produce("campaign-rules", rules)
    second = deployment.start_worker()
    await deployment.produce("conversions", conversions)
    evaluations = await deployment.wait_for(
        "conversions.evaluated", lambda r: len(r) >= CONVERSIONS, f"{CONVERSIONS} evaluations"
    )
    outcomes = Counter(r.json()["outcome"] for r in evaluations)
    postbacks = [r.json() for r in await deployment.read("postbacks.s2s")]
    assert len({p["conversion_id"] for p in postbacks}) == CONVERSIONS, (
        f"{len(postbacks)} of {CONVERSIONS} fired again; evaluation outcomes {dict(outcomes)}"
    )
    assert len(postbacks) == CONVERSIONS
    discarded = discarded_in(second)
    assert discarded, "the worker should say why it did not use its local state"
    assert all("changelog_shorter" in line for line in discarded), discarded

    # the state restored from the new changelog is trusted from now on: a re-delivery fires nothing
    assert second.terminate() == 0
    third = deployment.start_worker()
    await deployment.produce("conversions", conversions[:5])
    await deployment.wait_for("conversions.evaluated", lambda r: len(r) >= CONVERSIONS + 5, "5 more evaluations")
    assert len(await deployment.read("postbacks.s2s")) == CONVERSIONS
    assert not discarded_in(third)
    assert "(0 changelog records replayed)" in third.log_text()


async def test_a_dispatcher_whose_topics_were_recreated_delivers_each_postback_with_one_result(
    deployment: Deployment, sink: S2SSink
) -> None:
    deployment.extra_env.update({**DISPATCH_ENV, "STATE_STORE": "rocksdb://"})
    entry = f.s2s_entry("ok", url=sink.url("/ok?cid={clickid}"))
    # the worker keeps its state in memory: only the dispatcher has a local state to be wrong about
    worker_env = {"STATE_STORE": "memory://"}
    await deployment.produce("campaign-rules", [("camp-1", f.campaign("camp-1", entry))])
    dispatcher = deployment.start_dispatcher()
    worker = start_worker_with(deployment, worker_env)
    conversions = [(f"c{i}", f.conversion(f"c{i}")) for i in range(CONVERSIONS)]
    await deployment.produce("conversions", conversions)
    await deployment.wait_for("postbacks.results", lambda r: len(r) >= CONVERSIONS, f"{CONVERSIONS} results")
    assert dispatcher.terminate() == 0
    assert worker.terminate() == 0

    await recreate_topics(deployment)
    await deployment.produce("campaign-rules", [("camp-1", f.campaign("camp-1", entry))])
    dispatcher = deployment.start_dispatcher()
    start_worker_with(deployment, worker_env)
    await deployment.produce("conversions", conversions)
    await deployment.wait_for("postbacks.s2s", lambda r: len(r) >= CONVERSIONS, f"{CONVERSIONS} postbacks")

    def one_result_each(records: list[Record]) -> bool:
        return len({r.json()["postback_id"] for r in records}) >= CONVERSIONS

    results = await deployment.wait_for("postbacks.results", one_result_each, "a result for every postback", 90)
    ids = Counter(r.json()["postback_id"] for r in results)
    assert len(ids) == CONVERSIONS and set(ids.values()) == {1}, ids
    assert Counter(r.json()["result"] for r in results) == Counter(delivered=CONVERSIONS)
    delivered = Counter(r.query["cid"] for r in sink.delivered("/ok"))
    assert delivered == Counter({f"click-c{i}": 2 for i in range(CONVERSIONS)}), "once per cluster"
    discarded = discarded_in(dispatcher)
    assert discarded and all("changelog_shorter" in line for line in discarded), discarded


async def test_dispatch_all_shows_the_lag_of_every_kind(deployment: Deployment) -> None:
    dispatcher = deployment.start_dispatcher("all")
    await dispatcher.wait_ready()  # no records needed: an empty fetch gives each partition's high watermark
    expected = {deployment.topic(f"postbacks.{kind}") for kind in KINDS}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEFAULT_DEADLINE_SECONDS
    # every kind's series present at once, in consecutive scrapes across several lag refreshes (5 s)
    consecutive = 0
    while consecutive < 4:
        status, body = await dispatcher.http_get("/metrics")
        assert status == 200
        shown = {
            line.split('topic="', 1)[1].split('"', 1)[0]
            for line in body.splitlines()
            if line.startswith("postback_consumer_lag{")
        }
        consecutive = consecutive + 1 if shown >= expected else 0
        assert loop.time() < deadline, f"lag series shown for {sorted(shown)}, expected every kind: {sorted(expected)}"
        await asyncio.sleep(2)
