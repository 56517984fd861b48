"""Two workers in one consumer group share the partitions; one is SIGKILLed in the middle of a stream."""

from __future__ import annotations

import asyncio
import re
from collections import Counter

import pytest

from tests import factories as f
from tests.integration.kafka_helpers import Deployment, Record

pytestmark = pytest.mark.integration

CONVERSIONS = 3000
CHUNK = 100


def assigned_partitions(log: str) -> list[list[int]]:
    return [
        [int(p) for p in match.split(",") if p.strip()]
        for match in re.findall(r"assigned conversions partitions \[([0-9, ]*)\]", log)
    ]


async def test_two_workers_share_partitions_and_a_sigkill_loses_no_postback(deployment: Deployment) -> None:
    campaigns = [f"camp-{i}" for i in range(10)]
    await deployment.produce(
        "campaign-rules",
        [
            (c, f.campaign(c, f.s2s_entry("src"), f.meta_entry("fb", conditional=f.conditional(statuses=["approved"]))))
            for c in campaigns
        ],
    )
    victim = deployment.start_worker()
    survivor = deployment.start_worker()

    def both_assigned() -> bool:
        return all(
            any(assigned_partitions(w.log_text())[-1:][0] if assigned_partitions(w.log_text()) else [])
            for w in (victim, survivor)
        )

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while not both_assigned():
        victim.check_alive()
        survivor.check_alive()
        assert loop.time() < deadline, "the two workers never shared the partitions"
        await asyncio.sleep(0.2)

    expected: set[tuple[str, str]] = set()
    sent = 0
    killed_at = None
    while sent < CONVERSIONS:
        batch = []
        for i in range(sent, sent + CHUNK):
            status = "approved" if i % 3 else "pending"
            batch.append((f"cv-{i}", f.conversion(f"cv-{i}", campaign_id=campaigns[i % 10], status=status)))
            expected.add((f"cv-{i}", "src"))
            if status == "approved":
                expected.add((f"cv-{i}", "fb"))
        await deployment.produce("conversions", batch)
        sent += CHUNK
        if killed_at is None and sent >= CONVERSIONS // 3:
            matched = len(await deployment.read("postbacks.s2s"))
            if matched > 0:  # the victim is in the middle of the stream
                victim.kill()
                killed_at = sent

    assert killed_at is not None

    def complete(records: list[Record]) -> bool:
        return len({r.key for r in records}) >= CONVERSIONS

    await deployment.wait_for("postbacks.s2s", complete, f"{CONVERSIONS} s2s postbacks", 120)
    messages = [r.json() for r in await deployment.read("postbacks.s2s")] + [
        r.json() for r in await deployment.read("postbacks.meta")
    ]
    emitted = Counter(m["postback_id"] for m in messages)
    ids_by_match: dict[tuple[str, str], set[str]] = {}
    for m in messages:
        ids_by_match.setdefault((m["conversion_id"], m["entry_id"]), set()).add(m["postback_id"])
    assert set(ids_by_match) == expected, "lost or unexpected postbacks"
    assert all(len(ids) == 1 for ids in ids_by_match.values()), "a re-emission carried a different postback_id"
    re_emitted = sum(count - 1 for count in emitted.values())
    print(
        f"\nscale-out: {len(expected)} postbacks expected, all emitted; victim killed after {killed_at} "
        f"conversions; {re_emitted} re-emissions with the same postback_id"
    )
    survivor_assignments = assigned_partitions(survivor.log_text())
    assert survivor_assignments[-1] == [0, 1, 2, 3], "the survivor did not take over every partition"
