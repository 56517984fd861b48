"""Replay through the real broker: a postback refused by an S2S sink on loopback, the sink fixed, a replay
request on the postback's own topic, one new results record marked with the replay number; a request read
twice starts one cycle, a delivered postback is never replayed, and all of it survives a restart."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from devtools.fakes.s2s_sink import S2SSink
from dispatchers.core.replay import ReplayRequest, replay_request_record
from service.kafka_io import Record
from streams.core.schema_checks import full_validator
from tests import factories as f
from tests.integration.kafka_helpers import Deployment
from tests.integration.test_dispatch_crash_windows import DISPATCH_ENV as CRASH_ENV
from tests.integration.test_dispatch_crash_windows import (
    CountingSink,
    matched_postbacks,
    wait_for_file,
    wait_until_settled,
)
from tests.integration.test_dispatch_s2s import DISPATCH_ENV, wait_until_consumed

pytestmark = [pytest.mark.integration, pytest.mark.time_dependent]


@pytest.fixture
async def counting_sink() -> AsyncIterator[CountingSink]:
    async with CountingSink() as running:
        yield running


def replay_request(postback: dict[str, Any], request_id: str | None = None) -> tuple[bytes, bytes]:
    """(key, value) of a replay request: the postback's own key, its conversion_id (same partition)."""
    request = ReplayRequest(request_id or str(uuid.uuid4()), None, "test")
    return postback["conversion_id"].encode(), orjson.dumps(replay_request_record(postback, request))


def outcomes(records: list[Record]) -> Counter[tuple[str, str, int]]:
    """(postback_id, result, replay) of the results or dead-letter records (read partition by partition)."""
    return Counter((r.json()["postback_id"], r.json()["result"], r.json().get("replay", 0)) for r in records)


def of_replay(records: list[Record], replay: int) -> dict[str, Any]:
    found: list[dict[str, Any]] = [r.json() for r in records if r.json().get("replay", 0) == replay]
    (record,) = found
    return record


def metric(text: str, decision: str) -> float:
    prefix = f'postback_replay_requests_total{{decision="{decision}",kind="s2s"}} '
    return sum(float(line[len(prefix) :]) for line in text.splitlines() if line.startswith(prefix))


async def test_a_rejected_postback_is_replayed_once_the_cause_is_fixed_and_a_delivered_one_never(
    deployment: Deployment, sink: S2SSink
) -> None:
    deployment.extra_env.update(DISPATCH_ENV)
    sink.respond_with("/goal", body="ERROR: unknown goal", status=400)
    entry = f.s2s_entry("goal", url=sink.url("/goal?cid={clickid}"))
    await deployment.produce("campaign-rules", [("camp-1", f.campaign("camp-1", entry))])
    deployment.start_worker()
    dispatcher = deployment.start_dispatcher()
    await deployment.produce("conversions", [("c-a", f.conversion("c-a")), ("c-b", f.conversion("c-b"))])
    first = await deployment.wait_for("postbacks.results", lambda r: len(r) >= 2, "2 results")
    assert Counter(r.json()["result"] for r in first) == Counter(rejected=2)
    by_click = {r.json()["click_id"]: r.json() for r in await deployment.read("postbacks.s2s")}
    a, b = by_click["click-c-a"], by_click["click-c-b"]

    # replayed while the cause is still there: rejected again, reported as replay 1 (results and dead-letter)
    await deployment.produce("postbacks.s2s", [replay_request(a)])
    results = await deployment.wait_for("postbacks.results", lambda r: len(r) >= 3, "a's first replay")
    pa, pb = a["postback_id"], b["postback_id"]
    assert outcomes(results) == Counter({(pa, "rejected", 0): 1, (pb, "rejected", 0): 1, (pa, "rejected", 1): 1})
    assert of_replay(results, 1)["attempts"] == 2, "the attempts of every cycle are counted"
    dead = await deployment.wait_for("postbacks.dead-letter", lambda r: len(r) >= 3, "a's dead-letter again")
    again = of_replay(dead, 1)
    assert (again["postback_id"], again["result"]) == (pa, "rejected")
    assert again["postback"] == a, "the postback replayed is the one matched, without its request"

    # the cause fixed: a second replay of a delivers it; b's request, written twice, starts one cycle
    sink.respond_with("/goal", body="OK", status=200)
    b_request = replay_request(b)
    await deployment.produce("postbacks.s2s", [replay_request(a), b_request, b_request])
    results = await deployment.wait_for("postbacks.results", lambda r: len(r) >= 5, "both delivered")
    assert outcomes(results) - outcomes(first) == Counter(
        {(pa, "rejected", 1): 1, (pa, "delivered", 2): 1, (pb, "delivered", 1): 1}
    )
    assert Counter(r.query["cid"] for r in sink.delivered("/goal")) == Counter({"click-c-a": 1, "click-c-b": 1})
    assert sink.count("/goal") == 5, "2 first attempts, a rejected once more, then each delivered once"
    for record in results:
        assert not list(full_validator("delivery-result").iter_errors(record.json()))
    for record in await deployment.read("postbacks.dead-letter"):
        assert not list(full_validator("dead-letter").iter_errors(record.json()))
    await wait_until_consumed(deployment, "postbacks.s2s", f"{deployment.app_id}-dispatch-s2s")
    _, text = await dispatcher.http_get("/metrics")
    assert (metric(text, "start"), metric(text, "duplicate") + metric(text, "not_final")) == (3, 1)

    # after a restart: b's request read again starts nothing, a replay of a delivered postback is refused
    dispatcher.kill()
    restarted = deployment.start_dispatcher()
    await deployment.produce("postbacks.s2s", [b_request, replay_request(b), replay_request(a)])
    await wait_until_consumed(deployment, "postbacks.s2s", f"{deployment.app_id}-dispatch-s2s")
    _, text = await restarted.http_get("/metrics")
    assert (metric(text, "duplicate"), metric(text, "delivered"), metric(text, "start")) == (1, 2, 0)
    assert len(await deployment.read("postbacks.results")) == 5, "no results record for a request refused"
    assert sink.count("/goal") == 5, "nothing sent again"
    assert "the postback was delivered, it is never replayed" in restarted.log_text()


