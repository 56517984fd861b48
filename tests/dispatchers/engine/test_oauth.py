from __future__ import annotations

import asyncio
import json
from urllib.parse import parse_qsl

import pytest

from dispatchers.adapters.handler_transport import HandlerTransport
from dispatchers.core.http import HttpRequest, HttpResponse, TransportError
from dispatchers.core.outcome import Verdict
from dispatchers.core.secret import Secret
from dispatchers.engine.oauth import OAuthError, OAuthTokenCache

TOKEN_URL = "https://oauth2.googleapis.com/token"


class TokenServer:
    """An in-process token endpoint: hands out tok-1, tok-2, ... and can be held or made to fail."""

    def __init__(self, expires_in: object = 3600) -> None:
        self.expires_in = expires_in
        self.forms: list[dict[str, str]] = []
        self.gate: asyncio.Event | None = None
        self.answer: tuple[int, dict[str, object]] | None = None

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        assert request.method == "POST"
        assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
        self.forms.append(dict(parse_qsl((request.body or b"").decode())))
        if self.gate is not None:
            await self.gate.wait()
        if self.answer is not None:
            status, body = self.answer
            return HttpResponse(status, {"content-type": "application/json"}, json.dumps(body).encode())
        body = {"access_token": f"tok-{len(self.forms)}", "token_type": "Bearer"}
        if self.expires_in is not None:
            body["expires_in"] = self.expires_in
        return HttpResponse(200, {"content-type": "application/json"}, json.dumps(body).encode())


def make_cache(server: TokenServer, clock: list[float]) -> OAuthTokenCache:
    return OAuthTokenCache(HandlerTransport(server), clock=lambda: clock[0], safety_margin_seconds=60)


async def test_refresh_posts_the_refresh_token_grant() -> None:
    server = TokenServer()
    cache = make_cache(server, [0.0])
    token = await cache.access_token(TOKEN_URL, "cid", Secret("csec"), "rtok", scope="https://x/adwords")
    assert token == "tok-1"
    assert server.forms == [
        {
            "grant_type": "refresh_token",
            "client_id": "cid",
            "client_secret": "csec",
            "refresh_token": "rtok",
            "scope": "https://x/adwords",
        }
    ]


async def test_token_is_cached_until_expiry_minus_margin() -> None:
    server = TokenServer(expires_in=3600)
    clock = [1000.0]
    cache = make_cache(server, clock)
    assert await cache.access_token(TOKEN_URL, "cid", "csec", "rtok") == "tok-1"
    clock[0] = 1000.0 + 3539
    assert await cache.access_token(TOKEN_URL, "cid", "csec", "rtok") == "tok-1"
    clock[0] = 1000.0 + 3540  # 60 s before expiry: refreshed
    assert await cache.access_token(TOKEN_URL, "cid", "csec", "rtok") == "tok-2"
    assert len(server.forms) == 2


async def test_short_lived_token_keeps_half_its_life() -> None:
    server = TokenServer(expires_in=40)
    clock = [0.0]
    cache = make_cache(server, clock)
    await cache.access_token(TOKEN_URL, "cid", "csec", "rtok")
    clock[0] = 19.9
    assert await cache.access_token(TOKEN_URL, "cid", "csec", "rtok") == "tok-1"
    clock[0] = 20.0
    assert await cache.access_token(TOKEN_URL, "cid", "csec", "rtok") == "tok-2"


@pytest.mark.parametrize("expires_in", [None, "soon"])
async def test_missing_or_bad_expires_in_uses_a_short_default(expires_in: object) -> None:
    server = TokenServer(expires_in=expires_in)
    clock = [0.0]
    cache = make_cache(server, clock)
    await cache.access_token(TOKEN_URL, "cid", "csec", "rtok")
    clock[0] = 300.0
    assert await cache.access_token(TOKEN_URL, "cid", "csec", "rtok") == "tok-2"


async def test_concurrent_callers_share_one_refresh() -> None:
    server = TokenServer()
    server.gate = asyncio.Event()
    cache = make_cache(server, [0.0])
    callers = [asyncio.create_task(cache.access_token(TOKEN_URL, "cid", "csec", "rtok")) for _ in range(20)]
    for _ in range(5):
        await asyncio.sleep(0)
    assert len(server.forms) == 1
    server.gate.set()
    assert await asyncio.wait_for(asyncio.gather(*callers), 5) == ["tok-1"] * 20
    assert len(server.forms) == 1


