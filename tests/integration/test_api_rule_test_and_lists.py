"""The rule test, the lists and /docs of `postback-router api` (a subprocess) against the real broker.

The rule test's answer is compared with what a real worker then does with the same conversion.
Schemathesis covers these routes too, in tests/integration/test_api.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from service.kafka_io import Record
from tests import factories as f
from tests.integration import test_api
from tests.integration.test_api import AUTH, RunningApi

# the api process and its client session, as test_api.py starts them (one process for this module)
api = test_api.api
http = test_api.http

# Not time_dependent: no date is written here, and `changed_at` is a Kafka record timestamp that the
# broker sets by its own clock: under `make test-later`'s shifted clock it would look 60 days old.
pytestmark = pytest.mark.integration

# the worker's reason codes (conversions.evaluated) and the rule test's names for them
REASON_NAMES = {
    "disabled": "disabled",
    "type": "type_not_selected",
    "status": "status_not_selected",
    "payout": "below_min_payout",
}


async def test_the_rule_test_answers_what_the_worker_then_does(api: RunningApi, http: aiohttp.ClientSession) -> None:
    rules = f.campaign(
        "rt-camp",
        f.s2s_entry("half", url="https://t.example/pb?c={clickid}&s={status}&p={payout}", payout_percent=50),
        f.s2s_entry("off", enabled=False),
        f.s2s_entry("approved-only", conditional=f.conditional(statuses=["approved"])),
        f.meta_entry("big", conditional=f.conditional(min_payout="100")),
        f.google_entry("deposits", conditional=f.conditional(types=["deposit"], statuses=["pending"])),
    )
    async with http.put("/v1/campaigns/rt-camp/rules", json=rules, headers=AUTH) as response:
        assert response.status == 200
    async with http.put("/v1/offer-sources/rt-net", json={"default_status": "pending"}, headers=AUTH) as response:
        assert response.status == 200
    conversion = f.conversion(
        "rt-conv-1", "rt-camp", status=..., type="deposit", payout="12.40", offer_source_id="rt-net"
    )

    async with http.post("/v1/campaigns/rt-camp/rules/test", json={"conversion": conversion}, headers=AUTH) as response:
        assert response.status == 200, await response.text()
        answer = await response.json()
    assert (answer["status"], answer["status_source"]) == ("pending", "offer_source")  # the api's view of the source
    entries = {e["entry_id"]: e for e in answer["entries"]}
    assert entries["half"]["url"] == "https://t.example/pb?c=click-rt-conv-1&s=pending&p=6.2"
    # nothing was published by the test
    assert not [r for r in await api.deployment.read("conversions") if r.key == b"rt-conv-1"]

    api.deployment.start_worker()
    await api.deployment.produce("conversions", [("rt-conv-1", conversion)])

    def evaluation(records: list[Record]) -> dict[str, Any] | None:
        found = [r.json() for r in records if r.key == b"rt-conv-1"]
        return found[0] if found else None

    records = await api.deployment.wait_for(
        "conversions.evaluated", lambda rs: evaluation(rs) is not None, "evaluation"
    )
    evaluated = evaluation(records)
    assert evaluated is not None
    assert (evaluated["status"], evaluated["status_source"]) == (answer["status"], answer["status_source"])
    worker_fired = {e["entry_id"]: (e["postback_id"], e["payout"]) for e in evaluated["fired"]}
    test_fired = {e["entry_id"]: (e["postback_id"], e["payout_sent"]) for e in answer["entries"] if e["fired"]}
    assert (
        test_fired
        == worker_fired
        == {
            "half": (entries["half"]["postback_id"], "6.2"),
            "deposits": (entries["deposits"]["postback_id"], "12.4"),  # payout_percent 100 as the worker writes it
        }
    )
    worker_skipped = {e["entry_id"]: REASON_NAMES[e["reason"]] for e in evaluated["skipped"]}
    assert worker_skipped == {e["entry_id"]: e["reason"] for e in answer["entries"] if not e["fired"]}
    postbacks = await api.deployment.wait_for(
        "postbacks.s2s", lambda rs: any(r.key == b"rt-conv-1" for r in rs), "the s2s postback"
    )
    (sent,) = [r.json() for r in postbacks if r.key == b"rt-conv-1"]
    assert sent["url"] == entries["half"]["url"]


async def test_unsaved_rules_and_invalid_samples(http: aiohttp.ClientSession) -> None:
    body = {"conversion": {"click_id": "c-1", "payout": "3"}, "rules": {"postbacks": [f.s2s_entry("a")]}}
    async with http.post("/v1/campaigns/rt-unsaved/rules/test", json=body, headers=AUTH) as response:
        assert response.status == 200
        answer = await response.json()
    assert answer["rules_source"] == "request" and answer["fired"] == 1
    async with http.post(
        "/v1/campaigns/rt-unsaved/rules/test", json={"conversion": body["conversion"]}, headers=AUTH
    ) as response:
        assert response.status == 404
    bad = {"conversion": {"payout": "x"}}
    async with http.post("/v1/campaigns/rt-unsaved/rules/test", json=bad, headers=AUTH) as response:
        assert response.status == 400
        fields = {e["field"] for e in (await response.json())["fields"]}
    assert fields & {"conversion.click_id", "conversion.payout"}


async def test_lists_page_through_the_views_with_their_change_times(http: aiohttp.ClientSession) -> None:
    before = datetime.now(UTC) - timedelta(seconds=5)
    ids = [f"lst-{n}" for n in range(5)]
    for campaign_id in ids:
        rules = f.campaign(campaign_id, f.s2s_entry("a"), f.s2s_entry("b", conditional=f.conditional(types=["x"])))
        async with http.put(f"/v1/campaigns/{campaign_id}/rules", json=rules, headers=AUTH) as response:
            assert response.status == 200
    async with http.delete("/v1/campaigns/lst-3/rules", headers=AUTH) as response:
        assert response.status == 204

    seen: list[dict[str, Any]] = []
    params = {"prefix": "lst-", "limit": "2"}
    while True:
        async with http.get("/v1/campaigns", params=params, headers=AUTH) as response:
            assert response.status == 200
            page = await response.json()
        seen += page["items"]
        if page["next_cursor"] is None:
            break
        params = {**params, "cursor": page["next_cursor"]}
    assert [item["campaign_id"] for item in seen] == ["lst-0", "lst-1", "lst-2", "lst-4"]
    for item in seen:
        assert (item["postbacks"], item["conditional"]) == (2, 1)
        changed_at = datetime.fromisoformat(item["changed_at"])
        assert before <= changed_at <= datetime.now(UTC) + timedelta(seconds=5)

    async with http.put("/v1/offer-sources/lst-net", json={"default_status": "declined"}, headers=AUTH) as response:
        assert response.status == 200
    async with http.get("/v1/offer-sources", params={"prefix": "lst-"}, headers=AUTH) as response:
        answer = await response.json()
    assert [(i["offer_source_id"], i["default_status"]) for i in answer["items"]] == [("lst-net", "declined")]
    assert answer["next_cursor"] is None


async def test_docs_page_and_assets(http: aiohttp.ClientSession) -> None:
    async with http.get("/docs") as response:
        assert response.status == 200
        assert "default-src 'self'" in response.headers["Content-Security-Policy"]
        page = await response.text()
    assert 'src="/docs/swagger-ui-bundle.js"' in page and "https://" not in page
    async with http.get("/docs/swagger-ui-bundle.js") as response:
        assert response.status == 200
        assert response.content_type == "text/javascript"
