"""The conversion trace end to end: rules, conversions, a worker, an S2S dispatcher to a loopback sink,
the api's trace index over the real broker, GET /v1/conversions/{id} and `postback-router trace`."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from typing import Any

import aiohttp
import pytest

from devtools.fakes.s2s_sink import S2SSink
from tests import factories as f
from tests.integration.kafka_helpers import DISPATCH_ENV, Deployment, WorkerProcess

# Not time_dependent: no date is written here, and the trace index ages rows by their Kafka record
# timestamps, which the broker sets by its own clock: under `make test-later`'s shifted clock every row
# would look 60 days old, past TRACE_RETENTION.
pytestmark = pytest.mark.integration

TOKEN = "integration-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def start_api(deployment: Deployment, name: str) -> WorkerProcess:
    env = {**deployment.env(), "API_TOKEN": TOKEN, "LOG_FORMAT": "text"}
    api = WorkerProcess(env, deployment.tmp_path / f"{name}.log", command=("api",)).start()
    deployment.workers.append(api)
    return api


async def get_trace(api: WorkerProcess, conversion_id: str, token: str = TOKEN) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{api.base_url}/v1/conversions/{conversion_id}", headers={"Authorization": f"Bearer {token}"}
        ) as response,
    ):
        return response.status, await response.json()


def settled(trace: dict[str, Any], versions: int) -> bool:
    """`versions` evaluated versions, and every postback they fired with its final outcome."""
    if len(trace["versions"]) < versions:
        return False
    fired = [e for v in trace["versions"] for e in v["entries"] if e["fired"]]
    return all(e["delivery"]["state"] != "pending" for e in fired) and all(
        e["delivery"]["state"] != "rejected" or "dead_letter" in e["delivery"] for e in fired
    )


async def wait_for_trace(api: WorkerProcess, conversion_id: str, versions: int, deadline: float = 90) -> Any:
    loop = asyncio.get_running_loop()
    stop_at = loop.time() + deadline
    last: Any = None
    while loop.time() < stop_at:
        api.check_alive()
        status, body = await get_trace(api, conversion_id)
        if status == 200 and settled(body, versions):
            return body
        last = (status, body)
        await asyncio.sleep(0.2)
    raise AssertionError(f"no settled trace of {conversion_id} within {deadline}s: {last}")


def entries_of(version: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["entry_id"]: e for e in version["entries"]}


async def test_a_conversion_trace_through_the_broker(deployment: Deployment, sink: S2SSink) -> None:
    deployment.extra_env.update(DISPATCH_ENV)
    sink.respond_with("/reject", body="ERROR: unknown goal", status=400)
    entries = [
        f.s2s_entry("ok", url=sink.url("/ok?cid={clickid}&status={status}")),
        f.s2s_entry("reject", url=sink.url("/reject?cid={clickid}")),
        f.s2s_entry("buyers", url=sink.url("/buyers?cid={clickid}"), conditional=f.conditional(types=["purchase"])),
        f.s2s_entry(
            "approved-only",
            url=sink.url("/approved?cid={clickid}"),
            conditional=f.conditional(statuses=["approved"]),
            payout_percent=50,
        ),
    ]
    await deployment.produce("campaign-rules", [("camp-1", f.campaign("camp-1", *entries))])
    deployment.start_worker()
    deployment.start_dispatcher()
    api = start_api(deployment, "api")
    await api.wait_ready()
    await deployment.produce("conversions", [("cv-1", f.conversion("cv-1", status="pending", payout="20"))])
    await wait_for_trace(api, "cv-1", versions=1)
    await deployment.produce("conversions", [("cv-1", f.conversion("cv-1", status="approved", payout="20"))])
    trace = await wait_for_trace(api, "cv-1", versions=2)

    assert trace["conversion_id"] == "cv-1" and trace["other_postbacks"] == []
    pending, approved = trace["versions"]
    assert (pending["status"], pending["status_source"], pending["campaign_id"]) == ("pending", "event", "camp-1")
    assert approved["status"] == "approved" and approved["payout"] == "20"
    first, second = entries_of(pending), entries_of(approved)
    assert {k: e["fired"] for k, e in first.items()} == {
        "ok": True,
        "reject": True,
        "buyers": False,
        "approved-only": False,
    }
    assert first["buyers"]["reason"] == "type_not_selected"
    assert first["approved-only"]["reason"] == "status_not_selected"
    assert {k: e["fired"] for k, e in second.items()} == {
        "ok": True,
        "reject": True,
        "buyers": False,
        "approved-only": True,
    }
    assert second["approved-only"]["payout"] == "10"  # payout_percent 50 of 20
    assert first["ok"]["postback_id"] != second["ok"]["postback_id"]  # another status: another postback
    assert first["ok"]["destination_id"] == second["ok"]["destination_id"]
    for entry in (first["ok"], second["ok"], second["approved-only"]):
        delivery = entry["delivery"]
        assert delivery["state"] == "delivered", entry
        assert delivery["attempts"] == 1 and delivery["last_http_status"] == 200
        assert delivery["latency_seconds"] >= 0
    for entry in (first["reject"], second["reject"]):
        delivery = entry["delivery"]
        assert delivery["state"] == "rejected" and delivery["last_http_status"] == 400
        assert delivery["dead_letter"]["reason"] == "http_400"
    # the trace carries no personal data and no click ids (the conversion's click id is "click-cv-1")
    assert "click-cv-1" not in json.dumps(trace)

    assert (await get_trace(api, "cv-unknown"))[0] == 404
    assert (await get_trace(api, "cv-1", token="wrong-token-0123456789"))[0] == 401

    # the command line, through the same api
    command = [sys.executable, "-m", "postback_router.cli", "trace", "cv-1"]
    env = {**deployment.env(), "API_URL": api.base_url, "API_TOKEN": TOKEN}
    text = await asyncio.to_thread(subprocess.run, command, env=env, capture_output=True, text=True, timeout=60)
    assert text.returncode == 0, text.stderr
    assert "version 2:" in text.stdout and "approved-only (s2s" in text.stdout and "http_400" in text.stdout
    raw = await asyncio.to_thread(
        subprocess.run, [*command, "--json"], env=env, capture_output=True, text=True, timeout=60
    )
    assert raw.returncode == 0 and json.loads(raw.stdout) == trace

    # a restart resumes from the positions kept in the index: the trace is there at once
    assert api.terminate() == 0
    again = start_api(deployment, "api-again")
    await again.wait_ready()
    status, body = await get_trace(again, "cv-1")
    assert status == 200 and body == trace
    loop = asyncio.get_running_loop()
    stop_at = loop.time() + 30
    while not (found := re.findall(r"trace index reading \d+ partitions \((\d+) resumed\)", again.log_text())):
        assert loop.time() < stop_at, "the restarted api's trace index did not start reading"
        await asyncio.sleep(0.1)
    assert int(found[0]) > 0, "the restarted index read the topics again from their beginning"
