from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest

from devtools.fakes.s2s_sink import S2SSink
from dispatchers.adapters.http_transport import AiohttpTransport
from dispatchers.core.http import HttpRequest, HttpResponse
from dispatchers.core.outcome import Outcome, Verdict
from dispatchers.core.s2s import USER_AGENT, build_s2s_request, classify_s2s_response, s2s_breaker_scope
from dispatchers.engine.scheduler import deliver_s2s
from schemas.version import __version__
from tests.schemas.host_cases import CANONICAL_URLS, NON_CANONICAL_URLS

NOW = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)
TEMPLATE = "https://pb.example.com/postback?clickid={external_id}&payout={payout}"


def postback(url: str, method: str = "GET", **entry: Any) -> dict[str, Any]:
    return {
        "postback_id": "5e0c4b2a-1c1d-5b7e-9f00-000000000001",
        "kind": "s2s",
        "url": url,
        "method": method,
        "entry": {"id": "e1", "kind": "s2s", "url": TEMPLATE, "method": method, **entry},
    }


def response(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> HttpResponse:
    return HttpResponse(status, headers or {}, body)


# --- build_s2s_request -------------------------------------------------------------------------------


def test_get_sends_the_url_as_rendered() -> None:
    url = "https://pb.example.com/postback?clickid=abc%2F1&payout=5.00"
    request = build_s2s_request(postback(url), 2.5)
    assert isinstance(request, HttpRequest)
    assert (request.method, request.url, request.body, request.timeout_seconds) == ("GET", url, None, 2.5)
    assert request.headers["User-Agent"] == USER_AGENT == f"postback-router/{__version__}"


def test_get_drops_a_fragment() -> None:
    request = build_s2s_request(postback("https://pb.example.com/p?a=1#frag"), 1)
    assert isinstance(request, HttpRequest)
    assert request.url == "https://pb.example.com/p?a=1"


def test_post_moves_the_query_into_a_form_body() -> None:
    request = build_s2s_request(postback("https://pb.example.com/postback?clickid=abc%2F1&payout=5.00", "POST"), 1)
    assert isinstance(request, HttpRequest)
    assert request.method == "POST"
    assert request.url == "https://pb.example.com/postback"
    assert request.body == b"clickid=abc%2F1&payout=5.00"
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"


def test_post_without_query_has_an_empty_body() -> None:
    request = build_s2s_request(postback("https://pb.example.com", "post"), 1)
    assert isinstance(request, HttpRequest)
    assert (request.url, request.body) == ("https://pb.example.com/", b"")
    assert "Content-Type" not in request.headers


@pytest.mark.parametrize(
    ("url", "method", "reason"),
    [
        ("ftp://pb.example.com/x", "GET", "invalid_url"),
        ("javascript:alert(1)", "GET", "invalid_url"),
        ("https://pb.example.com/x?a=1\r\nX-Injected: 1", "GET", "invalid_url"),
        ("https://pb.example.com/x?a=1\nb", "GET", "invalid_url"),
        ("https://pb.example.com/x?a=b c", "GET", "invalid_url"),
        ("https://pb.example.com/x\x00", "GET", "invalid_url"),
        ("https:///nohost", "GET", "invalid_url"),
        ("https://pb.example.com:99999/x", "GET", "invalid_url"),
        ("", "GET", "invalid_url"),
        ("https://pb.example.com/x", "DELETE", "invalid_method"),
    ],
)
def test_unsendable_postbacks_are_rejected_not_raised(url: str, method: str, reason: str) -> None:
    outcome = build_s2s_request(postback(url, method), 1)
    assert isinstance(outcome, Outcome)
    assert (outcome.verdict, outcome.reason) == (Verdict.REJECTED, reason)
    assert "\n" not in outcome.detail and "\r" not in outcome.detail
    assert "a=1" not in outcome.detail


@pytest.mark.parametrize(("url", "why"), NON_CANONICAL_URLS)
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_non_canonical_host_is_rejected_at_once_not_retried(url: str, why: str, method: str) -> None:
    # issue 8, defect 8: a rule published before its URL was refused must not fail in the client for 24 h
    outcome = build_s2s_request(postback(url + "?cid=abc&sig=k3y", method), 1)
    assert isinstance(outcome, Outcome)
    assert (outcome.verdict, outcome.reason) == (Verdict.REJECTED, "invalid_url")
    assert why in outcome.detail
    assert "s3cr3t" not in outcome.detail and "k3y" not in outcome.detail  # no userinfo, no query


@pytest.mark.parametrize(("url", "host"), CANONICAL_URLS)
def test_a_canonical_host_is_sent(url: str, host: str) -> None:
    request = build_s2s_request(postback(url + "?cid=abc"), 1)
    assert isinstance(request, HttpRequest)
    assert request.url == url + "?cid=abc"


def test_missing_url_is_rejected() -> None:
    outcome = build_s2s_request({"kind": "s2s", "method": "GET", "entry": {}}, 1)
    assert isinstance(outcome, Outcome)
    assert outcome.reason == "invalid_url"


# --- classify_s2s_response ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "headers", "entry", "verdict", "reason", "retry_after"),
    [
        (200, b"OK", {}, {}, Verdict.DELIVERED, "http_200", None),
        (204, b"", {}, {}, Verdict.DELIVERED, "http_204", None),
        (302, b"", {"location": "http://x/"}, {}, Verdict.REJECTED, "redirect", None),
        (400, b"bad", {}, {}, Verdict.REJECTED, "http_400", None),
        (404, b"", {}, {}, Verdict.REJECTED, "http_404", None),
        (408, b"", {}, {}, Verdict.RETRY, "http_408", None),
        (429, b"", {"retry-after": "17"}, {}, Verdict.RETRY, "http_429", 17.0),
        (503, b"", {"retry-after": "Fri, 01 May 2026 12:01:00 GMT"}, {}, Verdict.RETRY, "http_503", 60.0),
        (500, b"oops", {}, {}, Verdict.RETRY, "http_500", None),
        # custom success codes
        (302, b"", {}, {"success_status_codes": [200, 302]}, Verdict.DELIVERED, "http_302", None),
        (204, b"", {}, {"success_status_codes": [200]}, Verdict.REJECTED, "http_204", None),
        (503, b"", {}, {"success_status_codes": [200]}, Verdict.RETRY, "http_503", None),
        # body checks: TUNE, ExoClick, TrafficStars
        (200, b"success=true;", {}, {"success_body_pattern": r"success=true"}, Verdict.DELIVERED, "http_200", None),
        (
            200,
            b"success=false; err_msg=Invalid click",
            {},
            {"success_body_pattern": r"success=true"},
            Verdict.REJECTED,
            "body_check_failed",
            None,
        ),
        (200, b"OK", {}, {"success_body_pattern": r"^OK"}, Verdict.DELIVERED, "http_200", None),
        (200, b"ERROR: goal", {}, {"success_body_pattern": r"^OK"}, Verdict.REJECTED, "body_check_failed", None),
        (200, b'{"ok":true}', {}, {"success_body_pattern": r'"ok"\s*:\s*true'}, Verdict.DELIVERED, "http_200", None),
        (
            200,
            b'{"ok":false}',
            {},
            {"success_body_pattern": r'"ok"\s*:\s*true'},
            Verdict.REJECTED,
            "body_check_failed",
            None,
        ),
        # the pattern only applies to a success status
        (503, b"success=true;", {}, {"success_body_pattern": "success=true"}, Verdict.RETRY, "http_503", None),
        (200, b"OK", {}, {"success_body_pattern": "("}, Verdict.REJECTED, "invalid_success_pattern", None),
        (200, b"\xff\xfeOK", {}, {"success_body_pattern": "OK"}, Verdict.DELIVERED, "http_200", None),
    ],
)
def test_classify_s2s_response(
    status: int,
    body: bytes,
    headers: dict[str, str],
    entry: dict[str, Any],
    verdict: Verdict,
    reason: str,
    retry_after: float | None,
) -> None:
    outcome = classify_s2s_response(response(status, body, headers), {"url": TEMPLATE, **entry}, now=NOW)
    assert (outcome.verdict, outcome.reason, outcome.retry_after_seconds) == (verdict, reason, retry_after)
    if reason != "invalid_success_pattern":
        assert outcome.http_status == status