@pytest.mark.parametrize("step", ["outcome-recording", "results-writing", "results-written", "final-written"])
async def test_a_dispatcher_killed_at_any_step_of_a_replay_leaves_one_record_for_that_replay(
    deployment: Deployment, counting_sink: CountingSink, tmp_path: Path, step: str
) -> None:
    """The records of the first cycle (same postback_id, same partitions) never stand in for the replay's."""
    deployment.extra_env.update(CRASH_ENV)
    postbacks = matched_postbacks(counting_sink)
    held = next(p for p in postbacks if p["entry_id"] == "reject" and p["conversion_id"] == "c0")
    first = deployment.start_dispatcher()
    await deployment.produce("postbacks.s2s", [(p["conversion_id"], p) for p in postbacks])
    await deployment.wait_for("postbacks.results", lambda r: len(r) >= len(postbacks), "every first result")
    assert await asyncio.to_thread(first.terminate) == 0

    signal_file = tmp_path / f"reached-{step}"
    crashing = deployment.start_dispatcher(
        module="tests.integration.crashpoint_dispatch",
        env={"CRASHPOINT": step, "CRASHPOINT_FILE": str(signal_file), "CRASHPOINT_POSTBACK": held["postback_id"]},
    )
    await deployment.produce("postbacks.s2s", [replay_request(held)])  # /reject still answers 400
    await wait_for_file(signal_file, crashing)
    crashing.kill()

    restarted = deployment.start_dispatcher()
    await deployment.wait_for(
        "postbacks.results", lambda r: any(x.json().get("replay") == 1 for x in r), "the replay's result"
    )
    # owns every partition (what a previous owner left decided is finished by then), nothing pending, consumed,
    # then stopped gracefully: nothing more can arrive
    await wait_until_settled(deployment, restarted, len(postbacks))

    pid = held["postback_id"]
    results = Counter(
        (r.json()["postback_id"], r.json().get("replay", 0)) for r in await deployment.read("postbacks.results")
    )
    assert results == Counter({(p["postback_id"], 0): 1 for p in postbacks} | {(pid, 1): 1})
    dead = Counter(
        (r.json()["postback_id"], r.json().get("replay", 0)) for r in await deployment.read("postbacks.dead-letter")
    )
    assert dead[(pid, 0)] == dead[(pid, 1)] == 1
    # killed after the answer arrived and before its outcome was recorded: the one allowed repeat
    assert counting_sink.answered[("/reject", "click-c0")] == (3 if step == "outcome-recording" else 2)
