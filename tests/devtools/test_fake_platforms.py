"""Each builder's request, sent over real HTTP to its fake, and each fake answer classified.

Loopback only and fast, so it lives with the unit tests. It pins three things at once: the fakes
accept what the builders produce, the fakes answer failures in the platforms' shapes, and the
classifiers read those answers as docs/destinations.md says.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import orjson
import pytest

from devtools.fakes.platforms import (
    GOOGLE_SUNSETS,
    FailureMode,
    FakeGoogleAds,
    FakeMeta,
    FakeMicrosoftAds,
    FakeOAuthServer,
    FakeServer,
    FakeTikTok,
    sample_postback,
)
from dispatchers.core.http import HttpRequest, HttpResponse
from dispatchers.core.outcome import Outcome, Verdict
from dispatchers.platforms import google_ads, meta, microsoft_ads, tiktok
from dispatchers.platforms.api_versions import DEFAULT_VERSIONS
from streams.core.schema_checks import check_all

GOOGLE_TOKEN = "google-access-token"
GOOGLE_DEV = "google-developer-token"
META_TOKEN = "meta-access-token"
TIKTOK_TOKEN = "tiktok-access-token"
MS_TOKEN = "microsoft-access-token"
MS_DEV = "microsoft-developer-token"


async def send(session: aiohttp.ClientSession, request: HttpRequest) -> HttpResponse:
    """What the dispatchers' transport does, reduced to the HTTP exchange."""
    timeout = aiohttp.ClientTimeout(total=request.timeout_seconds)
    started = time.monotonic()
    async with session.request(
        request.method, request.url, headers=dict(request.headers), data=request.body, timeout=timeout
    ) as answer:
        body = await answer.read()
        headers = {name.lower(): value for name, value in answer.headers.items()}
        return HttpResponse(answer.status, headers, body, time.monotonic() - started)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@dataclass(frozen=True)
class Platform:
    kind: str
    make_fake: Callable[[], FakeServer]
    build: Callable[[Sequence[dict[str, Any]], str], HttpRequest]
    classify: Callable[[HttpResponse, Sequence[dict[str, Any]]], list[Outcome]]

    def postbacks(self, n: int, occurred: datetime | None = None, start: int = 0) -> list[dict[str, Any]]:
        moment = occurred or datetime.now(UTC) - timedelta(hours=1)
        return [sample_postback(self.kind, moment, seq=seq) for seq in range(start, start + n)]


GOOGLE = Platform(
    "google_ads",
    FakeGoogleAds,
    lambda pbs, base: google_ads.build_request(
        pbs,
        base_url=base,
        access_token=GOOGLE_TOKEN,
        developer_token=GOOGLE_DEV,
        api_version=DEFAULT_VERSIONS["google_ads"],
    ),
    google_ads.classify_response,
)
META = Platform(
    "meta",
    FakeMeta,
    lambda pbs, base: meta.build_request(
        pbs, base_url=base, access_token=META_TOKEN, api_version=DEFAULT_VERSIONS["meta"], timeout_seconds=5.0
    ),
    meta.classify_response,
)
TIKTOK = Platform(
    "tiktok",
    FakeTikTok,
    lambda pbs, base: tiktok.build_request(
        pbs, base_url=base, access_token=TIKTOK_TOKEN, api_version=DEFAULT_VERSIONS["tiktok"]
    ),
    tiktok.classify_response,
)
MICROSOFT = Platform(
    "microsoft_ads",
    FakeMicrosoftAds,
    lambda pbs, base: microsoft_ads.build_request(
        pbs,
        base_url=base,
        access_token=MS_TOKEN,
        developer_token=MS_DEV,
        api_version=DEFAULT_VERSIONS["microsoft_ads"],
    ),
    microsoft_ads.classify_response,
)
PLATFORMS = [GOOGLE, META, TIKTOK, MICROSOFT]
BY_KIND = {platform.kind: platform for platform in PLATFORMS}


def verdicts(outcomes: list[Outcome]) -> list[tuple[Verdict, str, float | None]]:
    return [(o.verdict, o.reason, o.retry_after_seconds) for o in outcomes]


