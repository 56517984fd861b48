"""Tracker-style intake over HTTP (postback_router/api/app.py): `/postback`, tracker field names,
statuses mapped by the offer source's status_map and INTAKE_STATUS_MAP."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry

from tests.postback_router.api.test_app import AUTH, MemoryBackend, settings, started

Client = TestClient[web.Request, web.Application]


@pytest.fixture
def backend() -> MemoryBackend:
    return MemoryBackend()


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
async def client(backend: MemoryBackend, registry: CollectorRegistry) -> AsyncIterator[Client]:
    running = await started(settings(), backend, registry)
    yield running
    await running.close()


def conversions(backend: MemoryBackend) -> list[dict[str, object]]:
    return [dict(w.value) for w in backend.on("conversions") if w.value is not None]


async def test_a_redtrack_call_on_slash_postback_is_taken_in(client: Client, backend: MemoryBackend) -> None:
    response = await client.get(
        "/postback", params={"clickid": "rt-1", "campaign_id": "k", "sum": "12.50", "status": "SALE", "type": "ftd"}
    )
    assert response.status == 200, await response.text()
    (event,) = conversions(backend)
    assert (event["click_id"], event["payout"], event["status"], event["type"]) == ("rt-1", "12.50", "approved", "ftd")


async def test_voluum_and_keitaro_names_by_post(client: Client, backend: MemoryBackend) -> None:
    for fields in (
        {"cid": "v-1", "campaign_id": "k", "payout": "1", "status": "approved"},
        {"subid": "kt-1", "campaign_id": "k", "payout": "2", "status": "rejected", "goal": "dep"},
    ):
        response = await client.post("/postback", data=fields)
        assert response.status == 200, await response.text()
    first, second = conversions(backend)
    assert (first["click_id"], first["status"]) == ("v-1", "approved")
    assert (second["click_id"], second["status"], second["type"]) == ("kt-1", "declined", "dep")


async def test_two_click_ids_that_differ_are_400_naming_both(client: Client, backend: MemoryBackend) -> None:
    response = await client.get("/postback", params={"clickid": "a", "cid": "b", "campaign_id": "k"})
    assert response.status == 400
    body = await response.json()
    assert body["reason"] == "conflicting_fields"
    assert [(f["field"], f["reason"]) for f in body["fields"]] == [
        ("clickid", "conflicting_fields"),
        ("cid", "conflicting_fields"),
    ]
    assert not backend.written


async def test_an_unmapped_status_is_400_naming_the_accepted_values(client: Client, backend: MemoryBackend) -> None:
    response = await client.get("/v1/postback", params={"clickid": "c", "campaign_id": "k", "status": "paid"})
    assert response.status == 400
    (field,) = (await response.json())["fields"]
    assert field["field"] == "status" and "approved, pending, declined, other" in field["message"]
    assert "sale" in field["message"]
    assert not backend.written


async def test_the_offer_sources_status_map_applies_before_the_default(client: Client, backend: MemoryBackend) -> None:
    document = {"default_status": "pending", "status_map": {"Paid": "approved", "sale": "pending"}}
    assert (await client.put("/v1/offer-sources/os-1", json=document, headers=AUTH)).status == 200
    for status in ("paid", "SALE", "hold"):
        response = await client.get(
            "/postback",
            params={"clickid": f"c-{status}", "campaign_id": "k", "offer_source_id": "os-1", "status": status},
        )
        assert response.status == 200, await response.text()
    # another offer source (or none) has only the default map
    response = await client.get(
        "/postback", params={"clickid": "c-x", "campaign_id": "k", "offer_source_id": "os-2", "status": "paid"}
    )
    assert response.status == 400
    assert [e["status"] for e in conversions(backend)] == ["approved", "pending", "pending"]


async def test_an_invalid_status_map_is_refused_naming_each_entry(client: Client, backend: MemoryBackend) -> None:
    document = {"default_status": "pending", "status_map": {"sale": "paid", "Approved": "declined"}}
    response = await client.put("/v1/offer-sources/os-1", json=document, headers=AUTH)
    assert response.status == 400
    fields = {f["field"] for f in (await response.json())["fields"]}
    assert "status_map.sale" in fields
    assert not backend.written
    document = {"default_status": "pending", "status_map": {"Approved": "declined"}}
    response = await client.put("/v1/offer-sources/os-1", json=document, headers=AUTH)
    assert (await response.json())["fields"] == [
        {"field": "status_map.Approved", "message": "must be approved: a canonical status always maps to itself"}
    ]


async def test_intake_status_map_replaces_the_default(backend: MemoryBackend, registry: CollectorRegistry) -> None:
    client = await started(settings(INTAKE_STATUS_MAP='{"paid": "approved"}'), backend, registry)
    try:
        paid = await client.get("/postback", params={"clickid": "c1", "campaign_id": "k", "status": "PAID"})
        sale = await client.get("/postback", params={"clickid": "c2", "campaign_id": "k", "status": "sale"})
        assert (paid.status, sale.status) == (200, 400)
        document = await (await client.get("/openapi.json")).json()
        (status,) = [p for p in document["paths"]["/postback"]["get"]["parameters"] if p["name"] == "status"]
        assert (
            "[Pp][Aa][Ii][Dd]" in status["schema"]["pattern"] and "[Ss][Aa][Ll][Ee]" not in status["schema"]["pattern"]
        )
    finally:
        await client.close()


async def test_an_offer_source_read_that_fails_is_503_counted(
    client: Client, backend: MemoryBackend, registry: CollectorRegistry
) -> None:
    backend.failing = True
    response = await client.get(
        "/postback", params={"clickid": "c", "campaign_id": "k", "offer_source_id": "os-1", "status": "paid"}
    )
    assert response.status == 503
    assert registry.get_sample_value("postback_intake_total", {"result": "unavailable"}) == 1


async def test_a_postback_without_campaign_is_published_under_its_click_id(
    client: Client, backend: MemoryBackend
) -> None:
    response = await client.get("/postback", params={"clickid": "rt-7", "sum": "5", "status": "hold"})
    assert response.status == 200, await response.text()
    conversion_id = (await response.json())["conversion_id"]
    (written,) = backend.on("conversions")
    # keyed by the click, so that it lands on the click's partition; the index by the conversion
    assert written.key == "rt-7" and written.value is not None and "campaign_id" not in written.value
    assert [w.key for w in backend.on("conversion_index")] == [conversion_id]
    # its update (PATCH) goes the same way
    response = await client.patch(f"/v1/conversions/{conversion_id}", json={"status": "approved"}, headers=AUTH)
    assert response.status == 202, await response.text()
    assert [w.key for w in backend.on("conversions")] == ["rt-7", "rt-7"]
