"""The ad platforms by kind: what the delivery engine needs of one (`Platform`), and which module is each.

Every platform module of this package satisfies `Platform` as a module (mypy checks each against it
here), so a call through the registry is as typed as a call to the module itself. The kinds, and
which of them use OAuth, come from `schemas/kinds.py`; a kind without its module fails at import.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Protocol

from dispatchers.core.http import HttpRequest, HttpResponse
from dispatchers.core.outcome import Outcome
from dispatchers.platforms import google_ads, meta, microsoft_ads, tiktok
from dispatchers.platforms.common import Postback
from schemas.kinds import PLATFORM_KINDS


class Platform(Protocol):
    """One ad platform's pure request builder and answer classifier."""

    KIND: str
    MAX_BATCH: int  # rows in one request at most
    USES_OAUTH: bool  # an OAuth access token plus a developer token, else a long-lived access token

    def batch_key(self, postback: Postback) -> str:
        """Postbacks with the same key may share a request (raises for a malformed postback)."""
        ...

    def precheck(self, postback: Postback, now: datetime) -> Outcome | None:
        """An Outcome when the postback must not be sent now (REJECTED, or RETRY later); None to send it."""
        ...

    def build_request(
        self,
        postbacks: Sequence[Postback],
        *,
        base_url: str,
        access_token: str,
        api_version: str,
        developer_token: str | None = None,
        timeout_seconds: float = ...,
    ) -> HttpRequest:
        """One request for postbacks sharing a batch key (raises for a malformed postback)."""
        ...

    def classify_response(
        self,
        response: HttpResponse,
        postbacks: Sequence[Postback],
        *,
        now: datetime | None = None,
        secrets: Iterable[str] = (),
    ) -> list[Outcome]:
        """One Outcome per postback, in request order."""
        ...


_MODULES: tuple[Platform, ...] = (google_ads, meta, tiktok, microsoft_ads)
_BY_KIND = {module.KIND: module for module in _MODULES}
if set(_BY_KIND) != set(PLATFORM_KINDS):
    raise ImportError(f"platform modules {sorted(_BY_KIND)} do not match PLATFORM_KINDS {sorted(PLATFORM_KINDS)}")

PLATFORMS: Mapping[str, Platform] = {kind: _BY_KIND[kind] for kind in PLATFORM_KINDS}


def platform(kind: str) -> Platform:
    """The platform of `kind`; ValueError for a kind that is no ad platform."""
    try:
        return PLATFORMS[kind]
    except KeyError:
        raise ValueError(f"kind must be one of {', '.join(PLATFORMS)}, got {kind!r}") from None
