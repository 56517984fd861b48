"""The rule test, the lists and /docs (postback_router/api/rule_test.py, listing.py, docs_page.py) over an
in-memory backend; tests/integration/test_api.py runs them through the real broker."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry

from postback_router.api.docs_page import CONTENT_SECURITY_POLICY
from postback_router.api.listing import decode_cursor, encode_cursor, page_of_keys, parse_list_query
from postback_router.api.openapi import build_openapi_document
from tests import factories as f
from tests.postback_router.api.test_app import AUTH, MemoryBackend, settings, started
from tests.postback_router.api.test_openapi import validator

TEST_URL = "/v1/campaigns/camp-1/rules/test"
EMAIL = "someone.private@example.org"


@pytest.fixture
def backend() -> MemoryBackend:
    return MemoryBackend()


@pytest.fixture
async def client(backend: MemoryBackend) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    running = await started(settings(DEFAULT_STATUS="pending"), backend, CollectorRegistry())
    yield running
    await running.close()


def sample(**fields: Any) -> dict[str, Any]:
    event = f.conversion("cv-1", "camp-1", **fields)
    for name in ("conversion_id", "campaign_id", "occurred_at"):  # the api fills them in
        event.pop(name)
    return event


async def test_rule_test(client: TestClient[web.Request, web.Application], backend: MemoryBackend) -> None:
    backend.tables["campaign_rules"]["camp-1"] = f.campaign(
        "camp-1",
        f.s2s_entry("all", url="https://t.example/pb?c={clickid}&s={status}&p={payout}&x={sub1}", payout_percent=50),
        f.s2s_entry("off", enabled=False),
        f.meta_entry("deposits", conditional=f.conditional(types=["deposit"])),
        f.google_entry("approved", conditional=f.conditional(statuses=["approved"])),
        f.tiktok_entry("big", conditional=f.conditional(min_payout="100")),
    )
    backend.tables["offer_sources"]["net"] = {"offer_source_id": "net", "default_status": "approved"}
    event = sample(type="lead", status=..., payout="10", offer_source_id="net", subs={"sub1": EMAIL})
    event["user"] = {"email": EMAIL, "phone": "+447911123456"}

    response = await client.post(TEST_URL, json={"conversion": event}, headers=AUTH)

    assert response.status == 200
    text = await response.text()
    assert EMAIL not in text and "7911123456" not in text  # the sample's personal data is not echoed
    answer = await response.json()
    assert answer["rules_source"] == "saved"
    assert (answer["status"], answer["status_source"]) == ("approved", "offer_source")  # the view's default
    assert answer["fired"] == 2
    entries = {e["entry_id"]: e for e in answer["entries"]}
    assert [e["entry_id"] for e in answer["entries"]] == ["all", "off", "deposits", "approved", "big"]
    assert {k: (e["fired"], e["reason"]) for k, e in entries.items()} == {
        "all": (True, None),
        "off": (False, "disabled"),
        "deposits": (False, "type_not_selected"),
        "approved": (True, None),
        "big": (False, "below_min_payout"),
    }
    fired = entries["all"]
    assert fired["payout_sent"] == "5" and fired["status"] == "approved" and fired["postback_id"]
    assert fired["url"] == "https://t.example/pb?c=click-cv-1&s=approved&p=5&x=[redacted]"
    assert entries["off"]["postback_id"] is None and entries["off"]["url"] is None
    assert backend.written == []  # no side effects


async def test_rule_test_of_unsaved_rules_without_saved_ones(
    client: TestClient[web.Request, web.Application], backend: MemoryBackend
) -> None:
    rules = {"postbacks": [f.s2s_entry("a", conditional=f.conditional(statuses=["approved"]))]}
    response = await client.post(TEST_URL, json={"conversion": sample(status=...), "rules": rules}, headers=AUTH)
    assert response.status == 200
    answer = await response.json()
    assert answer["rules_source"] == "request"
    # no status, no offer source: the service default (DEFAULT_STATUS=pending here)
    assert (answer["status"], answer["status_source"]) == ("pending", "default")
    assert [(e["fired"], e["reason"]) for e in answer["entries"]] == [(False, "status_not_selected")]
    assert backend.written == []


async def test_rule_test_without_any_rules_is_404(client: TestClient[web.Request, web.Application]) -> None:
    response = await client.post(TEST_URL, json={"conversion": sample()}, headers=AUTH)
    assert response.status == 404
    assert "send `rules`" in (await response.json())["error"]


async def test_rule_test_refuses_invalid_input_naming_each_field(
    client: TestClient[web.Request, web.Application], caplog: pytest.LogCaptureFixture
) -> None:
    bad_rules = {"postbacks": [f.s2s_entry("a", url="https://t.example/?c={nope}"), f.s2s_entry("a")]}
    event = sample(payout="-1", user={"email": EMAIL})
    with caplog.at_level(logging.DEBUG):
        response = await client.post(TEST_URL, json={"conversion": event, "rules": bad_rules}, headers=AUTH)
    assert response.status == 400
    text = await response.text()
    answer = await response.json()
    assert answer["error"] == "invalid rule test"
    fields = {e["field"] for e in answer["fields"]}
    assert "conversion.payout" in fields
    assert {"rules.postbacks.0.url", "rules.postbacks.1.id"} <= fields
    assert EMAIL not in text and EMAIL not in caplog.text

    for body, field in [
        ({"conversion": sample(), "extra": 1}, "extra"),
        ({}, "conversion"),
        ({"conversion": {**sample(), "campaign_id": "other"}}, "conversion.campaign_id"),
        ({"conversion": sample(), "rules": {"campaign_id": "other", "postbacks": []}}, "rules.campaign_id"),
        ([], "(body)"),
    ]:
        response = await client.post(TEST_URL, json=body, headers=AUTH)
        assert response.status == 400, body
        assert field in {e["field"] for e in (await response.json())["fields"]}, body


async def test_rule_test_needs_the_token(client: TestClient[web.Request, web.Application]) -> None:
    response = await client.post(TEST_URL, json={"conversion": sample()})
    assert response.status == 401


# -- lists


def test_page_of_keys_filters_by_prefix_and_starts_after_the_cursor() -> None:
    keys = sorted(["a", "b-1", "b-2", "b-3", "ba", "c"])
    assert page_of_keys(keys, "b-", None, 2) == ["b-1", "b-2"]
    assert page_of_keys(keys, "b-", "b-2", 10) == ["b-3"]
    assert page_of_keys(keys, "b-", "a", 10) == ["b-1", "b-2", "b-3"]  # a cursor before the prefix
    assert page_of_keys(keys, "", "c", 10) == []
    assert page_of_keys(keys, "z", None, 10) == []


@pytest.mark.parametrize("key", ["camp-1", "é/ü?&=", "x" * 256, "a+b/c"])
def test_cursors_round_trip_and_are_url_safe(key: str) -> None:
    cursor = encode_cursor(key)
    assert re.fullmatch(r"[A-Za-z0-9_-]*", cursor)
    assert decode_cursor(cursor) == key


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"limit": "+5"}, "limit"),
        ({"cursor": "!!"}, "cursor"),
        ({"cursor": "A"}, "cursor"),
        ({"prefix": "p" * 257}, "prefix"),
    ],
)
def test_invalid_list_queries_name_the_parameter(query: dict[str, str], field: str) -> None:
    parsed, errors = parse_list_query(query)
    assert parsed is None and [e.field for e in errors] == [field]


async def test_lists_page_through_everything_in_order(
    client: TestClient[web.Request, web.Application], backend: MemoryBackend
) -> None:
    ids = [f"camp-{n:03d}" for n in range(25)] + ["other-1"]
    for campaign_id in reversed(ids):
        backend.tables["campaign_rules"][campaign_id] = f.campaign(
            campaign_id, f.s2s_entry("a"), f.s2s_entry("b", conditional=f.conditional(types=["lead"]))
        )
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        query = {"prefix": "camp-", "limit": "10", **({"cursor": cursor} if cursor else {})}
        response = await client.get("/v1/campaigns", params=query, headers=AUTH)
        assert response.status == 200
        answer = await response.json()
        pages += 1
        seen += [item["campaign_id"] for item in answer["items"]]
        cursor = answer["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[:25] and pages == 3
    item = answer["items"][0]
    assert item == {"campaign_id": "camp-020", "postbacks": 2, "conditional": 1, "enabled": 2, "changed_at": None}


async def test_offer_sources_list_and_defaults(
    client: TestClient[web.Request, web.Application], backend: MemoryBackend
) -> None:
    backend.tables["offer_sources"]["net-b"] = {"offer_source_id": "net-b", "default_status": "pending"}
    backend.tables["offer_sources"]["net-a"] = {
        "offer_source_id": "net-a",
        "default_status": "approved",
        "default_region": "GB",
    }
    response = await client.get("/v1/offer-sources", headers=AUTH)
    assert response.status == 200
    assert await response.json() == {
        "items": [
            {"offer_source_id": "net-a", "default_status": "approved", "default_region": "GB", "changed_at": None},
            {"offer_source_id": "net-b", "default_status": "pending", "default_region": None, "changed_at": None},
        ],
        "next_cursor": None,
    }
    assert (await client.get("/v1/offer-sources")).status == 401
    response = await client.get("/v1/campaigns", params={"limit": "5000"}, headers=AUTH)
    assert response.status == 400
    assert [e["field"] for e in (await response.json())["fields"]] == ["limit"]


# -- /docs


async def test_docs_page_uses_only_local_assets_under_a_strict_policy(
    client: TestClient[web.Request, web.Application],
) -> None:
    response = await client.get("/docs")  # no token needed
    assert response.status == 200
    assert response.content_type == "text/html"
    assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert "'unsafe-inline'" not in CONTENT_SECURITY_POLICY and "http" not in CONTENT_SECURITY_POLICY
    page = await response.text()
    references = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert references and all(ref.startswith("/docs/") for ref in references), references
    assert "<script>" not in page  # every script is a file: no inline script for the policy to allow
    for ref in references:
        asset = await client.get(ref)
        assert asset.status == 200, ref
        assert len(await asset.read()) > 0
        assert asset.headers["X-Content-Type-Options"] == "nosniff"
    init = await (await client.get("/docs/init.js")).text()
    assert '"/openapi.json"' in init and "validatorUrl: null" in init
    bundle = await (await client.get("/docs/swagger-ui-bundle.js")).read()
    assert b"SwaggerUIBundle" in bundle
    assert (await client.get("/docs/..%2Fpyproject.toml")).status == 404
    assert (await client.get("/docs/swagger-ui.js.map")).status == 404


async def test_answers_match_their_openapi_schemas(
    client: TestClient[web.Request, web.Application], backend: MemoryBackend
) -> None:
    document = build_openapi_document(intake_secret_required=False)
    backend.tables["campaign_rules"]["camp-1"] = f.campaign(
        "camp-1", f.s2s_entry("a"), f.meta_entry("m", enabled=False)
    )
    backend.tables["offer_sources"]["net"] = {"offer_source_id": "net", "default_status": "approved"}
    body = {"conversion": sample(user={"email": EMAIL}), "rules": None}
    assert validator(document, "RuleTest").is_valid(body)
    answer = await (await client.post(TEST_URL, json=body, headers=AUTH)).json()
    validator(document, "RuleTestResult").validate(answer)
    campaigns = await (await client.get("/v1/campaigns", params={"limit": "1"}, headers=AUTH)).json()
    validator(document, "CampaignList").validate(campaigns)
    sources = await (await client.get("/v1/offer-sources", headers=AUTH)).json()
    validator(document, "OfferSourceList").validate(sources)
