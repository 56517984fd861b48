"""`postback-router trace`: asks a real api (aiohttp on loopback, a real trace store) and prints it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from aiohttp.test_utils import TestServer
from click.testing import CliRunner, Result
from prometheus_client import CollectorRegistry

from postback_router.api.app import build_app
from postback_router.api.trace_index import TraceStore
from postback_router.cli import main
from service.ops_http import Readiness
from tests import factories as f
from tests.postback_router.api.test_app import TOKEN, MemoryBackend, settings
from tests.postback_router.api.test_trace_index import TOPICS, Feed, evaluated, result


def trace_command(url: str, *args: str, token: str = TOKEN) -> Result:
    return CliRunner().invoke(main, ["trace", *args], env={"API_URL": url, "API_TOKEN": token})


async def test_trace_prints_text_and_json_and_fails_clearly(tmp_path: Path) -> None:
    store = TraceStore(tmp_path / "trace", TOPICS, retention_seconds=86400)
    feed = Feed()
    (one,) = evaluated(f.conversion("cv-1"))
    store.apply([feed.record(TOPICS.evaluations, one), feed.record(TOPICS.results, result(one))])
    registry = CollectorRegistry()
    app = build_app(settings(), MemoryBackend(), registry, Readiness(registry, ["kafka"]), traces=store)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    url = str(server.make_url("")).rstrip("/")
    try:
        text = await asyncio.to_thread(trace_command, url, "cv-1")
        assert text.exit_code == 0, text.output
        assert "version 1:" in text.output
        assert "src (s2s" in text.output and "fired postback" in text.output and "delivered" in text.output
        assert "fb (meta" in text.output and "not fired, type not selected" in text.output
        raw = await asyncio.to_thread(trace_command, url, "cv-1", "--json")
        assert raw.exit_code == 0 and json.loads(raw.output)["conversion_id"] == "cv-1"
        missing = await asyncio.to_thread(trace_command, url, "cv-2")
        assert missing.exit_code == 1 and "no trace of conversion 'cv-2'" in missing.output
        wrong = await asyncio.to_thread(trace_command, url, "cv-1", token="wrong-token-0123456789")
        assert wrong.exit_code == 2 and "answered 401" in wrong.output
        assert "wrong-token" not in wrong.output
    finally:
        await server.close()
        store.close()


def test_trace_needs_a_token_and_a_reachable_api() -> None:
    no_token = trace_command("http://127.0.0.1:1", "cv-1", token="")
    assert no_token.exit_code == 2 and "API_TOKEN is not set" in no_token.output
    unreachable = trace_command("http://127.0.0.1:1", "cv-1")
    assert unreachable.exit_code == 2 and "cannot reach the api at http://127.0.0.1:1" in unreachable.output
    bad_url = trace_command("ftp://example", "cv-1")
    assert bad_url.exit_code == 2 and "API_URL" in bad_url.output
