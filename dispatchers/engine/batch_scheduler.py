"""Ad-platform delivery (contract §4): the one scheduler of `scheduler_core.py` with a platform's strategy.

For Google Ads, Meta, TikTok and Microsoft Ads. Requests are built and answers classified by the pure
platform modules (`dispatchers/platforms/`, found by kind in `registry.py`); the strategy says which
postbacks share a request and with which credentials. Postbacks are queued per (destination_id,
platform batch_key, credentials name), so every request holds rows the platform accepts together and
one set of credentials serves it; a batch holds up to the platform's MAX_BATCH rows and lingers
`linger_seconds` for batch-mates. Each row is classified on its own: a delivered row is final and
never sent again, a row to retry goes back to its queue alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol, Unpack

from dispatchers.core.http import HttpRequest, HttpResponse, Transport
from dispatchers.core.outcome import Outcome
from dispatchers.engine.oauth import TokenKey
from dispatchers.engine.scheduler_core import Postback, Scheduler, SchedulerOptions
from dispatchers.platforms.api_versions import DEFAULT_VERSIONS
from dispatchers.platforms.registry import Platform, platform

# contract §6 wants a p99 of 50 ms: a short linger still turns a burst into one request instead of hundreds.
DEFAULT_LINGER_SECONDS = 0.05


@dataclass(frozen=True, slots=True)
class RequestCredentials:
    """What one request needs; repr shows no token."""

    access_token: str = field(repr=False)
    developer_token: str | None = field(default=None, repr=False)
    token_key: TokenKey | None = None  # the OAuth cache entry the access token came from

    def secrets(self) -> tuple[str, ...]:
        """Values a response detail must never show."""
        return tuple(value for value in (self.access_token, self.developer_token) if value)


class CredentialsResolver(Protocol):
    """Turns a rule entry's `credentials` secret NAME into the tokens of one request, and knows each
    platform's base URL (dispatchers/adapters/platform_credentials.py, or a stand-in in tests)."""

    def base_url(self, kind: str) -> str: ...

    async def resolve(self, kind: str, secret_name: object) -> RequestCredentials:
        """Raises CredentialsUnavailable (REJECTED or RETRY) when there are none."""
        ...

    def invalidate(self, credentials: RequestCredentials) -> None:
        """The platform refused the access token: the next resolve() fetches a new one."""
        ...


def _secret_name(postback: Postback) -> str:
    entry = postback.get("entry")
    name = entry.get("credentials") if isinstance(entry, dict) else None
    return name if isinstance(name, str) else ""


class PlatformDeliverer:
    """An ad platform's `Deliverer`: its batch key and precheck, its requests with the entry's credentials."""

    def __init__(
        self,
        platform: Platform,
        resolver: CredentialsResolver,
        *,
        timeout_seconds: float,
        api_version: str,
        linger_seconds: float = DEFAULT_LINGER_SECONDS,
    ) -> None:
        if timeout_seconds <= 0 or linger_seconds < 0:
            raise ValueError("timeout_seconds must be positive and linger_seconds not negative")
        self.platform = platform
        self.name = platform.KIND
        self.max_batch = platform.MAX_BATCH
        self.linger = timedelta(seconds=linger_seconds)
        self._resolver = resolver
        self._timeout = timeout_seconds
        self._api_version = api_version  # settings: GOOGLE_ADS_API_VERSION, ...

    def queue_key(self, postback: Postback) -> tuple[str, ...]:
        return (self.platform.batch_key(postback), _secret_name(postback))

    def breaker_scope(self, postback: Postback) -> str:
        return ""  # one breaker per account or pixel (the destination)

    def precheck(self, postback: Postback, now: datetime) -> Outcome | None:
        return self.platform.precheck(postback, now)

    async def credentials(self, postback: Postback) -> RequestCredentials:
        return await self._resolver.resolve(self.name, _secret_name(postback))

    def invalidate(self, credentials: RequestCredentials) -> None:
        self._resolver.invalidate(credentials)

    def build(self, postbacks: Sequence[Postback], credentials: RequestCredentials) -> HttpRequest:
        return self.platform.build_request(
            postbacks,
            base_url=self._resolver.base_url(self.name),
            access_token=credentials.access_token,
            api_version=self._api_version,
            developer_token=credentials.developer_token,
            timeout_seconds=self._timeout,
        )

    def classify(
        self, response: HttpResponse, postbacks: Sequence[Postback], now: datetime, credentials: RequestCredentials
    ) -> list[Outcome]:
        return self.platform.classify_response(response, postbacks, now=now, secrets=credentials.secrets())


class BatchDeliveryScheduler(Scheduler[RequestCredentials]):
    """Delivers matched ad-platform postbacks in batches, with per-row verdicts, retries, limits and a breaker."""

    def __init__(
        self,
        transport: Transport,
        *,
        kind: str,
        timeout_seconds: float,
        credentials: CredentialsResolver,
        api_version: str | None = None,
        linger_seconds: float = DEFAULT_LINGER_SECONDS,
        **options: Unpack[SchedulerOptions],
    ) -> None:
        deliverer = PlatformDeliverer(
            platform(kind),
            credentials,
            timeout_seconds=timeout_seconds,
            api_version=api_version or DEFAULT_VERSIONS[kind],
            linger_seconds=linger_seconds,
        )
        super().__init__(transport, deliverer, **options)
        self.kind = kind