def with_body(request: HttpRequest, change: Callable[[dict[str, Any]], None]) -> HttpRequest:
    """The same request with its JSON body edited: what a buggy builder would have sent."""
    body = orjson.loads(request.body or b"{}")
    change(body)
    return replace(request, body=orjson.dumps(body))


def with_header(request: HttpRequest, name: str, value: str | None) -> HttpRequest:
    headers = {k: v for k, v in request.headers.items() if k != name}
    if value is not None:
        headers[name] = value
    return replace(request, headers=headers)


@pytest.mark.parametrize("kind", ["google_ads", "meta", "tiktok", "microsoft_ads"])
def test_sample_postbacks_follow_the_schema(kind: str) -> None:
    assert check_all("matched-postback", sample_postback(kind, datetime.now(UTC))) == []


@pytest.mark.parametrize("platform", PLATFORMS, ids=lambda p: p.kind)
async def test_good_batch_is_delivered_once_and_a_repeat_is_harmless(
    platform: Platform, session: aiohttp.ClientSession
) -> None:
    async with platform.make_fake() as fake:
        postbacks = platform.postbacks(3)
        request = platform.build(postbacks, fake.base_url)
        first = platform.classify(await send(session, request), postbacks)
        assert [o.verdict for o in first] == [Verdict.DELIVERED] * 3
        assert len(fake.delivered) == 3 and fake.duplicates == []

        # A request whose outcome was unknown (timeout, crash) is sent again: the dedup key must
        # keep the platform from counting it twice.
        again = platform.classify(await send(session, request), postbacks)
        expected = Verdict.DUPLICATE if platform is GOOGLE else Verdict.DELIVERED
        assert [o.verdict for o in again] == [expected] * 3
        assert set(Counter(fake.delivered).values()) == {1}
        assert len(fake.duplicates) == 3
        assert len(fake.received) == 2


async def test_each_postback_lands_exactly_once_across_batches(session: aiohttp.ClientSession) -> None:
    async with FakeGoogleAds() as fake:
        postbacks = GOOGLE.postbacks(5)
        for batch in ([postbacks[0], postbacks[1]], postbacks[2:]):
            await send(session, GOOGLE.build(batch, fake.base_url))
        assert Counter(fake.delivered) == Counter(p["postback_id"] for p in postbacks)


FAILURES: list[tuple[Platform, FailureMode, str | None, tuple[Verdict, str, float | None]]] = [
    (GOOGLE, "rate_limit", "3", (Verdict.RETRY, "RESOURCE_EXHAUSTED", 3.0)),
    (GOOGLE, "rate_limit", None, (Verdict.RETRY, "RESOURCE_EXHAUSTED", None)),
    (GOOGLE, "server_error", None, (Verdict.RETRY, "INTERNAL_ERROR", None)),
    (GOOGLE, "unavailable", "2", (Verdict.RETRY, "TRANSIENT_ERROR", 2.0)),
    (GOOGLE, "invalid_token", None, (Verdict.RETRY, "auth_expired", None)),
    (META, "rate_limit", None, (Verdict.RETRY, "throttled", 60.0)),
    (META, "rate_limit", "2", (Verdict.RETRY, "throttled", 2.0)),
    (META, "server_error", None, (Verdict.RETRY, "temporary_error", None)),
    (META, "unavailable", None, (Verdict.RETRY, "temporary_error", None)),
    (META, "invalid_token", None, (Verdict.REJECTED, "invalid_token", None)),
    (TIKTOK, "rate_limit", None, (Verdict.RETRY, "rate_limited", 60.0)),
    (TIKTOK, "server_error", None, (Verdict.RETRY, "http_500", None)),
    (TIKTOK, "unavailable", "1", (Verdict.RETRY, "http_503", 1.0)),
    (TIKTOK, "invalid_token", None, (Verdict.REJECTED, "tiktok_40105", None)),
    (MICROSOFT, "rate_limit", "4", (Verdict.RETRY, "throttled", 4.0)),
    (MICROSOFT, "server_error", None, (Verdict.RETRY, "InternalError", None)),
    (MICROSOFT, "unavailable", None, (Verdict.RETRY, "InternalError", None)),
    (MICROSOFT, "invalid_token", None, (Verdict.RETRY, "auth_expired", None)),
]


