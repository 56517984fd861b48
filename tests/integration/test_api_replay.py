"""POST /v1/postbacks/{postback_id}/replay on a real api process, through the real broker, with a real
dispatcher and an S2S sink on loopback: 202 and one new results record marked replay 1 once the cause is
fixed; 409 for a delivered postback, 404 for an unknown one, 401 without the token."""

from __future__ import annotations

import uuid
from typing import Any

import aiohttp
import pytest

from devtools.fakes.s2s_sink import S2SSink
from tests import factories as f
from tests.integration.kafka_helpers import Deployment, WorkerProcess
from tests.integration.test_dispatch_s2s import DISPATCH_ENV

pytestmark = [pytest.mark.integration, pytest.mark.time_dependent]

TOKEN = "replay-test-token-0123456789"


async def post_replay(api: WorkerProcess, postback_id: str, token: str | None = TOKEN) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    timeout = aiohttp.ClientTimeout(total=30)
    url = f"{api.base_url}/v1/postbacks/{postback_id}/replay"
    async with aiohttp.ClientSession(timeout=timeout) as session, session.post(url, headers=headers) as response:
        return response.status, await response.json()


async def test_the_api_replays_a_rejected_postback_and_refuses_a_delivered_one(
    deployment: Deployment, sink: S2SSink
) -> None:
    deployment.extra_env.update(DISPATCH_ENV)
    sink.respond_with("/goal", body="ERROR: unknown goal", status=400)
    entries = [f.s2s_entry(name, url=sink.url(f"/{name}?cid={{clickid}}")) for name in ("goal", "ok")]
    await deployment.produce("campaign-rules", [("camp-1", f.campaign("camp-1", *entries))])
    deployment.start_worker()
    deployment.start_dispatcher()
    api = WorkerProcess({**deployment.env(), "API_TOKEN": TOKEN}, deployment.tmp_path / "api.log", command=("api",))
    deployment.workers.append(api.start())
    await api.wait_ready()
    await deployment.produce("conversions", [("c1", f.conversion("c1"))])
    first = await deployment.wait_for("postbacks.results", lambda r: len(r) >= 2, "2 results")
    by_entry = {r.json()["entry_id"]: r.json() for r in first}
    rejected, delivered = by_entry["goal"]["postback_id"], by_entry["ok"]["postback_id"]
    assert (by_entry["goal"]["result"], by_entry["ok"]["result"]) == ("rejected", "delivered")

    assert (await post_replay(api, rejected, token=None))[0] == 401
    assert (await post_replay(api, rejected, token="wrong-token-0123456789"))[0] == 401
    status, body = await post_replay(api, delivered)
    assert status == 409 and "never replayed" in body["error"]
    assert (await post_replay(api, str(uuid.uuid5(uuid.NAMESPACE_URL, "never-seen"))))[0] == 404
    assert (await post_replay(api, "not-a-postback-id"))[0] == 404

    sink.respond_with("/goal", body="OK", status=200)
    status, body = await post_replay(api, rejected)
    assert status == 202, body
    assert (body["postback_id"], body["kind"], body["last_outcome"]["result"]) == (rejected, "s2s", "rejected")
    assert body["request"]["requested_by"] == "api"
    results = await deployment.wait_for("postbacks.results", lambda r: len(r) >= 3, "the replay's result")
    (replayed,) = [r.json() for r in results if r.json().get("replay")]
    assert (replayed["postback_id"], replayed["result"], replayed["replay"]) == (rejected, "delivered", 1)
    assert len(sink.delivered("/goal")) == 1

    status, body = await post_replay(api, rejected)
    assert status == 409, "delivered by its replay: never replayed again"
