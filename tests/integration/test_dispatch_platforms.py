"""Conversions in, worker, `dispatch --kind all`, fake Meta and Google Ads servers on loopback.

The fakes check what the real APIs check (tokens, body shape, batch limits, hashing formats) and
remember each dedup key; secrets reach the dispatcher only through POSTBACK_SECRET_<NAME>.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator

import orjson
import pytest

from devtools.fakes.platforms import FakeGoogleAds, FakeMeta, FakeOAuthServer
from tests import factories as f
from tests.integration.kafka_helpers import Deployment

pytestmark = [pytest.mark.integration, pytest.mark.time_dependent]

OAUTH = {"client_id": "oauth-client-id", "client_secret": "oauth-client-secret", "refresh_token": "oauth-refresh-token"}


@pytest.fixture
async def fakes() -> AsyncIterator[tuple[FakeMeta, FakeGoogleAds, FakeOAuthServer]]:
    meta, google = FakeMeta(), FakeGoogleAds()
    oauth = FakeOAuthServer(grant_into=[google.tokens])
    for server in (meta, google, oauth):
        await server.start()
    try:
        yield meta, google, oauth
    finally:
        for server in (meta, google, oauth):
            await server.stop()


async def test_meta_and_google_postbacks_reach_the_platforms_once_each(
    deployment: Deployment, fakes: tuple[FakeMeta, FakeGoogleAds, FakeOAuthServer]
) -> None:
    meta, google, oauth = fakes
    deployment.extra_env.update(
        META_BASE_URL=meta.base_url,
        GOOGLE_ADS_BASE_URL=google.base_url,
        OAUTH_TOKEN_URL_GOOGLE=oauth.token_url,
        POSTBACK_SECRET_META_MAIN=orjson.dumps({"access_token": "meta-access-token"}).decode(),
        POSTBACK_SECRET_GADS_MAIN=orjson.dumps({"developer_token": "google-developer-token", **OAUTH}).decode(),
        POSTBACK_ALLOW_PRIVATE_TARGETS="1",
        RETRY_BASE_DELAY="100ms",
        RETRY_MAX_DELAY="500ms",
    )
    campaign = f.campaign("camp-1", f.meta_entry("fb"), f.google_entry("gads"))
    await deployment.produce("campaign-rules", [("camp-1", campaign)])
    deployment.start_worker()
    deployment.start_dispatcher("all")
    conversions = [
        (
            f"c{i}",
            f.conversion(f"c{i}", click_ids={"gclid": f"gclid-{i}"}, user={"email": f"user{i}@example.com"}),
        )
        for i in range(30)
    ]
    await deployment.produce("conversions", conversions)
    results = await deployment.wait_for("postbacks.results", lambda r: len(r) >= 60, "60 results", deadline=90)
    postbacks = [r.json() for r in await deployment.read("postbacks.meta")] + [
        r.json() for r in await deployment.read("postbacks.google_ads")
    ]
    ids = {p["postback_id"] for p in postbacks}
    assert Counter(r.json()["result"] for r in results) == Counter(delivered=60)
    assert Counter(meta.delivered) == Counter({p["postback_id"]: 1 for p in postbacks if p["kind"] == "meta"})
    assert Counter(google.delivered) == Counter({p["postback_id"]: 1 for p in postbacks if p["kind"] == "google_ads"})
    assert set(meta.delivered) | set(google.delivered) == ids
    assert oauth.calls == 1, "one OAuth token for every Google request"
