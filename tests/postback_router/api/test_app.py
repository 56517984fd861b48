"""The api's HTTP behaviour (postback_router/api/app.py) over an in-memory backend: no broker needed."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import FormData
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from postback_router.api.app import build_app, utc_now
from postback_router.api.backend import ListedTable, Table, Unavailable, Write
from postback_router.api.listing import Listed, page_of_keys
from service.ops_http import Readiness
from service.settings import Settings, load_settings
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

    async def scan(self, table: ListedTable, prefix: str, after: str | None, limit: int) -> list[Listed]:
        documents = self.tables[table]
        if self.failing:
            raise Unavailable("Kafka did not answer in time")
        return [Listed(key, documents[key], None) for key in page_of_keys(sorted(documents), prefix, after, limit)]

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


async def started(
    app_settings: Settings,
    backend: MemoryBackend,
    registry: CollectorRegistry,
    clock: Callable[[], datetime] = utc_now,
) -> TestClient:
    readiness = Readiness(registry, ["kafka"])
    client = TestClient(TestServer(build_app(app_settings, backend, registry, readiness, clock)))
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
        "/v1/postback?campaign_id=k", data={"clickid": "rt-2", "status": "approved", "payout": "3"}
    )
    assert response.status == 200
    (conversion,) = backend.on("conversions")
    assert conversion.value is not None
    assert (conversion.value["campaign_id"], conversion.value["click_id"], conversion.value["status"]) == (
        "k",
        "rt-2",
        "approved",
    )
    assert conversion.value["payout"] == "3"


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
        "reason": "invalid_value",
        "fields": [
            {"field": "clickid", "message": "is required (or one of click_id, cid, subid)", "reason": "missing_field"},
            {
                "field": "sum",
                "message": "must be a decimal number such as 12.50 (at most 18 digits before the point and 12 after)",
                "reason": "invalid_value",
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


# -- what a network sends by mistake


def intake_results(registry: CollectorRegistry) -> dict[str, float | None]:
    results = ("accepted", "invalid", "unfilled_macro", "unauthorized", "unavailable")
    return {result: registry.get_sample_value("postback_intake_total", {"result": result}) for result in results}


@pytest.mark.parametrize(
    "query",
    [
        "clickid={clickid}&campaign_id=k",
        "clickid=%7Bclickid%7D&campaign_id=k",  # {clickid}, sent encoded: the network left it unfilled
        "clickid=%257Bclickid%257D&campaign_id=k",  # %7Bclickid%7D once the query string is decoded
        "clickid=%5BCLICK_ID%5D&campaign_id=k",
        "clickid=%23clickid%23&campaign_id=k",  # #clickid#: a raw # would end the URL
        "clickid=%7B%7Bclickid%7D%7D&campaign_id=k",
        "clickid=%24%7Bclickid%7D&campaign_id=k",
        "clickid=[CLICK_ID]&campaign_id=k&sub1=ok",
    ],
)
async def test_an_unfilled_macro_is_400_naming_the_field(
    client: TestClient, backend: MemoryBackend, registry: CollectorRegistry, query: str
) -> None:
    response = await client.get(f"/v1/postback?{query}")
    assert response.status == 400
    answer = await response.json()
    assert answer["reason"] == "unfilled_macro"
    assert [(e["field"], e["reason"]) for e in answer["fields"]] == [("clickid", "unfilled_macro")]
    assert backend.written == []
    assert intake_results(registry) == {
        "accepted": 0,
        "invalid": 0,
        "unfilled_macro": 1,
        "unauthorized": 0,
        "unavailable": 0,
    }


async def test_an_unfilled_macro_in_a_form_is_400_with_the_other_errors(
    client: TestClient, backend: MemoryBackend
) -> None:
    response = await client.post(
        "/v1/postback", data={"campaign_id": "k", "clickid": "c", "sub7": "{sub7}", "sum": "x"}
    )
    assert response.status == 400
    answer = await response.json()
    assert answer["reason"] == "unfilled_macro"
    assert [(e["field"], e["reason"]) for e in answer["fields"]] == [
        ("sum", "invalid_value"),
        ("sub7", "unfilled_macro"),
    ]
    assert backend.written == []


async def test_look_alikes_of_macros_are_taken_in(client: TestClient, backend: MemoryBackend) -> None:
    params = {"clickid": "c#1", "campaign_id": "k", "sub1": "[1]", "sub2": "a{b", "sub3": "%clickid%", "txid": "#"}
    assert (await client.get("/v1/postback", params=params)).status == 200
    (conversion,) = backend.on("conversions")
    assert conversion.value is not None
    assert conversion.value["subs"] == {"sub1": "[1]", "sub2": "a{b", "sub3": "%clickid%"}
    assert (conversion.value["click_id"], conversion.value["transaction_id"]) == ("c#1", "#")


@pytest.mark.parametrize(
    "encoded",
    ["%C3%28", "%ED%A0%80", "%ED%BF%BF", "%FF", "%C3", "%E2%82%28", "%C0%AF"],
)
async def test_a_query_value_that_is_not_utf8_is_400_naming_the_field(
    client: TestClient, backend: MemoryBackend, registry: CollectorRegistry, encoded: str
) -> None:
    response = await client.get(f"/v1/postback?clickid=c&campaign_id=k&sub4=a{encoded}")
    assert response.status == 400
    assert await response.json() == {
        "error": "invalid postback",
        "reason": "not_utf8",
        "fields": [
            {
                "field": "sub4",
                "message": "is not UTF-8 text (an invalid byte sequence or a lone surrogate)",
                "reason": "not_utf8",
            }
        ],
    }
    assert backend.written == []
    assert registry.get_sample_value("postback_intake_total", {"result": "invalid"}) == 1


async def test_utf8_query_values_are_taken_in_exactly(client: TestClient, backend: MemoryBackend) -> None:
    assert (await client.get("/v1/postback?clickid=%C3%A9%F0%9F%98%80&campaign_id=k&country=M%FCnchen")).status == 200
    (conversion,) = backend.on("conversions")
    assert conversion.value is not None and conversion.value["click_id"] == "é😀"


async def test_a_form_value_that_is_not_utf8_is_400_naming_the_field(
    client: TestClient, backend: MemoryBackend
) -> None:
    response = await client.post(
        "/v1/postback",
        data=b"clickid=c&campaign_id=k&txid=%ED%A0%80",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status == 400
    answer = await response.json()
    assert answer["reason"] == "not_utf8"
    assert [(e["field"], e["reason"]) for e in answer["fields"]] == [("txid", "not_utf8")]
    raw = await client.post(
        "/v1/postback",
        data=b"clickid=\xff&campaign_id=k",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert raw.status == 400 and (await raw.json())["fields"][0]["field"] == "clickid"
    assert backend.written == []


async def test_a_form_in_a_declared_charset_is_decoded_with_it(client: TestClient, backend: MemoryBackend) -> None:
    response = await client.post(
        "/v1/postback",
        data=b"clickid=M%FCnchen&campaign_id=k",
        headers={"Content-Type": "application/x-www-form-urlencoded; charset=iso-8859-1"},
    )
    assert response.status == 200
    assert backend.on("conversions")[0].value["click_id"] == "München"  # type: ignore[index]
    unknown = await client.post(
        "/v1/postback", data=b"clickid=c", headers={"Content-Type": "application/x-www-form-urlencoded; charset=nope"}
    )
    assert unknown.status == 415


async def test_a_multipart_part_that_is_not_utf8_is_400(client: TestClient, backend: MemoryBackend) -> None:
    boundary = "b0undary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="clickid"\r\n\r\nc\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="campaign_id"\r\n\r\n'
        ).encode()
        + b"\xc3\x28\r\n--"
        + boundary.encode()
        + b"--\r\n"
    )
    response = await client.post(
        "/v1/postback", data=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    assert response.status == 400
    answer = await response.json()
    assert answer["reason"] == "not_utf8"
    assert [(e["field"], e["reason"]) for e in answer["fields"]] == [("(body)", "not_utf8")]
    assert backend.written == []


@pytest.mark.parametrize(
    ("path", "form", "repeated"),
    [
        ("/v1/postback?clickid=a&clickid=b&campaign_id=k", None, ["clickid"]),
        ("/v1/postback?clickid=a&clickid=a&campaign_id=k", None, ["clickid"]),
        ("/v1/postback?clickid=a&campaign_id=k&sub1=&sub1=x&sum=1&sum=2", None, ["sub1", "sum"]),
        (
            "/v1/postback",
            [("clickid", "a"), ("campaign_id", "k"), ("status", "pending"), ("status", "approved")],
            ["status"],
        ),
        ("/v1/postback?campaign_id=k&status=pending", [("clickid", "a"), ("status", "approved")], ["status"]),
    ],
)
async def test_a_field_given_more_than_once_is_400_naming_it(
    client: TestClient,
    backend: MemoryBackend,
    registry: CollectorRegistry,
    path: str,
    form: list[tuple[str, str]] | None,
    repeated: list[str],
) -> None:
    if form is None:
        response = await client.get(path)
    else:
        response = await client.post(path, data=form)
    assert response.status == 400
    answer = await response.json()
    assert answer["reason"] == "repeated_field"
    assert [(e["field"], e["reason"]) for e in answer["fields"]] == [(name, "repeated_field") for name in repeated]
    assert backend.written == []
    assert registry.get_sample_value("postback_intake_total", {"result": "invalid"}) == 1


async def test_the_intake_secret_is_checked_before_mistakes_are_answered(
    secured: TestClient, backend: MemoryBackend, registry: CollectorRegistry
) -> None:
    mistakes = "/v1/postback?clickid=a&clickid=b&campaign_id=k&sub1=%FF"
    assert (await secured.get(mistakes)).status == 401
    assert (await secured.get(mistakes + "&secret=wrong")).status == 403
    assert (await secured.get(mistakes, headers={"X-Postback-Secret": "wrong"})).status == 403
    # schemathesis' "invalid credentials": a wrong secret in the query and the form
    assert (await secured.post("/v1/postback?secret=wrong", data={"clickid": "a", "secret": "also"})).status == 403
    assert registry.get_sample_value("postback_intake_total", {"result": "unauthorized"}) == 4
    known = await secured.get(mistakes, headers={"X-Postback-Secret": SECRET})
    assert known.status == 400
    assert [(e["field"], e["reason"]) for e in (await known.json())["fields"]] == [
        ("sub1", "not_utf8"),
        ("clickid", "repeated_field"),
    ]
    assert backend.written == []
    # the secret is no conversion field: given twice it is only compared, the first one authenticates
    twice = await secured.post(
        f"/v1/postback?secret={SECRET}", data={"clickid": "a", "campaign_id": "k", "secret": "x"}
    )
    assert twice.status == 200


async def test_a_repeated_field_intake_does_not_read_is_ignored(client: TestClient) -> None:
    assert (await client.get("/v1/postback?clickid=a&campaign_id=k&aff=1&aff=2")).status == 200


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"status": "\\ud800"}', "not_utf8"),  # a lone surrogate escape
        (b'{"status": "approved", "type": "\\udc00x"}', "not_utf8"),
        (b'{"status": "appr\xc3\x28oved"}', "not_utf8"),
        (b'{"status": "\xed\xa0\x80"}', "not_utf8"),
        (b'{"status": ', "not_json"),
    ],
)
async def test_a_json_body_that_is_not_utf8_is_400(
    client: TestClient, backend: MemoryBackend, body: bytes, reason: str
) -> None:
    backend.tables["conversion_index"]["cv"] = f.conversion("cv")
    for method, path in (("PATCH", "/v1/conversions/cv"), ("PUT", "/v1/offer-sources/o")):
        response = await client.request(method, path, data=body, headers={**AUTH, "Content-Type": "application/json"})
        assert response.status == 400
        answer = await response.json()
        assert answer["reason"] == reason
        assert [e["field"] for e in answer["fields"]] == ["(body)"]
    assert backend.written == []


class SteppingClock:
    """A clock that moves one second on every reading, from the current time."""

    def __init__(self) -> None:
        self.start = datetime.now(UTC).replace(microsecond=0)
        self.readings: list[datetime] = []

    def __call__(self) -> datetime:
        moment = self.start + timedelta(seconds=len(self.readings))
        self.readings.append(moment)
        return moment


def as_occurred_at(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def test_calling_intake_again_keeps_the_first_occurred_at(
    backend: MemoryBackend, registry: CollectorRegistry
) -> None:
    clock = SteppingClock()
    client = await started(settings(), backend, registry, clock)
    try:
        params = {"clickid": "rep-1", "campaign_id": "k", "type": "deposit", "status": "pending", "sum": "10"}
        first = await (await client.get("/v1/postback", params=params)).json()
        again = await (await client.get("/v1/postback", params={**params, "status": "approved"})).json()
        other = await (await client.get("/v1/postback", params={**params, "type": "lead"})).json()
    finally:
        await client.close()
    assert first["conversion_id"] == again["conversion_id"] != other["conversion_id"]
    assert len(clock.readings) == 3  # the clock moved between the calls
    written = [(w.key, w.value["occurred_at"], w.value["status"]) for w in backend.on("conversions") if w.value]
    assert written == [
        (first["conversion_id"], as_occurred_at(clock.readings[0]), "pending"),
        (first["conversion_id"], as_occurred_at(clock.readings[0]), "approved"),  # not readings[1]
        (other["conversion_id"], as_occurred_at(clock.readings[2]), "pending"),
    ]
    assert backend.tables["conversion_index"][first["conversion_id"]]["occurred_at"] == as_occurred_at(
        clock.readings[0]
    )


class GatedBackend(MemoryBackend):
    """Writes wait for `release`: a first call still being written when the repeat arrives."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def write(self, writes: Sequence[Write]) -> None:
        await self.release.wait()
        await super().write(writes)