async def test_a_cancelled_caller_does_not_cancel_the_shared_refresh() -> None:
    server = TokenServer()
    server.gate = asyncio.Event()
    cache = make_cache(server, [0.0])
    first = asyncio.create_task(cache.access_token(TOKEN_URL, "cid", "csec", "rtok"))
    second = asyncio.create_task(cache.access_token(TOKEN_URL, "cid", "csec", "rtok"))
    await asyncio.sleep(0)
    first.cancel()
    server.gate.set()
    assert await asyncio.wait_for(second, 5) == "tok-1"
    assert len(server.forms) == 1


async def test_different_credentials_are_cached_apart() -> None:
    server = TokenServer()
    cache = make_cache(server, [0.0])
    assert await cache.access_token(TOKEN_URL, "cid", "csec", "rtok-a") == "tok-1"
    assert await cache.access_token(TOKEN_URL, "cid", "csec", "rtok-b") == "tok-2"
    assert await cache.access_token(TOKEN_URL, "cid", "csec", "rtok-a") == "tok-1"
    key = cache.key_for(TOKEN_URL, "cid", "rtok-a")
    assert "rtok-a" not in repr(key)


async def test_invalidate_after_401_forces_a_refresh_but_not_for_a_stale_token() -> None:
    server = TokenServer()
    cache = make_cache(server, [0.0])
    key = cache.key_for(TOKEN_URL, "cid", Secret("rtok"))
    old = await cache.access_token(TOKEN_URL, "cid", "csec", "rtok")
    cache.invalidate(key, old)
    new = await cache.access_token(TOKEN_URL, "cid", "csec", "rtok")
    assert (old, new) == ("tok-1", "tok-2")
    cache.invalidate(key, old)  # a late 401 for the old token keeps the new one
    assert await cache.access_token(TOKEN_URL, "cid", "csec", "rtok") == "tok-2"
    cache.invalidate(key)
    assert await cache.access_token(TOKEN_URL, "cid", "csec", "rtok") == "tok-3"


@pytest.mark.parametrize(
    ("status", "body", "permanent", "reason"),
    [
        (
            400,
            {"error": "invalid_grant", "error_description": "Token has been expired or revoked."},
            True,
            "oauth_invalid_grant",
        ),
        (401, {"error": "invalid_client"}, True, "oauth_invalid_client"),
        (503, {"error": "temporarily_unavailable"}, False, "oauth_unavailable"),
        (429, {}, False, "oauth_unavailable"),
        (200, {"token_type": "Bearer"}, False, "oauth_unavailable"),  # no access_token
    ],
)
async def test_refresh_errors_are_clear_and_secret_free(
    status: int, body: dict[str, object], permanent: bool, reason: str
) -> None:
    server = TokenServer()
    server.answer = (status, body)
    cache = make_cache(server, [0.0])
    with pytest.raises(OAuthError) as caught:
        await cache.access_token(TOKEN_URL, "cid", "SUPERSECRET", "REFRESHSECRET")
    error = caught.value
    assert error.permanent is permanent
    assert "oauth2.googleapis.com/token" in error.message
    assert "SUPERSECRET" not in error.message and "REFRESHSECRET" not in error.message
    outcome = error.to_outcome()
    assert outcome.reason == reason
    assert outcome.verdict is (Verdict.REJECTED if permanent else Verdict.RETRY)
    # nothing was cached: the next call tries again
    server.answer = None
    assert await cache.access_token(TOKEN_URL, "cid", "SUPERSECRET", "REFRESHSECRET") == "tok-2"


async def test_transport_failure_is_a_transient_oauth_error() -> None:
    async def unreachable(request: HttpRequest) -> HttpResponse:
        raise TransportError("connect", "connection refused")

    cache = OAuthTokenCache(HandlerTransport(unreachable))
    with pytest.raises(OAuthError) as caught:
        await cache.access_token(TOKEN_URL, "cid", "csec", "rtok")
    assert not caught.value.permanent
    assert "connect" in caught.value.message


async def test_all_concurrent_callers_see_a_failed_refresh() -> None:
    server = TokenServer()
    server.answer = (400, {"error": "invalid_grant"})
    server.gate = asyncio.Event()
    cache = make_cache(server, [0.0])
    callers = [asyncio.create_task(cache.access_token(TOKEN_URL, "cid", "csec", "rtok")) for _ in range(3)]
    await asyncio.sleep(0)
    server.gate.set()
    results = await asyncio.wait_for(asyncio.gather(*callers, return_exceptions=True), 5)
    assert all(isinstance(r, OAuthError) and r.permanent for r in results)
    assert len(server.forms) == 1