@pytest.mark.parametrize(
    ("platform", "mode", "retry_after", "expected"), FAILURES, ids=[f"{p.kind}-{m}-{r}" for p, m, r, _ in FAILURES]
)
async def test_scripted_failures_are_classified_and_then_clear(
    platform: Platform,
    mode: FailureMode,
    retry_after: str | None,
    expected: tuple[Verdict, str, float | None],
    session: aiohttp.ClientSession,
) -> None:
    async with platform.make_fake() as fake:
        postbacks = platform.postbacks(2)
        request = platform.build(postbacks, fake.base_url)
        fake.fail_next(1, mode, retry_after=retry_after)
        assert verdicts(platform.classify(await send(session, request), postbacks)) == [expected] * 2
        assert fake.delivered == []
        assert [o.verdict for o in platform.classify(await send(session, request), postbacks)] == [
            Verdict.DELIVERED
        ] * 2


@pytest.mark.parametrize("platform", PLATFORMS, ids=lambda p: p.kind)
async def test_timeout_is_the_clients_and_stop_releases_the_server(
    platform: Platform, session: aiohttp.ClientSession
) -> None:
    fake = platform.make_fake()
    await fake.start()
    try:
        postbacks = platform.postbacks(1)
        request = replace(platform.build(postbacks, fake.base_url), timeout_seconds=0.2)
        fake.fail_next(1, "timeout")
        with pytest.raises(TimeoutError):
            await send(session, request)
    finally:
        started = time.monotonic()
        await fake.stop()
        assert time.monotonic() - started < 5.0
    assert fake.delivered == []


@pytest.mark.parametrize(
    ("platform", "header", "value", "expected"),
    [
        (GOOGLE, "Authorization", "Bearer wrong", (Verdict.RETRY, "auth_expired", None)),
        (GOOGLE, "Authorization", None, (Verdict.RETRY, "auth_expired", None)),
        (GOOGLE, "developer-token", "wrong", (Verdict.REJECTED, "DEVELOPER_TOKEN_INVALID", None)),
        (GOOGLE, "developer-token", None, (Verdict.REJECTED, "DEVELOPER_TOKEN_PARAMETER_MISSING", None)),
        (TIKTOK, "Access-Token", "wrong", (Verdict.REJECTED, "tiktok_40105", None)),
        (TIKTOK, "Access-Token", None, (Verdict.REJECTED, "tiktok_40105", None)),
        (MICROSOFT, "Authorization", "Bearer wrong", (Verdict.RETRY, "auth_expired", None)),
        (MICROSOFT, "CustomerId", None, (Verdict.REJECTED, "CustomerIdHasToBeSpecified", None)),
        (MICROSOFT, "CustomerAccountId", None, (Verdict.REJECTED, "AccountIdHasToBeSpecified", None)),
    ],
    ids=lambda value: str(value) if not isinstance(value, Platform | tuple) else "",
)
async def test_header_checks(
    platform: Platform,
    header: str,
    value: str | None,
    expected: tuple[Verdict, str, float | None],
    session: aiohttp.ClientSession,
) -> None:
    async with platform.make_fake() as fake:
        postbacks = platform.postbacks(1)
        request = with_header(platform.build(postbacks, fake.base_url), header, value)
        assert verdicts(platform.classify(await send(session, request), postbacks)) == [expected]
        assert fake.delivered == []


