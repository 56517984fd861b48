"""`postback-router replay` through the real broker: finds the postbacks whose last outcome is rejected or
dead_lettered, filters them, lists them in a dry run without writing, and replays them."""

from __future__ import annotations

import asyncio
import sys
from collections import Counter

import pytest

from devtools.fakes.s2s_sink import S2SSink
from tests import factories as f
from tests.integration.kafka_helpers import Deployment
from tests.integration.test_dispatch_s2s import DISPATCH_ENV

pytestmark = [pytest.mark.integration, pytest.mark.time_dependent]


async def replay(deployment: Deployment, *args: str) -> tuple[list[str], str]:
    """(stdout lines, stderr) of `postback-router replay ARGS`, run as a real process."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "postback_router.cli",
        "replay",
        *args,
        env=deployment.env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, err.decode()
    return out.decode().splitlines(), err.decode()


async def test_replay_finds_filters_lists_and_replays_what_failed_for_good(
    deployment: Deployment, sink: S2SSink
) -> None:
    deployment.extra_env.update(DISPATCH_ENV)
    sink.respond_with("/reject", body="ERROR", status=400)
    sink.respond_with("/gone", body="no such goal", status=404)
    entries = [f.s2s_entry(name, url=sink.url(f"/{name}?cid={{clickid}}")) for name in ("ok", "reject", "gone")]
    await deployment.produce("campaign-rules", [("camp-1", f.campaign("camp-1", *entries))])
    deployment.start_worker()
    deployment.start_dispatcher()
    await deployment.produce("conversions", [(f"c{i}", f.conversion(f"c{i}")) for i in range(3)])
    first = await deployment.wait_for("postbacks.results", lambda r: len(r) >= 9, "9 results")
    ids = {(r.json()["entry_id"], r.json()["conversion_id"]): r.json()["postback_id"] for r in first}
    rejected_400 = {ids["reject", f"c{i}"] for i in range(3)}
    rejected_404 = {ids["gone", f"c{i}"] for i in range(3)}
    topic_before = len(await deployment.read("postbacks.s2s"))

    lines, err = await replay(deployment, "--reason", "http_400", "--dry-run")
    assert {line.split()[0] for line in lines} == rejected_400
    assert "dry run: 3 postbacks would be replayed" in err
    lines, _ = await replay(deployment, "--dry-run")
    assert {line.split()[0] for line in lines} == rejected_400 | rejected_404, "never a delivered one"
    assert (await replay(deployment, "--dry-run", "--until", "1h"))[0] == [], "all failed within the hour"
    assert len((await replay(deployment, "--dry-run", "--since", "1h"))[0]) == 6
    assert (await replay(deployment, "--dry-run", "--kind", "meta"))[0] == []
    assert len((await replay(deployment, "--dry-run", "--destination", "s2s:127.0.0.1"))[0]) == 6
    assert (await replay(deployment, "--dry-run", "--destination", "s2s:elsewhere.example"))[0] == []
    assert len(await deployment.read("postbacks.s2s")) == topic_before, "a dry run writes nothing"

    sink.respond_with("/reject", body="OK", status=200)
    lines, err = await replay(deployment, "--reason", "http_400", "--requested-by", "ops")
    assert len(lines) == 3 and "3 replay requests written" in err
    results = await deployment.wait_for("postbacks.results", lambda r: len(r) >= 12, "3 replays reported")
    replays = Counter((r.json()["postback_id"], r.json()["result"]) for r in results if r.json().get("replay") == 1)
    assert replays == Counter({(pid, "delivered"): 1 for pid in rejected_400})
    assert Counter(r.query["cid"] for r in sink.delivered("/reject")) == Counter({f"click-c{i}": 1 for i in range(3)})

    lines, _ = await replay(deployment, "--dry-run")
    assert {line.split()[0] for line in lines} == rejected_404, "a postback delivered by its replay is done"
