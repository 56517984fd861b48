"""Conversions without campaign_id through a real broker: completed from their click by the worker
that owns the click's partition, or refused as `unknown_click` once the grace period is over."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime
from typing import Any

import pytest

from service.kafka_io import Record
from tests import factories as f
from tests.integration.kafka_helpers import Deployment

pytestmark = [pytest.mark.integration, pytest.mark.time_dependent]


def click(click_id: str, campaign_id: str = "camp-c", **fields: Any) -> dict[str, Any]:
    return {"click_id": click_id, "campaign_id": campaign_id, "clicked_at": datetime.now(UTC).isoformat(), **fields}


def campaignless(conversion_id: str, click_id: str, **fields: Any) -> tuple[str, dict[str, Any]]:
    """A conversion without campaign, keyed by its click_id as the contract says."""
    event = f.conversion(conversion_id, click_id=click_id, **fields)
    del event["campaign_id"]
    return click_id, event


def conversion_ids(records: list[Record]) -> set[str]:
    return {r.json()["conversion_id"] for r in records}


async def test_conversions_without_campaign_are_completed_from_their_click(deployment: Deployment) -> None:
    deployment.extra_env["CLICK_GRACE_PERIOD"] = "3s"
    await deployment.produce("campaign-rules", [("camp-c", f.campaign("camp-c", f.s2s_entry("src")))])
    # many clicks, so that they spread over every partition: each is joined where it landed
    clicks = [(f"clk-{n}", click(f"clk-{n}", subs={"sub1": f"s{n}"})) for n in range(12)]
    await deployment.produce("clicks", clicks)
    deployment.start_worker()
    await deployment.produce("conversions", [campaignless(f"cv-{n}", f"clk-{n}") for n in range(12)])
    # one whose click comes after it, within the grace period; one whose click never comes
    await deployment.produce("conversions", [campaignless("cv-late", "clk-late"), campaignless("cv-lost", "clk-lost")])
    await deployment.produce("clicks", [("clk-late", click("clk-late"))])
    expected = {f"cv-{n}" for n in range(12)} | {"cv-late"}
    postbacks = await deployment.wait_for(
        "postbacks.s2s", lambda rs: conversion_ids(rs) >= expected, "a postback for each conversion with a click"
    )
    by_id = {r.json()["conversion_id"]: r.json() for r in postbacks}
    assert set(by_id) == expected  # nothing for cv-lost
    assert by_id["cv-3"]["url"].startswith("https://tracker.example/postback?cid=clk-3&")
    assert by_id["cv-3"]["campaign_id"] == "camp-c"
    invalid = await deployment.wait_for(
        "conversions.invalid", lambda rs: len(rs) >= 1, "the unknown_click refusal", deadline=60
    )
    (refused,) = [r.json() for r in invalid]
    assert refused["error"]["reason"] == "unknown_click" and refused["key"] == "clk-lost"
    assert "cv-lost" not in conversion_ids(await deployment.read("postbacks.s2s"))


def owned_partitions(log: str) -> set[int]:
    """The conversions partitions a worker's log says it was last assigned."""
    found = re.findall(r"assigned conversions partitions \[([0-9, ]*)\]", log)
    return {int(p) for p in found[-1].split(",") if p.strip()} if found else set()


async def test_two_workers_each_join_the_clicks_of_their_own_partitions(deployment: Deployment) -> None:
    await deployment.produce("campaign-rules", [("camp-c", f.campaign("camp-c", f.s2s_entry("src")))])
    clicks = [(f"clk-{n}", click(f"clk-{n}")) for n in range(40)]
    await deployment.produce("clicks", clicks)
    workers = [deployment.start_worker(), deployment.start_worker()]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while not all(owned_partitions(w.log_text()) for w in workers):  # each holds some partitions
        for worker in workers:
            worker.check_alive()
        assert loop.time() < deadline, "the two workers never shared the partitions"
        await asyncio.sleep(0.2)
    await deployment.produce("conversions", [campaignless(f"cv-{n}", f"clk-{n}") for n in range(40)])
    expected = {f"cv-{n}" for n in range(40)}
    postbacks = await deployment.wait_for(
        "postbacks.s2s", lambda rs: conversion_ids(rs) >= expected, "a postback for each of the 40 conversions"
    )
    # each conversion was joined on the partition it and its click share, whichever worker holds it
    assert {r.json()["conversion_id"] for r in postbacks} == expected
    # the conversions (keyed by click) spread over every partition, which the two workers split
    assert {r.partition for r in await deployment.read("conversions")} == {0, 1, 2, 3}
    assert owned_partitions(workers[0].log_text()).isdisjoint(owned_partitions(workers[1].log_text()))
    assert await deployment.read("conversions.invalid") == []


def clicks_replayed(log: str, topic: str) -> list[int]:
    """How many records of `clicks` each restore of the worker replayed (its log line per restore)."""
    pattern = re.escape(topic) + r" restored for partitions \[[0-9, ]*\] \(([0-9]+) changelog records replayed\)"
    return [int(n) for n in re.findall(pattern, log)]


async def test_a_restarted_worker_keeps_its_clicks_in_rocksdb_and_reads_only_new_ones(
    deployment: Deployment,
) -> None:
    deployment.extra_env["STATE_STORE"] = "rocksdb://"
    await deployment.produce("campaign-rules", [("camp-c", f.campaign("camp-c", f.s2s_entry("src")))])
    await deployment.produce("clicks", [(f"clk-{n}", click(f"clk-{n}")) for n in range(20)])
    first = deployment.start_worker()
    await first.wait_ready()
    assert first.terminate() == 0
    assert sum(clicks_replayed(first.log_text(), deployment.topic("clicks"))) == 20

    await deployment.produce("clicks", [("clk-new", click("clk-new"))])
    second = deployment.start_worker()
    await deployment.produce("conversions", [campaignless("cv-old", "clk-7"), campaignless("cv-new", "clk-new")])
    await deployment.wait_for(
        "postbacks.s2s", lambda rs: conversion_ids(rs) >= {"cv-old", "cv-new"}, "both conversions joined"
    )
    # the clicks read before the restart came from the local store, not from the topic again
    assert sum(clicks_replayed(second.log_text(), deployment.topic("clicks"))) == 1