def test_body_pattern_search_is_bounded() -> None:
    body = b"x" * 100_000 + b"success=true"
    outcome = classify_s2s_response(response(200, body), {"success_body_pattern": "success=true"})
    assert outcome.reason == "body_check_failed"


def test_detail_is_bounded_and_free_of_the_query() -> None:
    entry = {"url": "https://pb.example.com/postback?clickid={external_id}&key=SECRETKEY"}
    outcome = classify_s2s_response(response(500, b"E" * 5000 + b"\r\n"), entry)
    assert len(outcome.detail) <= 300
    assert outcome.detail.startswith("https://pb.example.com/postback answered 500")
    assert "SECRETKEY" not in outcome.detail
    assert "\n" not in outcome.detail


# --- deliver_s2s through AiohttpTransport against the sink on loopback -------------------------------


@pytest.fixture
async def sink() -> AsyncIterator[S2SSink]:
    async with S2SSink() as running:
        yield running


@pytest.fixture
async def transport() -> AsyncIterator[AiohttpTransport]:
    async with AiohttpTransport(allow_private_targets=True) as running:
        yield running


async def test_deliver_get(sink: S2SSink, transport: AiohttpTransport) -> None:
    outcome = await deliver_s2s(transport, postback(sink.url("/postback?clickid=abc%2F1&payout=5.00")), 2)
    assert (outcome.verdict, outcome.reason) == (Verdict.DELIVERED, "http_200")
    [request] = await sink.wait_for(1, timeout=5)
    assert (request.method, request.path, request.query) == ("GET", "/postback", {"clickid": "abc/1", "payout": "5.00"})
    assert request.headers["user-agent"] == USER_AGENT


