"""GET /v1/conversions/{id} (postback_router/api/app.py) over a real trace store: auth, 404, 503, the document."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from postback_router.api.app import build_app
from postback_router.api.openapi import build_openapi_document
from postback_router.api.trace_index import TraceStore
from service.ops_http import Readiness
from tests import factories as f
from tests.postback_router.api.test_app import AUTH, MemoryBackend, settings
from tests.postback_router.api.test_openapi import validator
from tests.postback_router.api.test_trace_index import TOPICS, Feed, evaluated, result


@pytest.fixture
def store(tmp_path: Path) -> Iterator[TraceStore]:
    opened = TraceStore(tmp_path / "trace", TOPICS, retention_seconds=86400)
    yield opened
    opened.close()


async def client_for(traces: TraceStore | None) -> TestClient[web.Request, web.Application]:
    registry = CollectorRegistry()
    app = build_app(settings(), MemoryBackend(), registry, Readiness(registry, ["kafka"]), traces=traces)
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


async def test_the_trace_is_served_to_the_bearer_only_and_matches_the_document(store: TraceStore) -> None:
    feed = Feed()
    (one,) = evaluated(f.conversion("cv-1"))
    store.apply([feed.record(TOPICS.evaluations, one), feed.record(TOPICS.results, result(one))])
    client = await client_for(store)
    try:
        assert (await client.get("/v1/conversions/cv-1")).status == 401
        response = await client.get("/v1/conversions/cv-1", headers=AUTH)
        assert response.status == 200
        trace = await response.json()
        assert trace["conversion_id"] == "cv-1"
        assert [e["fired"] for e in trace["versions"][0]["entries"]] == [True, False]
        assert validator(build_openapi_document(intake_secret_required=False), "ConversionTrace").is_valid(trace)
        missing = await client.get("/v1/conversions/cv-2", headers=AUTH)
        assert missing.status == 404 and "error" in await missing.json()
        too_long = await client.get("/v1/conversions/" + "x" * 300, headers=AUTH)
        assert too_long.status == 404
    finally:
        await client.close()


async def test_without_an_index_the_route_answers_503() -> None:
    client = await client_for(None)
    try:
        response = await client.get("/v1/conversions/cv-1", headers=AUTH)
        assert response.status == 503 and "trace index" in (await response.json())["error"]
    finally:
        await client.close()