async def test_meta_token_checks(session: aiohttp.ClientSession) -> None:
    async with FakeMeta() as fake:
        postbacks = META.postbacks(1)
        request = META.build(postbacks, fake.base_url)
        assert META_TOKEN not in request.url
        wrong = with_body(request, lambda body: body.update(access_token="wrong"))
        assert verdicts(META.classify(await send(session, wrong), postbacks)) == [
            (Verdict.REJECTED, "invalid_token", None)
        ]
        missing = with_body(request, lambda body: body.pop("access_token"))
        assert verdicts(META.classify(await send(session, missing), postbacks)) == [
            (Verdict.REJECTED, "meta_error_104", None)
        ]
        # The Graph API also takes the token in the query string; the fake does too.
        in_query = replace(missing, url=f"{missing.url}?access_token={META_TOKEN}")
        assert [o.verdict for o in META.classify(await send(session, in_query), postbacks)] == [Verdict.DELIVERED]


async def test_google_partial_failure_marks_only_the_failed_rows(session: aiohttp.ClientSession) -> None:
    async with FakeGoogleAds() as fake:
        postbacks = GOOGLE.postbacks(3)
        fake.fail_next(1, "partial", rows={1: "CLICK_NOT_FOUND", 2: "EXPIRED_EVENT"})
        outcomes = GOOGLE.classify(await send(session, GOOGLE.build(postbacks, fake.base_url)), postbacks)
        assert verdicts(outcomes) == [
            (Verdict.DELIVERED, "http_200", None),
            (Verdict.REJECTED, "CLICK_NOT_FOUND", None),
            (Verdict.REJECTED, "EXPIRED_EVENT", None),
        ]
        assert fake.delivered == [postbacks[0]["postback_id"]]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (
            lambda body: body["conversions"][1].update(conversionDateTime="2026-11-20T08:30:15Z"),
            "INVALID_STRING_DATE_TIME_SECONDS_WITH_OFFSET",
        ),
        (
            lambda body: body["conversions"][1].update(userIdentifiers=[{"hashedEmail": "A" * 64}]),
            "INVALID_USER_IDENTIFIER",
        ),
        (lambda body: body["conversions"][1].update(gbraid="B", wbraid="W"), "GBRAID_WBRAID_BOTH_SET"),
        (
            lambda body: body["conversions"][1].update(conversionAction="customers/1/conversionActions/2"),
            "NO_CONVERSION_ACTION_FOUND",
        ),
        (lambda body: body["conversions"][1].update(conversionValue="12.5"), "INVALID_VALUE"),
        (lambda body: [body["conversions"][1].pop(k) for k in ("gclid", "userIdentifiers")], "REQUIRED"),
    ],
)
async def test_google_row_shape_checks(
    change: Callable[[dict[str, Any]], None], reason: str, session: aiohttp.ClientSession
) -> None:
    async with FakeGoogleAds() as fake:
        postbacks = GOOGLE.postbacks(2)
        request = with_body(GOOGLE.build(postbacks, fake.base_url), change)
        outcomes = GOOGLE.classify(await send(session, request), postbacks)
        assert verdicts(outcomes) == [(Verdict.DELIVERED, "http_200", None), (Verdict.REJECTED, reason, None)]


async def test_google_in_request_duplicate_order_ids_fail_both_rows(session: aiohttp.ClientSession) -> None:
    async with FakeGoogleAds() as fake:
        postbacks = GOOGLE.postbacks(2)
        request = with_body(
            GOOGLE.build(postbacks, fake.base_url),
            lambda body: body["conversions"][1].update(orderId=body["conversions"][0]["orderId"]),
        )
        outcomes = GOOGLE.classify(await send(session, request), postbacks)
        assert [o.reason for o in outcomes] == ["DUPLICATE_ORDER_ID"] * 2