async def poll(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


async def test_a_repeat_arriving_while_the_first_call_is_written_keeps_its_occurred_at(
    registry: CollectorRegistry,
) -> None:
    backend = GatedBackend()
    clock = SteppingClock()
    client = await started(settings(), backend, registry, clock)
    try:
        params = {"clickid": "rep-2", "campaign_id": "k", "status": "pending"}
        calls = [
            asyncio.create_task(client.get("/v1/postback", params=params)),
            asyncio.create_task(client.get("/v1/postback", params={**params, "status": "approved"})),
        ]
        await poll(lambda: len(clock.readings) == 2, "both calls to be taken in")  # neither written yet
        backend.release.set()
        responses = await asyncio.gather(*calls)
        assert [r.status for r in responses] == [200, 200]
    finally:
        await client.close()
    occurred = {w.value["occurred_at"] for w in backend.on("conversions") if w.value}
    assert len(backend.on("conversions")) == 2
    assert occurred == {as_occurred_at(min(clock.readings))}


async def test_patch_writes_a_numeric_payout_as_a_decimal_string(client: TestClient, backend: MemoryBackend) -> None:
    taken = await client.get("/v1/postback", params={"clickid": "c", "campaign_id": "k", "sum": "1.10"})
    conversion_id = (await taken.json())["conversion_id"]
    response = await client.patch(
        f"/v1/conversions/{conversion_id}", data=b'{"status": "approved", "payout": 20.5}', headers=AUTH
    )
    assert response.status == 202
    assert (await response.json())["payout"] == "20.5"
    assert [w.value["payout"] for w in backend.on("conversions") if w.value] == ["1.10", "20.5"]
    assert backend.tables["conversion_index"][conversion_id]["payout"] == "20.5"


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


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"[" * 2000 + b"]" * 2000, id="nested-arrays"),
        pytest.param(b'{"a":' * 800 + b"1" + b"}" * 800, id="nested-objects"),
        pytest.param(b'{"postbacks": [], "x": 1e999999}', id="infinite-number"),
        pytest.param(b'{"postbacks": "\\ud800"}', id="lone-surrogate"),
    ],
)
async def test_hostile_json_on_every_body_is_a_json_400(
    client: TestClient, backend: MemoryBackend, body: bytes
) -> None:
    """Issue 8, security tests: deeply nested or malformed JSON is refused, never a 500 or a hang."""
    for method, path, headers in (
        ("PUT", "/v1/campaigns/c/rules", AUTH),
        ("PUT", "/v1/offer-sources/o", AUTH),
        ("PATCH", "/v1/conversions/cv", AUTH),
        ("POST", "/v1/postback", {}),
    ):
        response = await client.request(
            method, path, data=body, headers={**headers, "Content-Type": "application/json"}
        )
        assert 400 <= response.status < 500, (method, path, response.status)
        assert response.content_type == "application/json"
    assert backend.written == []
