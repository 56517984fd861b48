"""A worker restart: rules, offer sources and fired-state come back, and nothing is evaluated early."""

from __future__ import annotations

from collections import Counter

import pytest

from tests import factories as f
from tests.integration.kafka_helpers import Deployment, Record

pytestmark = pytest.mark.integration

# Enough rules that reading them takes longer than the consumer group join, so a worker that
# evaluated conversions before its view was recovered would report no_rules for some of them.
BULK_CAMPAIGNS = 60_000


def evaluations_by_id(records: list[Record]) -> Counter[str]:
    return Counter(r.json()["conversion_id"] for r in records)


async def test_restart_recovers_tables_and_fired_state_and_evaluates_nothing_early(deployment: Deployment) -> None:
    await deployment.produce("campaign-rules", [("camp-1", f.campaign("camp-1", f.s2s_entry("src")))])
    await deployment.produce("offer-sources", [("net-p", {"offer_source_id": "net-p", "default_status": "pending"})])
    first = deployment.start_worker()
    await deployment.produce(
        "conversions",
        [("c1", f.conversion("c1", status="pending")), ("c2", f.conversion("c2"))],
    )
    await deployment.wait_for("postbacks.s2s", lambda r: len(r) >= 2, "2 postbacks before the restart")
    assert first.terminate() == 0

    # While no worker runs: many more rules, conversions for the last of them, re-deliveries, an update.
    bulk = [(f"bulk-{i}", f.campaign(f"bulk-{i}", f.s2s_entry("src"))) for i in range(BULK_CAMPAIGNS)]
    await deployment.produce("campaign-rules", bulk)
    late = [f"bulk-{i}" for i in range(BULK_CAMPAIGNS - 50, BULK_CAMPAIGNS)]
    await deployment.produce("conversions", [(f"x-{c}", f.conversion(f"x-{c}", campaign_id=c)) for c in late])
    await deployment.produce(
        "conversions",
        [
            ("c1", f.conversion("c1", status="pending")),  # identical re-delivery: nothing new
            ("c2", f.conversion("c2")),  # identical re-delivery: nothing new
            ("c1", f.conversion("c1", status="approved")),  # update: fires once more
            ("c3", f.conversion("c3", status=..., offer_source_id="net-p")),  # offer source recovered
        ],
    )
    deployment.start_worker()

    def all_evaluated(records: list[Record]) -> bool:
        seen = evaluations_by_id(records)
        return (
            sum(seen[f"x-{c}"] for c in late) >= len(late) and seen["c1"] >= 3 and seen["c2"] >= 2 and seen["c3"] >= 1
        )

    evaluations = await deployment.wait_for("conversions.evaluated", all_evaluated, "every conversion evaluated", 120)
    outcomes = Counter(r.json()["outcome"] for r in evaluations)
    assert outcomes["no_rules"] == 0, "a conversion was evaluated before the rules were recovered"
    postbacks = [r.json() for r in await deployment.read("postbacks.s2s")]
    fired = Counter((p["conversion_id"], p["status"]) for p in postbacks)
    expected = {("c1", "pending"), ("c2", "approved"), ("c1", "approved"), ("c3", "pending")}
    expected |= {(f"x-{c}", "approved") for c in late}
    assert set(fired) == expected
    assert all(count == 1 for count in fired.values()), [k for k, v in fired.items() if v > 1]
    log = deployment.workers[1].log_text()
    assert f"({BULK_CAMPAIGNS + 1} campaigns, 1 offer sources)" in log


async def test_rocksdb_fired_state_survives_a_restart_and_replays_only_new_changelog(deployment: Deployment) -> None:
    deployment.extra_env["STATE_STORE"] = "rocksdb://"
    await deployment.produce("campaign-rules", [("camp-1", f.campaign("camp-1", f.s2s_entry("src")))])
    first = deployment.start_worker()
    await deployment.produce("conversions", [(f"r{i}", f.conversion(f"r{i}")) for i in range(20)])
    await deployment.wait_for("postbacks.s2s", lambda r: len(r) >= 20, "20 postbacks")
    assert first.terminate() == 0
    second = deployment.start_worker()
    await deployment.produce("conversions", [("r0", f.conversion("r0")), ("r0", f.conversion("r0", status="pending"))])
    await deployment.wait_for("conversions.evaluated", lambda r: len(r) >= 22, "22 evaluations")
    postbacks = [r.json() for r in await deployment.read("postbacks.s2s")]
    assert sorted((p["conversion_id"], p["status"]) for p in postbacks if p["conversion_id"] == "r0") == [
        ("r0", "approved"),
        ("r0", "pending"),
    ]
    # the RocksDB files kept the state and the changelog position: nothing was replayed at start
    assert "(0 changelog records replayed)" in second.log_text()


async def test_fired_state_older_than_the_retention_is_swept_from_the_changelog(deployment: Deployment) -> None:
    deployment.extra_env.update(FIRED_STATE_RETENTION="1s", FIRED_STATE_SWEEP_INTERVAL="1s")
    await deployment.produce("campaign-rules", [("camp-1", f.campaign("camp-1", f.s2s_entry("src")))])
    deployment.start_worker()
    await deployment.produce("conversions", [("old", f.conversion("old"))])
    await deployment.wait_for("postbacks.s2s", lambda r: len(r) >= 1, "first postback")
    changelog = f"{deployment.app_id}-fired-state-changelog"

    def tombstone_for_old(records: list[Record]) -> bool:
        return any(r.key == b"old" and r.value is None for r in records)

    await deployment.wait_for(changelog, tombstone_for_old, "a tombstone for the expired conversion")
    await deployment.produce("conversions", [("old", f.conversion("old"))])
    postbacks = await deployment.wait_for("postbacks.s2s", lambda r: len(r) >= 2, "fires again after retention")
    assert len({r.json()["postback_id"] for r in postbacks}) == 1  # the same postback, so dispatchers dedupe it