@pytest.mark.parametrize("version", sorted(GOOGLE_SUNSETS))
async def test_google_refuses_a_sunset_version_from_its_sunset_day(
    version: str, session: aiohttp.ClientSession
) -> None:
    sunset = GOOGLE_SUNSETS[version]
    day = {"now": datetime.combine(sunset - timedelta(days=1), datetime.min.time(), UTC) + timedelta(hours=12)}
    async with FakeGoogleAds(clock=lambda: day["now"]) as fake:
        postbacks = GOOGLE.postbacks(1, occurred=day["now"] - timedelta(hours=1))
        request = google_ads.build_request(
            postbacks,
            base_url=fake.base_url,
            access_token=GOOGLE_TOKEN,
            developer_token=GOOGLE_DEV,
            api_version=version,
        )
        assert [o.verdict for o in GOOGLE.classify(await send(session, request), postbacks)] == [Verdict.DELIVERED]
        day["now"] += timedelta(days=1)
        answer = await send(session, replace(request, headers={}))  # refused before credentials are looked at
        assert answer.status == 400
        (detail,) = orjson.loads(answer.body)["error"]["details"]
        assert detail["@type"] == f"type.googleapis.com/google.ads.googleads.{version}.errors.GoogleAdsFailure"
        assert detail["errors"][0]["errorCode"] == {"requestError": "UNSUPPORTED_VERSION"}
        assert (
            detail["errors"][0]["message"]
            == f"Version {version} is deprecated. Requests to this version will be blocked."
        )
        assert verdicts(GOOGLE.classify(answer, postbacks)) == [(Verdict.REJECTED, "UNSUPPORTED_VERSION", None)]


async def test_google_serves_the_default_version(session: aiohttp.ClientSession) -> None:
    async with FakeGoogleAds() as fake:
        postbacks = GOOGLE.postbacks(1)
        request = GOOGLE.build(postbacks, fake.base_url)
        assert f"/{DEFAULT_VERSIONS['google_ads']}/customers/" in request.url
        assert [o.verdict for o in GOOGLE.classify(await send(session, request), postbacks)] == [Verdict.DELIVERED]
        assert fake.received[-1].path.startswith(f"/{DEFAULT_VERSIONS['google_ads']}/")


@pytest.mark.parametrize(
    ("platform", "limit", "reason"),
    [
        (GOOGLE, 2000, "TOO_MANY_CONVERSIONS_IN_REQUEST"),
        (META, 1000, "meta_error_100"),
        (TIKTOK, 1000, "tiktok_40002"),
        (MICROSOFT, 1000, "OfflineConversionsLimitExceeded"),
    ],
    ids=lambda value: value.kind if isinstance(value, Platform) else str(value),
)
async def test_batch_limits_are_enforced_by_the_fakes(
    platform: Platform, limit: int, reason: str, session: aiohttp.ClientSession
) -> None:
    async with platform.make_fake() as fake:
        postbacks = platform.postbacks(limit)
        request = platform.build(postbacks, fake.base_url)
        rows_field = {"google_ads": "conversions", "microsoft_ads": "OfflineConversions"}.get(platform.kind, "data")
        extra = platform.build(platform.postbacks(1, start=limit), fake.base_url)
        extra_row = orjson.loads(extra.body or b"")[rows_field][0]
        too_many = with_body(request, lambda body: body[rows_field].append(extra_row))
        outcomes = platform.classify(await send(session, too_many), [*postbacks, *platform.postbacks(1, start=limit)])
        assert {(o.verdict, o.reason) for o in outcomes} == {(Verdict.REJECTED, reason)}
        assert fake.delivered == []
        assert [o.verdict for o in platform.classify(await send(session, request), postbacks)] == [
            Verdict.DELIVERED
        ] * limit