async def test_deliver_post(sink: S2SSink, transport: AiohttpTransport) -> None:
    outcome = await deliver_s2s(transport, postback(sink.url("/postback?clickid=abc&payout=5.00"), "POST"), 2)
    assert outcome.verdict is Verdict.DELIVERED
    [request] = sink.requests
    assert (request.method, request.query, request.form) == ("POST", {}, {"clickid": "abc", "payout": "5.00"})
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"


async def test_deliver_body_check(sink: S2SSink, transport: AiohttpTransport) -> None:
    sink.respond_with("/tune", body="success=false; err_msg=Invalid transaction")
    pb = postback(sink.url("/tune?id=1"), success_body_pattern="success=true")
    outcome = await deliver_s2s(transport, pb, 2)
    assert (outcome.verdict, outcome.reason) == (Verdict.REJECTED, "body_check_failed")
    assert "Invalid transaction" in outcome.detail
    sink.respond_with("/tune", body="success=true;")
    assert (await deliver_s2s(transport, pb, 2)).verdict is Verdict.DELIVERED


async def test_deliver_429_with_retry_after_then_recover(sink: S2SSink, transport: AiohttpTransport) -> None:
    sink.fail_next(1, status=429, retry_after=7)
    pb = postback(sink.url("/postback?clickid=1"))
    first = await deliver_s2s(transport, pb, 2)
    assert (first.verdict, first.reason, first.http_status, first.retry_after_seconds) == (
        Verdict.RETRY,
        "http_429",
        429,
        7.0,
    )
    assert (await deliver_s2s(transport, pb, 2)).verdict is Verdict.DELIVERED
    assert len(sink.delivered()) == 1


async def test_deliver_down_for_a_while(sink: S2SSink, transport: AiohttpTransport) -> None:
    sink.down_for_first(2)
    pb = postback(sink.url("/postback?clickid=1"))
    verdicts = [(await deliver_s2s(transport, pb, 2)).verdict for _ in range(3)]
    assert verdicts == [Verdict.RETRY, Verdict.RETRY, Verdict.DELIVERED]
    assert [r.status for r in sink.requests] == [503, 503, 200]


async def test_deliver_timeout(sink: S2SSink, transport: AiohttpTransport) -> None:
    sink.set_delay("/slow", 30)
    outcome = await deliver_s2s(transport, postback(sink.url("/slow?clickid=secret-click")), 0.2)
    assert (outcome.verdict, outcome.reason) == (Verdict.RETRY, "timeout")
    assert "secret-click" not in outcome.detail


async def test_deliver_connection_refused(transport: AiohttpTransport) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    outcome = await deliver_s2s(transport, postback(f"http://127.0.0.1:{port}/postback"), 2)
    assert (outcome.verdict, outcome.reason) == (Verdict.RETRY, "connect_error")


async def test_deliver_refuses_private_targets_without_sending(sink: S2SSink) -> None:
    async with AiohttpTransport() as guarded:
        outcome = await deliver_s2s(guarded, postback(sink.url("/postback")), 2)
    assert (outcome.verdict, outcome.reason) == (Verdict.REJECTED, "refused_target")
    assert sink.count() == 0


async def test_deliver_rejected_url_never_reaches_the_transport(sink: S2SSink, transport: AiohttpTransport) -> None:
    outcome = await deliver_s2s(transport, postback(sink.url("/x?a=1\r\nHost: evil")), 2)
    assert outcome.reason == "invalid_url"
    assert sink.count() == 0


# --- issue 8, defect 4: an S2S endpoint is a host and a path, each with its own breaker -------------------------


@pytest.mark.parametrize(
    ("template", "scope"),
    [
        pytest.param("https://pb.example.com/postback?clickid={clickid}", "/postback", id="path"),
        pytest.param("https://pb.example.com/a/b.php?x=1#frag", "/a/b.php", id="no-query-no-fragment"),
        pytest.param("https://pb.example.com/{sub1}/done?c={clickid}", "/{sub1}/done", id="macro-stays-a-macro"),
        pytest.param("https://pb.example.com?c={clickid}", "/", id="no-path"),
        pytest.param("https://pb.example.com/" + "x" * 500, "/" + "x" * 199, id="bounded"),
    ],
)
def test_breaker_scope_is_the_rules_url_path(template: str, scope: str) -> None:
    rendered = postback(template.replace("{clickid}", "c-1").replace("{sub1}", "per-click-value"))
    rendered["entry"]["url"] = template
    assert s2s_breaker_scope(rendered) == scope  # the template's path: never one breaker per click


@pytest.mark.parametrize("entry", [None, {}, {"url": 7}, "not an object"])
def test_breaker_scope_without_a_template_is_the_whole_host(entry: object) -> None:
    assert s2s_breaker_scope({"url": "https://pb.example.com/x", "entry": entry}) == ""
