"""The api's HTTP behaviour (postback_router/api/app.py) over an in-memory backend: no broker needed."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from aiohttp import FormData
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from postback_router.api.app import build_app
from postback_router.api.backend import Table, Unavailable, Write
from postback_router.ops_http import Readiness
from postback_router.settings import Settings, load_settings
from tests import factories as f

TOKEN = "test-token-0123456789"
SECRET = "intake-secret-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class MemoryBackend:
    """The Backend protocol over dicts; `failing` makes every call raise Unavailable, as a lost cluster does."""

    def __init__(self) -> None:
        self.tables: dict[str, dict[str, dict[str, Any]]] = {
            "campaign_rules": {},
            "offer_sources": {},
            "conversion_index": {},
        }
        self.written: list[Write] = []
        self.failing = False
        self.explode = False

    async def read(self, table: Table, key: str) -> dict[str, Any] | None:
        if self.explode:
            raise RuntimeError("a bug")
        if self.failing:
            raise Unavailable("Kafka did not answer in time")
        return self.tables[table].get(key)

    async def write(self, writes: Sequence[Write]) -> None:
        if self.failing:
            raise Unavailable("Kafka did not acknowledge the write in time; repeat the request")
        for write in writes:
            self.written.append(write)
            if write.destination != "conversions":
                if write.value is None:
                    self.tables[write.destination].pop(write.key, None)
                else:
                    self.tables[write.destination][write.key] = dict(write.value)

    def on(self, destination: str) -> list[Write]:
        return [w for w in self.written if w.destination == destination]


def settings(**env: str) -> Settings:
    return load_settings({"API_TOKEN": TOKEN, "API_MAX_BODY_BYTES": "4096", **env}, require_kafka=False)


@pytest.fixture
def backend() -> MemoryBackend:
    return MemoryBackend()


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


async def started(app_settings: Settings, backend: MemoryBackend, registry: CollectorRegistry) -> TestClient:
    readiness = Readiness(registry, ["kafka"])
    client = TestClient(TestServer(build_app(app_settings, backend, registry, readiness)))
    await client.start_server()
    return client


@pytest.fixture
async def client(backend: MemoryBackend, registry: CollectorRegistry) -> AsyncIterator[TestClient]:
    running = await started(settings(), backend, registry)
    yield running
    await running.close()


@pytest.fixture
async def secured(backend: MemoryBackend, registry: CollectorRegistry) -> AsyncIterator[TestClient]:
    running = await started(settings(INTAKE_SECRET=SECRET), backend, registry)
    yield running
    await running.close()


# -- management


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "/v1/campaigns/k/rules"),
        ("GET", "/v1/campaigns/k/rules"),
        ("DELETE", "/v1/campaigns/k/rules"),
        ("PUT", "/v1/offer-sources/o"),
        ("GET", "/v1/offer-sources/o"),
        ("DELETE", "/v1/offer-sources/o"),
        ("PATCH", "/v1/conversions/cv"),
    ],
)
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": TOKEN}])
async def test_management_needs_the_bearer_token(
    client: TestClient, backend: MemoryBackend, method: str, path: str, headers: dict[str, str]
) -> None:
    response = await client.request(method, path, headers=headers, json={"status": "approved"})
    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert (await response.json())["error"].startswith("a valid bearer token is required")
    assert backend.written == []


async def test_rules_round_trip(client: TestClient, backend: MemoryBackend) -> None:
    rules = {"postbacks": [f.s2s_entry("src")]}  # campaign_id left out: the path gives it
    put = await client.put("/v1/campaigns/camp-1/rules", json=rules, headers=AUTH)
    assert put.status == 200
    stored = {**rules, "campaign_id": "camp-1"}
    assert await put.json() == stored
    assert backend.on("campaign_rules") == [Write("campaign_rules", "camp-1", stored)]
    got = await client.get("/v1/campaigns/camp-1/rules", headers=AUTH)
    assert got.status == 200 and await got.json() == stored
    deleted = await client.delete("/v1/campaigns/camp-1/rules", headers=AUTH)
    assert deleted.status == 204
    assert backend.written[-1] == Write("campaign_rules", "camp-1", None)  # a tombstone
    for method in ("GET", "DELETE"):
        gone = await client.request(method, "/v1/campaigns/camp-1/rules", headers=AUTH)
        assert gone.status == 404 and await gone.json() == {"error": "no campaign rules under this id"}


async def test_offer_source_round_trip(client: TestClient, backend: MemoryBackend) -> None:
    put = await client.put("/v1/offer-sources/os-1", json={"default_status": "pending"}, headers=AUTH)
    assert put.status == 200
    assert await put.json() == {"default_status": "pending", "offer_source_id": "os-1"}
    assert (await (await client.get("/v1/offer-sources/os-1", headers=AUTH)).json())["default_status"] == "pending"
    assert (await client.delete("/v1/offer-sources/os-1", headers=AUTH)).status == 204


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        (
            {"postbacks": [f.s2s_entry("a", url="https://t.example/?c={nope}"), f.s2s_entry("a")]},
            {"postbacks.0.url", "postbacks.1.id"},
        ),
        ({"postbacks": [{"id": "fb", "kind": "meta"}]}, {"postbacks.0.pixel_id", "postbacks.0.credentials"}),
        (
            {"postbacks": [f.s2s_entry("a", conditional={"enabled": True})]},
            {"postbacks.0.conditional"},
        ),
        ({"campaign_id": "other", "postbacks": []}, {"campaign_id"}),
        ({"postbacks": [], "extra": 1}, {"(body)"}),
        ([], {"(body)"}),
    ],
)
async def test_invalid_rules_are_refused_naming_each_field(
    client: TestClient, backend: MemoryBackend, body: Any, fields: set[str]
) -> None:
    response = await client.put("/v1/campaigns/camp-1/rules", json=body, headers=AUTH)
    assert response.status == 400
    answer = await response.json()
    assert answer["error"] == "invalid campaign rules"
    assert {e["field"] for e in answer["fields"]} == fields
    assert backend.written == []


async def test_invalid_offer_source_names_the_field(client: TestClient) -> None:
    response = await client.put("/v1/offer-sources/o", json={"default_status": "sale"}, headers=AUTH)
    assert response.status == 400
    assert await response.json() == {
        "error": "invalid offer source",
        "fields": [{"field": "default_status", "message": "must be one of 'approved', 'pending', 'declined', 'other'"}],
    }


async def test_a_body_that_is_not_json_is_refused(client: TestClient) -> None:
    response = await client.put("/v1/offer-sources/o", data=b"{nope", headers=AUTH)
    assert response.status == 400
    assert (await response.json())["fields"] == [{"field": "(body)", "message": "must be JSON"}]


async def test_an_id_too_long_for_the_topics_is_refused(client: TestClient) -> None:
    long_id = "x" * 257
    put = await client.put(f"/v1/offer-sources/{long_id}", json={"default_status": "pending"}, headers=AUTH)
    assert put.status == 400 and (await put.json())["fields"][0]["field"] == "offer_source_id"
    assert (await client.get(f"/v1/offer-sources/{long_id}", headers=AUTH)).status == 404


# -- errors are JSON


async def test_unknown_routes_and_methods_answer_json(client: TestClient) -> None:
    missing = await client.get("/v2/nothing")
    assert missing.status == 404 and missing.content_type == "application/json"
    wrong_method = await client.post("/v1/campaigns/k/rules", headers=AUTH)
    assert wrong_method.status == 405 and wrong_method.content_type == "application/json"
    assert set(wrong_method.headers["Allow"].split(",")) == {"PUT", "GET", "DELETE"}
    head = await client.head("/v1/postback?clickid=c&campaign_id=k")  # HEAD must not take a conversion in
    assert head.status == 405


async def test_an_oversized_body_is_413_json(client: TestClient, backend: MemoryBackend) -> None:
    big = {"default_status": "pending", "name": "x" * 5000}
    response = await client.put("/v1/offer-sources/o", json=big, headers=AUTH)
    assert response.status == 413
    assert await response.json() == {"error": "the request body is larger than 4096 bytes"}
    form = await client.post("/v1/postback", data={"clickid": "c", "campaign_id": "k", "sub1": "x" * 5000})
    assert form.status == 413 and form.content_type == "application/json"
    assert backend.written == []


async def test_kafka_unavailable_is_503_json(client: TestClient, backend: MemoryBackend) -> None:
    backend.failing = True
    for response in (
        await client.put("/v1/offer-sources/o", json={"default_status": "pending"}, headers=AUTH),
        await client.get("/v1/campaigns/k/rules", headers=AUTH),
        await client.get("/v1/postback?clickid=c&campaign_id=k"),
    ):
        assert response.status == 503
        assert response.headers["Retry-After"] == "1"
        assert "repeat" in (await response.json())["error"] or "in time" in (await response.json())["error"]


async def test_an_unexpected_error_is_500_json_without_request_details(
    client: TestClient, backend: MemoryBackend, caplog: pytest.LogCaptureFixture
) -> None:
    backend.explode = True
    with caplog.at_level(logging.ERROR):
        response = await client.get("/v1/campaigns/ann%40example.com/rules?x=1", headers=AUTH)
    assert response.status == 500 and await response.json() == {"error": "internal error"}
    assert "unexpected error answering GET /v1/campaigns/{campaign_id}/rules" in caplog.text
    assert "ann" not in caplog.text and "x=1" not in caplog.text


# -- intake


async def test_intake_by_get_publishes_the_conversion_and_its_index_entry(
    client: TestClient, backend: MemoryBackend, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        response = await client.get(
            "/v1/postback", params={"clickid": "rt-1", "campaign_id": "k", "sum": "12.50", "status": "pending"}
        )
    assert response.status == 200
    answer = await response.json()
    assert answer["status"] == "accepted"
    (conversion,) = backend.on("conversions")
    (index,) = backend.on("conversion_index")
    assert conversion.key == index.key == answer["conversion_id"]
    assert conversion.value is not None and conversion.value["payout"] == "12.50"
    assert index.value == conversion.value
    (line,) = [r for r in caplog.records if r.getMessage() == "conversion taken in"]
    assert getattr(line, "conversion_id", None) == answer["conversion_id"]
    own_lines = " ".join(r.getMessage() + str(r.__dict__) for r in caplog.records if r.name.startswith("postback"))
    assert "12.50" not in own_lines and "rt-1" not in own_lines and "sum=" not in own_lines


async def test_intake_by_post_form_and_query_together(client: TestClient, backend: MemoryBackend) -> None:
    response = await client.post(
        "/v1/postback?campaign_id=k&status=pending", data={"clickid": "rt-2", "status": "approved", "payout": "3"}
    )
    assert response.status == 200
    (conversion,) = backend.on("conversions")
    assert conversion.value is not None
    assert (conversion.value["click_id"], conversion.value["status"], conversion.value["payout"]) == (
        "rt-2",
        "approved",  # the form's value wins over the query's
        "3",
    )


async def test_intake_by_multipart_form_ignores_files(client: TestClient, backend: MemoryBackend) -> None:
    form = FormData()
    form.add_field("clickid", "rt-3")
    form.add_field("campaign_id", "k")
    form.add_field("sub1", b"file content", filename="a.txt")
    assert (await client.post("/v1/postback", data=form)).status == 200
    assert "subs" not in backend.on("conversions")[0].value  # type: ignore[operator]


async def test_a_malformed_multipart_form_is_400(client: TestClient) -> None:
    # found by schemathesis: a control character in a part's header made aiohttp raise InvalidHeader (a 500)
    boundary = "b0undary"
    body = f'--{boundary}\r\nContent-Disposition: form-data; name="\x13x"\r\n\r\nv\r\n--{boundary}--\r\n'
    response = await client.post(
        "/v1/postback", data=body.encode(), headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    assert response.status == 400
    assert await response.json() == {"error": "the form cannot be read"}


async def test_intake_refuses_a_json_body(client: TestClient) -> None:
    response = await client.post("/v1/postback", json={"clickid": "c", "campaign_id": "k"})
    assert response.status == 415 and response.content_type == "application/json"


async def test_invalid_postbacks_are_400_naming_each_field_as_sent(
    client: TestClient, backend: MemoryBackend, registry: CollectorRegistry
) -> None:
    response = await client.get("/v1/postback", params={"campaign_id": "k", "sum": "1,5"})
    assert response.status == 400
    assert await response.json() == {
        "error": "invalid postback",
        "fields": [
            {"field": "clickid", "message": "is required"},
            {
                "field": "sum",
                "message": "must be a decimal number such as 12.50 (at most 18 digits before the point and 12 after)",
            },
        ],
    }
    assert backend.written == []
    assert registry.get_sample_value("postback_intake_total", {"result": "invalid"}) == 1


async def test_intake_secret(secured: TestClient, backend: MemoryBackend, registry: CollectorRegistry) -> None:
    fields = {"clickid": "c", "campaign_id": "k"}
    missing = await secured.get("/v1/postback", params=fields)
    assert missing.status == 401 and "secret" in (await missing.json())["error"]
    wrong = await secured.get("/v1/postback", params=fields, headers={"X-Postback-Secret": "nope"})
    assert wrong.status == 403
    assert registry.get_sample_value("postback_intake_total", {"result": "unauthorized"}) == 2
    assert (await secured.get("/v1/postback", params=fields, headers={"x-postback-secret": SECRET})).status == 200
    assert (await secured.get("/v1/postback", params={**fields, "secret": SECRET})).status == 200
    assert (await secured.post("/v1/postback", data={**fields, "secret": SECRET})).status == 200
    assert len(backend.on("conversions")) == 3
    assert SECRET not in str(backend.written)


async def test_intake_is_open_without_a_secret(client: TestClient) -> None:
    assert (await client.get("/v1/postback", params={"clickid": "c", "campaign_id": "k"})).status == 200


async def test_intake_unavailable_is_counted(
    client: TestClient, backend: MemoryBackend, registry: CollectorRegistry
) -> None:
    backend.failing = True
    assert (await client.get("/v1/postback", params={"clickid": "c", "campaign_id": "k"})).status == 503
    assert registry.get_sample_value("postback_intake_total", {"result": "unavailable"}) == 1


# -- status updates


async def test_patch_publishes_the_update_of_a_conversion_taken_in(client: TestClient, backend: MemoryBackend) -> None:
    taken = await client.get("/v1/postback", params={"clickid": "c", "campaign_id": "k", "status": "pending"})
    conversion_id = (await taken.json())["conversion_id"]
    original = backend.on("conversions")[0].value
    assert original is not None
    response = await client.patch(
        f"/v1/conversions/{conversion_id}", json={"status": "approved", "payout": "20"}, headers=AUTH
    )
    assert response.status == 202
    updated = await response.json()
    assert updated == {**original, "status": "approved", "payout": "20"}
    assert [w.value for w in backend.on("conversions")] == [original, updated]
    assert backend.tables["conversion_index"][conversion_id] == updated


async def test_patch_of_an_unknown_conversion_is_404(client: TestClient) -> None:
    response = await client.patch("/v1/conversions/nope", json={"status": "approved"}, headers=AUTH)
    assert response.status == 404
    assert "publish updates to the conversions topic" in (await response.json())["error"]


async def test_an_invalid_patch_names_each_field(client: TestClient, backend: MemoryBackend) -> None:
    backend.tables["conversion_index"]["cv"] = f.conversion("cv")
    response = await client.patch("/v1/conversions/cv", json={"status": "sale", "currency": "eur"}, headers=AUTH)
    assert response.status == 400
    assert {e["field"] for e in (await response.json())["fields"]} == {"status", "currency"}


# -- operations


async def test_ops_routes_and_openapi_are_open(client: TestClient) -> None:
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/readyz")).status == 503  # the test's readiness check never became true
    document = await (await client.get("/openapi.json")).json()
    assert document["openapi"] == "3.1.0"
    assert "intakeSecretHeader" not in document["components"]["securitySchemes"]


async def test_metrics_label_routes_by_template(client: TestClient) -> None:
    await client.get("/v1/campaigns/some-campaign/rules", headers=AUTH)
    await client.request("PROPFIND", "/v1/postback")  # a method HTTP parsers know, outside the label set
    await client.get("/no/such/path")
    text = await (await client.get("/metrics")).text()
    assert 'postback_api_requests_total{code="404",method="GET",route="/v1/campaigns/{campaign_id}/rules"} 1.0' in text
    assert 'method="other"' in text
    assert 'route="(unmatched)"' in text
    assert "some-campaign" not in text and "/no/such/path" not in text
    assert 'postback_api_request_duration_seconds_count{route="/v1/campaigns/{campaign_id}/rules"} 1.0' in text