async def test_meta_refuses_the_whole_request_for_one_event_older_than_7_days(session: aiohttp.ClientSession) -> None:
    async with FakeMeta() as fake:
        now = datetime.now(UTC)
        fresh = META.postbacks(2)
        old = META.postbacks(1, occurred=now - timedelta(days=8), start=2)
        batch = fresh + old
        outcomes = META.classify(await send(session, META.build(batch, fake.base_url)), batch)
        assert {(o.verdict, o.reason) for o in outcomes} == {(Verdict.REJECTED, "meta_error_100")}
        assert fake.delivered == []
        # The precheck is what keeps this from happening: it refuses the old event alone.
        checks = [meta.precheck(p, now) for p in batch]
        assert [c.reason if c else None for c in checks] == [None, None, "event_too_old"]
        outcomes = META.classify(await send(session, META.build(fresh, fake.base_url)), fresh)
        assert [o.verdict for o in outcomes] == [Verdict.DELIVERED] * 2


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda body: body["data"][0].update(action_source="website"), "event_source_url"),
        (lambda body: body["data"][0]["user_data"].update(em=["not-a-hash"]), "user_data.em"),
        (lambda body: body["data"][0].pop("action_source"), "action_source"),
        (lambda body: body["data"][0].update(event_time="yesterday"), "event_time"),
    ],
)
async def test_meta_event_shape_checks(
    change: Callable[[dict[str, Any]], None], problem: str, session: aiohttp.ClientSession
) -> None:
    async with FakeMeta() as fake:
        postbacks = META.postbacks(1)
        answer = await send(session, with_body(META.build(postbacks, fake.base_url), change))
        assert problem in orjson.loads(answer.body)["error"]["error_user_msg"]
        assert verdicts(META.classify(answer, postbacks)) == [(Verdict.REJECTED, "meta_error_100", None)]


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda body: body["data"][1]["user"].update(email="Upper@Example.com"), "data[1].user.email"),
        (lambda body: body.update(event_source="app"), "event_source"),
        (lambda body: body["data"][0]["properties"].update(value="12.5"), "properties.value"),
    ],
)
async def test_tiktok_one_bad_row_fails_the_batch(
    change: Callable[[dict[str, Any]], None], problem: str, session: aiohttp.ClientSession
) -> None:
    async with FakeTikTok() as fake:
        postbacks = TIKTOK.postbacks(2)
        answer = await send(session, with_body(TIKTOK.build(postbacks, fake.base_url), change))
        assert problem in orjson.loads(answer.body)["message"]
        assert verdicts(TIKTOK.classify(answer, postbacks)) == [(Verdict.REJECTED, "tiktok_40002", None)] * 2
        assert fake.delivered == []


@pytest.mark.parametrize("platform", [META, TIKTOK], ids=lambda p: p.kind)
async def test_whole_batch_platforms_refuse_everything_for_one_bad_row(
    platform: Platform, session: aiohttp.ClientSession
) -> None:
    async with platform.make_fake() as fake:
        postbacks = platform.postbacks(3)
        fake.fail_next(1, "partial", rows={1: "bad row"})
        outcomes = platform.classify(await send(session, platform.build(postbacks, fake.base_url)), postbacks)
        assert {o.verdict for o in outcomes} == {Verdict.REJECTED}
        assert fake.delivered == []


async def test_microsoft_partial_errors_and_time_checks(session: aiohttp.ClientSession) -> None:
    now = datetime.now(UTC)
    async with FakeMicrosoftAds(goal_names={"Deposit"}) as fake:
        good = MICROSOFT.postbacks(1)
        future = MICROSOFT.postbacks(1, occurred=now + timedelta(hours=2), start=1)
        expired = MICROSOFT.postbacks(1, occurred=now - timedelta(days=91), start=2)
        scripted = MICROSOFT.postbacks(1, start=3)
        batch = good + future + expired + scripted
        fake.fail_next(1, "partial", rows={3: "OfflineConversionMicrosoftClickIdInvalid"})
        outcomes = MICROSOFT.classify(await send(session, MICROSOFT.build(batch, fake.base_url)), batch)
        assert verdicts(outcomes) == [
            (Verdict.DELIVERED, "http_200", None),
            (Verdict.REJECTED, "FutureConversionTimeCannotBeSet", None),
            (Verdict.REJECTED, "OfflineConversionTimeOutsideWindow", None),
            (Verdict.REJECTED, "OfflineConversionMicrosoftClickIdInvalid", None),
        ]
        assert len(fake.delivered) == 1 and fake.uncounted == []
        # The precheck refuses what the fake refused, before sending.
        checks = [microsoft_ads.precheck(p, now) for p in future + expired]
        assert [(c.verdict, c.reason) for c in checks if c] == [
            (Verdict.REJECTED, "event_in_future"),
            (Verdict.REJECTED, "event_too_old"),
        ]


