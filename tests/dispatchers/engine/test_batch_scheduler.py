"""BatchDeliveryScheduler against the fake ad platforms (and the fake OAuth server) on loopback.

Secrets come from `SecretStore(env={...})`; delays are kept tiny through the RetryPolicy; every wait is a
poll with a deadline, never a fixed sleep.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest

from devtools.fakes.platforms import (
    SAMPLE_ENTRIES,
    FakeGoogleAds,
    FakeMeta,
    FakeMicrosoftAds,
    FakeOAuthServer,
    FakeServer,
    FakeTikTok,
    sample_postback,
)
from dispatchers.adapters.http_transport import AiohttpTransport
from dispatchers.adapters.platform_credentials import PlatformCredentials
from dispatchers.adapters.secrets import SecretStore, env_var_name
from dispatchers.core.circuit_breaker import CircuitBreakers
from dispatchers.core.retry_policy import MAX_RETRY_AFTER_SECONDS, RetryPolicy
from dispatchers.engine.batch_scheduler import BatchDeliveryScheduler
from dispatchers.engine.oauth import OAuthTokenCache
from dispatchers.engine.rate_limiter import ConcurrencyLimits, RateLimiters
from dispatchers.engine.scheduler_core import FinalOutcome
from dispatchers.platforms import microsoft_ads
from dispatchers.platforms.api_versions import DEFAULT_VERSIONS

# Generous against a loaded 2-core CI machine; a hang still fails in seconds.
pytestmark = pytest.mark.timeout(20)

KINDS = ("google_ads", "meta", "tiktok", "microsoft_ads")
# Retries after 5-10 ms, 10-20 ms, ... capped at 50 ms.
FAST = RetryPolicy(base_delay_seconds=0.01, max_delay_seconds=0.05, max_age_seconds=60)
WAIT_SECONDS = 4.0
_POLL_SECONDS = 0.005
OAUTH_SECRET = {
    "client_id": "oauth-client-id",
    "client_secret": "oauth-client-secret",
    "refresh_token": "oauth-refresh-token",
}
SECRETS: dict[str, dict[str, str]] = {
    "google_ads": {"developer_token": "google-developer-token", **OAUTH_SECRET},
    "meta": {"access_token": "meta-access-token"},
    "tiktok": {"access_token": "tiktok-access-token"},
    "microsoft_ads": {"developer_token": "microsoft-developer-token", **OAUTH_SECRET},
}
F = TypeVar("F", bound=FakeServer)


class Finals:
    """The on_final callback: every final outcome, in arrival order."""

    def __init__(self) -> None:
        self.items: list[FinalOutcome] = []

    async def __call__(self, final: FinalOutcome) -> None:
        self.items.append(final)

    def by_id(self) -> dict[str, FinalOutcome]:
        return {final.postback["postback_id"]: final for final in self.items}

    def ids(self) -> Counter[str]:
        return Counter(final.postback["postback_id"] for final in self.items)

    async def wait_for(self, count: int) -> list[FinalOutcome]:
        await until(lambda: len(self.items) >= count, f"{count} final outcomes, got {len(self.items)}")
        return self.items


async def until(predicate: Callable[[], bool], what: str = "condition", timeout: float = WAIT_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(_POLL_SECONDS)


def postbacks(kind: str, n: int, *, start: int = 0, occurred: datetime | None = None) -> list[dict[str, Any]]:
    moment = occurred or datetime.now(UTC) - timedelta(hours=1)
    return [sample_postback(kind, moment, seq=seq) for seq in range(start, start + n)]


def dedup_key(postback: dict[str, Any]) -> str:
    """What the fake records in `.delivered` for this postback."""
    if postback["kind"] == "microsoft_ads":
        when = microsoft_ads.format_conversion_time(postback["occurred_at_unix"])
        return f"{postback['click_ids']['msclkid']}|{when}"
    return str(postback["postback_id"])


def rows_per_request(fake: FakeServer) -> list[list[str]]:
    """The dedup keys of the rows of every request the fake received, request by request."""
    out: list[list[str]] = []
    for request in fake.received:
        body = request.body
        if "conversions" in body:
            out.append([row["orderId"] for row in body["conversions"]])
        elif "OfflineConversions" in body:
            out.append([f"{row['MicrosoftClickId']}|{row['ConversionTime']}" for row in body["OfflineConversions"]])
        else:
            out.append([event["event_id"] for event in body["data"]])
    return out


class Servers:
    """Fakes started by a test, stopped after its schedulers (see the `make` fixture)."""

    def __init__(self) -> None:
        self.running: list[FakeServer] = []

    async def start(self, fake: F) -> F:
        await fake.start()
        self.running.append(fake)
        return fake


@pytest.fixture
async def servers() -> AsyncIterator[Servers]:
    started = Servers()
    yield started
    for fake in started.running:
        await fake.stop()


@pytest.fixture
async def transport() -> AsyncIterator[AiohttpTransport]:
    async with AiohttpTransport(allow_private_targets=True) as running:
        yield running


@dataclass
class Platform:
    kind: str
    fake: FakeServer
    oauth: FakeOAuthServer | None
    credentials: PlatformCredentials


def _make_fake(kind: str, clock: Callable[[], datetime] | None) -> FakeServer:
    if kind == "google_ads":
        return FakeGoogleAds(clock=clock)
    if kind == "meta":
        return FakeMeta(clock=clock)
    if kind == "tiktok":
        return FakeTikTok(clock=clock)
    return FakeMicrosoftAds(clock=clock)


class Make:
    """Builds platforms (fake, OAuth server, credentials) and schedulers; stops every scheduler at the end."""

    def __init__(self, servers: Servers, transport: AiohttpTransport, tmp_path: Path) -> None:
        self.servers = servers
        self.transport = transport
        self.tmp_path = tmp_path
        self.created: list[BatchDeliveryScheduler] = []

    async def platform(
        self,
        kind: str,
        *,
        secret: dict[str, str] | None = None,
        with_secret: bool = True,
        clock: Callable[[], datetime] | None = None,
    ) -> Platform:
        fake = await self.servers.start(_make_fake(kind, clock))
        oauth = None
        if kind in ("google_ads", "microsoft_ads"):
            assert isinstance(fake, FakeGoogleAds | FakeMicrosoftAds)
            oauth = await self.servers.start(FakeOAuthServer(grant_into=[fake.tokens]))
        env: dict[str, str] = {}
        if with_secret:
            name = SAMPLE_ENTRIES[kind]["credentials"]
            env[env_var_name(name)] = orjson.dumps(secret if secret is not None else SECRETS[kind]).decode()
        token_url = oauth.token_url if oauth is not None else "http://127.0.0.1:9/unused"
        credentials = PlatformCredentials(
            SecretStore(env=env, secrets_dir=self.tmp_path),
            OAuthTokenCache(self.transport),
            google_ads_base_url=fake.base_url,
            meta_base_url=fake.base_url,
            tiktok_base_url=fake.base_url,
            microsoft_ads_base_url=fake.base_url,
            oauth_token_url_google=token_url,
            oauth_token_url_microsoft=token_url,
        )
        return Platform(kind, fake, oauth, credentials)

    def scheduler(self, platform: Platform, on_final: Finals, **overrides: Any) -> BatchDeliveryScheduler:
        options: dict[str, Any] = {
            "policy": FAST,
            "breakers": CircuitBreakers(),
            "rate_limits": RateLimiters(None),
            "concurrency": ConcurrencyLimits(4),
            "timeout_seconds": 5.0,
            **overrides,
        }
        scheduler = BatchDeliveryScheduler(
            self.transport, kind=platform.kind, on_final=on_final, credentials=platform.credentials, **options
        )
        self.created.append(scheduler)
        return scheduler


@pytest.fixture
async def make(servers: Servers, transport: AiohttpTransport, tmp_path: Path) -> AsyncIterator[Make]:
    maker = Make(servers, transport, tmp_path)
    yield maker
    for scheduler in maker.created:
        await scheduler.drain(0.5)


# --- happy path -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_batch_is_delivered_in_one_request_each_row_once(kind: str, make: Make) -> None:
    platform = await make.platform(kind)
    finals = Finals()
    scheduler = make.scheduler(platform, finals)
    batch = postbacks(kind, 5)
    for postback in batch:
        scheduler.submit(postback)
    scheduler.submit(dict(batch[0]))  # a duplicate submission is ignored
    await scheduler.start()

    await finals.wait_for(5)
    assert await scheduler.drain(1.0) == []
    assert finals.ids() == Counter(p["postback_id"] for p in batch)  # one on_final each
    assert [final.result for final in finals.items] == ["delivered"] * 5
    assert all(final.attempts == 1 and final.last_outcome.http_status == 200 for final in finals.items)
    assert rows_per_request(platform.fake) == [[dedup_key(p) for p in batch]]  # one request, each row once
    assert Counter(platform.fake.delivered) == Counter(dedup_key(p) for p in batch)
    if platform.oauth is not None:
        assert platform.oauth.calls == 1


@pytest.mark.parametrize("kind", KINDS)
async def test_throttled_request_is_retried_after_retry_after(kind: str, make: Make) -> None:
    platform = await make.platform(kind)
    finals = Finals()
    scheduler = make.scheduler(platform, finals)
    # FAST would retry after 5-10 ms; the platform asks for 200 ms.
    platform.fake.fail_next(1, "rate_limit", retry_after="0.2")
    batch = postbacks(kind, 3)
    for postback in batch:
        scheduler.submit(postback)
    await scheduler.start()

    await finals.wait_for(3)
    assert [(f.result, f.attempts) for f in finals.items] == [("delivered", 2)] * 3
    assert all(final.latency_seconds >= 0.2 for final in finals.items)
    keys = [dedup_key(p) for p in batch]
    assert rows_per_request(platform.fake) == [keys, keys]  # the whole batch again, once
    assert Counter(platform.fake.delivered) == Counter(keys)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("retry_after", ["1e12", "inf", "nan", "Fri, 31 Dec 9999 23:59:59 GMT"])
async def test_an_absurd_retry_after_neither_raises_nor_waits_longer_than_the_cap(
    kind: str, retry_after: str, make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    platform = await make.platform(kind)
    finals = Finals()
    scheduler = make.scheduler(platform, finals)
    platform.fake.fail_next(1, "rate_limit", retry_after=retry_after)
    scheduler.submit(postbacks(kind, 1)[0])
    await scheduler.start()

    def settled() -> bool:
        # Delivered after a short pause (an unreadable value), or back in its queue after the throttled
        # attempt: a due time that overflowed would have killed the worker with the row still "in flight".
        requeued = [p for p in scheduler.pending() if p.first_attempt_at and p.next_attempt_at > p.first_attempt_at]
        return bool(finals.items or requeued)

    await until(settled, "the throttled row to be delivered or requeued")
    cap = datetime.now(UTC) + timedelta(seconds=MAX_RETRY_AFTER_SECONDS)
    assert all(item.attempts == 1 and item.next_attempt_at <= cap for item in scheduler.pending())
    assert [(f.result, f.attempts) for f in finals.items] in ([], [("delivered", 2)])
    assert "crashed" not in caplog.text


# --- per-row verdicts -------------------------------------------------------------------------------------


async def test_google_partial_failure_settles_rows_and_resends_only_the_transient_one(make: Make) -> None:
    platform = await make.platform("google_ads")
    finals = Finals()
    scheduler = make.scheduler(platform, finals)
    platform.fake.fail_next(
        1, "partial", rows={1: "CLICK_NOT_FOUND", 2: "CLICK_CONVERSION_ALREADY_EXISTS", 3: "TRANSIENT_ERROR"}
    )
    batch = postbacks("google_ads", 5)
    for postback in batch:
        scheduler.submit(postback)
    await scheduler.start()

    await finals.wait_for(5)
    assert await scheduler.drain(1.0) == []
    results = {pid: (f.result, f.last_outcome.reason, f.attempts) for pid, f in finals.by_id().items()}
    ids = [p["postback_id"] for p in batch]
    assert results == {
        ids[0]: ("delivered", "http_200", 1),
        ids[1]: ("rejected", "CLICK_NOT_FOUND", 1),
        ids[2]: ("delivered", "CLICK_CONVERSION_ALREADY_EXISTS", 1),
        ids[3]: ("delivered", "http_200", 2),
        ids[4]: ("delivered", "http_200", 1),
    }
    # Delivered and rejected rows are never sent again; only the transient row is, alone.
    assert rows_per_request(platform.fake) == [ids, [ids[3]]]
    assert Counter(platform.fake.delivered) == Counter([ids[0], ids[3], ids[4]])


async def test_meta_event_too_old_is_rejected_before_sending_and_batch_mates_are_delivered(make: Make) -> None:
    platform = await make.platform("meta")
    finals = Finals()
    scheduler = make.scheduler(platform, finals)
    fresh = postbacks("meta", 2)
    stale = postbacks("meta", 1, start=2, occurred=datetime.now(UTC) - timedelta(days=7, hours=1))[0]
    for postback in (fresh[0], stale, fresh[1]):
        scheduler.submit(postback)
    await scheduler.start()

    await finals.wait_for(3)
    by_id = finals.by_id()
    old = by_id[stale["postback_id"]]
    assert (old.result, old.last_outcome.reason, old.attempts) == ("rejected", "event_too_old", 0)
    assert all(by_id[p["postback_id"]].result == "delivered" for p in fresh)
    assert rows_per_request(platform.fake) == [[p["postback_id"] for p in fresh]]  # Meta never saw the old event


async def test_microsoft_event_slightly_in_future_waits_then_goes_out(make: Make) -> None:
    offset = [timedelta(0)]

    def clock() -> datetime:
        return datetime.now(UTC) + offset[0]

    platform = await make.platform("microsoft_ads", clock=clock)
    finals = Finals()
    scheduler = make.scheduler(platform, finals, clock=clock)
    early = postbacks("microsoft_ads", 1, occurred=datetime.now(UTC) + timedelta(minutes=1))[0]
    scheduler.submit(early)
    await scheduler.start()
    await until(lambda: bool(scheduler.pending()) and scheduler.pending()[0].last_outcome is not None, "a precheck")
    [waiting] = scheduler.pending()
    assert waiting.last_outcome is not None and waiting.last_outcome.reason == "event_in_future"
    assert waiting.attempts == 0 and waiting.next_attempt_at > clock() + timedelta(seconds=50)
    assert platform.fake.received == []

    offset[0] = timedelta(minutes=2)  # time passes; a new postback wakes the queue
    later = postbacks("microsoft_ads", 1, start=1)[0]
    scheduler.submit(later)
    await finals.wait_for(2)
    assert [(f.result, f.attempts) for f in finals.items] == [("delivered", 1)] * 2
    assert Counter(platform.fake.delivered) == Counter([dedup_key(early), dedup_key(later)])


# --- API version ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_requests_use_the_default_api_version_when_none_is_configured(kind: str, make: Make) -> None:
    platform = await make.platform(kind)
    finals = Finals()
    scheduler = make.scheduler(platform, finals)
    scheduler.submit(postbacks(kind, 1)[0])
    await scheduler.start()
    await finals.wait_for(1)
    assert finals.items[0].result == "delivered"
    (request,) = platform.fake.received
    assert f"/{DEFAULT_VERSIONS[kind]}/" in request.path


async def test_google_requests_use_the_configured_version_and_a_sunset_one_is_rejected(make: Make) -> None:
    platform = await make.platform("google_ads")
    finals = Finals()
    live, sunset = postbacks("google_ads", 2)
    configured = make.scheduler(platform, finals, api_version="v25")
    configured.submit(live)
    await configured.start()
    await finals.wait_for(1)
    assert platform.fake.received[-1].path == "/v25/customers/1234567890:uploadClickConversions"
    retired = make.scheduler(platform, finals, api_version="v21")  # sunset 2026-08-05
    retired.submit(sunset)
    await retired.start()
    await finals.wait_for(2)
    assert platform.fake.received[-1].path == "/v21/customers/1234567890:uploadClickConversions"
    outcomes = {f.postback["postback_id"]: (f.result, f.last_outcome.reason, f.attempts) for f in finals.items}
    assert outcomes == {
        live["postback_id"]: ("delivered", "http_200", 1),
        sunset["postback_id"]: ("rejected", "UNSUPPORTED_VERSION", 1),
    }


# --- batch size -------------------------------------------------------------------------------------------


async def test_google_batches_hold_at_most_2000_rows(make: Make) -> None:
    platform = await make.platform("google_ads")
    finals = Finals()
    scheduler = make.scheduler(platform, finals)
    batch = postbacks("google_ads", 2500)
    for postback in batch:
        scheduler.submit(postback)
    await scheduler.start()

    await finals.wait_for(2500)
    assert {final.result for final in finals.items} == {"delivered"}
    sizes = sorted(len(rows) for rows in rows_per_request(platform.fake))
    assert sizes == [500, 2000]  # the fake answers TOO_MANY_CONVERSIONS_IN_REQUEST above 2000
    assert Counter(platform.fake.delivered) == Counter(p["postback_id"] for p in batch)
    assert platform.oauth is not None and platform.oauth.calls == 1  # one refresh for both concurrent requests


# --- credentials ------------------------------------------------------------------------------------------


async def test_oauth_token_is_reused_and_refreshed_after_a_401(make: Make) -> None:
    platform = await make.platform("google_ads")
    assert isinstance(platform.fake, FakeGoogleAds) and platform.oauth is not None
    finals = Finals()
    scheduler = make.scheduler(platform, finals)
    await scheduler.start()
    for postback in postbacks("google_ads", 2):
        scheduler.submit(postback)
    await finals.wait_for(2)
    for postback in postbacks("google_ads", 2, start=2):
        scheduler.submit(postback)
    await finals.wait_for(4)
    assert platform.oauth.calls == 1  # two requests, one token
    assert len(platform.fake.received) == 2

    platform.fake.tokens.clear()  # the token is revoked: Google answers 401 OAUTH_TOKEN_INVALID
    for postback in postbacks("google_ads", 2, start=4):
        scheduler.submit(postback)
    await finals.wait_for(6)
    assert platform.oauth.calls == 2
    assert [(f.result, f.attempts) for f in finals.items[4:]] == [("delivered", 2)] * 2
    assert [len(rows) for rows in rows_per_request(platform.fake)] == [2, 2, 2, 2]


async def test_a_second_auth_expired_in_a_row_is_final(make: Make) -> None:
    platform = await make.platform("microsoft_ads")
    assert platform.oauth is not None
    finals = Finals()
    scheduler = make.scheduler(platform, finals)
    platform.fake.fail_next(2, "invalid_token")  # 401 AuthenticationTokenExpired, twice
    scheduler.submit(postbacks("microsoft_ads", 1)[0])
    await scheduler.start()

    [final] = await finals.wait_for(1)
    assert (final.result, final.last_outcome.reason, final.attempts) == ("rejected", "auth_expired", 2)
    assert platform.oauth.calls == 2  # refreshed once, between the two requests
    assert len(platform.fake.received) == 2


@pytest.mark.parametrize("kind", ["meta", "google_ads"])
async def test_missing_or_invalid_secret_rejects_with_missing_credentials(kind: str, make: Make) -> None:
    # Meta: no secret at all. Google: a secret without its refresh_token, whose other values must not leak.
    partial = {key: value for key, value in SECRETS["google_ads"].items() if key != "refresh_token"}
    platform = await make.platform(kind, with_secret=kind != "meta", secret=partial if kind == "google_ads" else None)
    finals = Finals()
    scheduler = make.scheduler(platform, finals)
    for postback in postbacks(kind, 2):
        scheduler.submit(postback)
    await scheduler.start()

    await finals.wait_for(2)
    for final in finals.items:
        assert (final.result, final.last_outcome.reason) == ("rejected", "missing_credentials")
        assert SAMPLE_ENTRIES[kind]["credentials"] in final.last_outcome.detail
        assert not any(value in final.last_outcome.detail for value in SECRETS[kind].values())
    assert platform.fake.received == []
    if platform.oauth is not None:
        assert platform.oauth.calls == 0


# --- stopping ---------------------------------------------------------------------------------------------


async def test_drain_cancels_the_request_in_flight_and_counts_it_as_an_attempt(make: Make) -> None:
    platform = await make.platform("tiktok")
    finals = Finals()
    scheduler = make.scheduler(platform, finals)
    platform.fake.fail_next(1, "timeout")  # the fake holds the request until it stops
    batch = postbacks("tiktok", 3)
    for postback in batch:
        scheduler.submit(postback)
    await scheduler.start()
    await until(lambda: len(platform.fake.received) == 1, "the request to arrive")

    pending = await scheduler.drain(0.1)
    assert finals.items == []
    assert sorted(p.postback["postback_id"] for p in pending) == sorted(p["postback_id"] for p in batch)
    for item in pending:
        assert item.attempts == 1 and item.first_attempt_at is not None
        assert item.last_outcome is not None and item.last_outcome.reason == "cancelled"
    with pytest.raises(RuntimeError):
        scheduler.submit(postbacks("tiktok", 1, start=9)[0])