async def test_microsoft_wrong_goal_name_is_silently_not_counted(session: aiohttp.ClientSession) -> None:
    async with FakeMicrosoftAds(goal_names={"Purchase"}) as fake:
        postbacks = MICROSOFT.postbacks(1)
        outcomes = MICROSOFT.classify(await send(session, MICROSOFT.build(postbacks, fake.base_url)), postbacks)
        assert [o.verdict for o in outcomes] == [Verdict.DELIVERED]
        assert len(fake.uncounted) == 1


async def test_google_login_customer_id_is_checked(session: aiohttp.ClientSession) -> None:
    async with FakeGoogleAds(login_customer_id="9998887777") as fake:
        postbacks = GOOGLE.postbacks(1)
        outcomes = GOOGLE.classify(await send(session, GOOGLE.build(postbacks, fake.base_url)), postbacks)
        assert verdicts(outcomes) == [(Verdict.REJECTED, "USER_PERMISSION_DENIED", None)]
        for postback in postbacks:
            postback["entry"] = {**postback["entry"], "login_customer_id": "999-888-7777"}
        outcomes = GOOGLE.classify(await send(session, GOOGLE.build(postbacks, fake.base_url)), postbacks)
        assert [o.verdict for o in outcomes] == [Verdict.DELIVERED]


OAUTH_FORM = {
    "grant_type": "refresh_token",
    "client_id": "oauth-client-id",
    "client_secret": "oauth-client-secret",
    "refresh_token": "oauth-refresh-token",
}


async def test_oauth_refresh_grants_a_token_the_platform_accepts(session: aiohttp.ClientSession) -> None:
    google = FakeGoogleAds(access_token="expired")
    oauth = FakeOAuthServer(grant_into=[google.tokens], revoke_previous=True)
    async with google, oauth:
        google.tokens.clear()
        postbacks = GOOGLE.postbacks(1)
        stale = GOOGLE.build(postbacks, google.base_url)
        assert verdicts(GOOGLE.classify(await send(session, stale), postbacks)) == [
            (Verdict.RETRY, "auth_expired", None)
        ]
        async with session.post(oauth.token_url, data=OAUTH_FORM) as answer:
            assert answer.status == 200
            grant = await answer.json()
        assert grant["token_type"] == "Bearer" and grant["expires_in"] == 3600
        fresh = google_ads.build_request(
            postbacks,
            base_url=google.base_url,
            access_token=grant["access_token"],
            developer_token=GOOGLE_DEV,
            api_version=DEFAULT_VERSIONS["google_ads"],
        )
        assert [o.verdict for o in GOOGLE.classify(await send(session, fresh), postbacks)] == [Verdict.DELIVERED]
        async with session.post(oauth.token_url, data=OAUTH_FORM) as answer:
            second = (await answer.json())["access_token"]
        assert google.tokens == {second}
        assert oauth.calls == 2 and oauth.issued[-1] == second


@pytest.mark.parametrize(
    ("form", "mode", "status", "error"),
    [
        ({**OAUTH_FORM, "client_secret": "wrong"}, None, 401, "invalid_client"),
        ({**OAUTH_FORM, "refresh_token": "wrong"}, None, 400, "invalid_grant"),
        ({**OAUTH_FORM, "grant_type": "password"}, None, 400, "unsupported_grant_type"),
        (OAUTH_FORM, "invalid_token", 400, "invalid_grant"),
        (OAUTH_FORM, "server_error", 500, "temporarily_unavailable"),
        (OAUTH_FORM, "rate_limit", 429, "temporarily_unavailable"),
    ],
)
async def test_oauth_failures(
    form: dict[str, str], mode: FailureMode | None, status: int, error: str, session: aiohttp.ClientSession
) -> None:
    async with FakeOAuthServer() as oauth:
        if mode is not None:
            oauth.fail_next(1, mode)
        async with session.post(oauth.token_url, data=form) as answer:
            assert answer.status == status
            assert (await answer.json())["error"] == error
        assert oauth.calls == 1 and oauth.issued == []
