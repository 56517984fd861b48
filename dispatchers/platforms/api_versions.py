"""Which version of each ad platform's API the dispatchers call, and when the platforms turn versions off.

Pure: no I/O and no clock (callers pass `today`). The default versions live here and nowhere else:
the settings (`GOOGLE_ADS_API_VERSION`, `META_GRAPH_API_VERSION`, `TIKTOK_API_VERSION`,
`MICROSOFT_ADS_API_VERSION`) fall back to them and the request builders take the version as an
argument. SUNSETS holds the sunset dates the platforms have published; a version that is not in it
has no known date (not announced yet, or "TBD").

Every default and date below was checked on 2026-11-30 against the source named next to it. When a
platform publishes a new schedule, update SUNSETS (and the README table "Platform API versions");
tests/dispatchers/platforms/test_api_versions.py fails once a default comes within WARNING_DAYS of its sunset.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime

from schemas.kinds import DEFAULT_VERSIONS, PLATFORM_KINDS, VERSION_SETTINGS, normalize_version

__all__ = [
    "DEFAULT_VERSIONS",
    "PLATFORM_KINDS",
    "SUNSETS",
    "VERSION_SETTINGS",
    "WARNING_DAYS",
    "Sunset",
    "days_to_sunset",
    "normalize_version",
    "sunset_notice",
    "sunset_of",
]

# A version this close to its sunset is logged as a WARNING at start-up (and alerted on,
# deploy/prometheus/alerts.yml PostbackPlatformApiVersionSunset).
WARNING_DAYS = 30


@dataclass(frozen=True, slots=True)
class Sunset:
    """The day a platform stops answering a version; `projected`: only the month is published."""

    day: date
    projected: bool = False


def _projected(year: int, month: int) -> Sunset:
    # Month-only schedules: the 1st of the month, so that the warning comes early rather than late.
    return Sunset(date(year, month, 1), projected=True)


SUNSETS: Mapping[str, Mapping[str, Sunset]] = {
    "google_ads": {
        # Exact: the sunset reminders on the Ads Developer Blog (ads-developers.googleblog.com), also
        # listed on developers.google.com/google-ads/api/docs/sunset-dates. Checked 2026-11-30.
        "v19": Sunset(date(2026, 2, 11)),
        "v20": Sunset(date(2026, 6, 10)),
        "v21": Sunset(date(2026, 8, 5)),
        "v22": Sunset(date(2026, 10, 7)),
        # Projected (month only): the 2026 release schedule in the Ads Developer Blog post of 2025-09-04,
        # "More frequent releases coming", and the sunset-dates page. Checked 2026-11-30.
        "v23": _projected(2027, 2),
        "v24": _projected(2027, 5),
        "v25": _projected(2027, 8),
        "v26": _projected(2027, 11),
    },
    "meta": {
        # Marketing API version history, expiration dates
        # (developers.facebook.com/docs/marketing-api/marketing-api-changelog/versions). Checked 2026-11-30.
        # v26.0 (released 2026-07-29) and v27.0 (2026-11-04): expiration TBD, so not listed.
        "v21.0": Sunset(date(2025, 9, 9)),
        "v22.0": Sunset(date(2026, 2, 19)),
        "v23.0": Sunset(date(2026, 6, 9)),
        "v24.0": Sunset(date(2026, 11, 10)),
        "v25.0": Sunset(date(2027, 2, 23)),
    },
    "tiktok": {
        # TikTok API for Business, API versioning: v1.2 ended 2023-08-15 (v1.3 current since 2022-08-15,
        # no end date announced). Checked 2026-11-30.
        "v1.2": Sunset(date(2023, 8, 15)),
    },
    "microsoft_ads": {
        # Microsoft Advertising (Bing Ads) API: v12 sunset 2019-10-31 when v13 (GA April 2019) replaced it;
        # no sunset announced for v13. Checked 2026-11-30.
        "v12": Sunset(date(2019, 10, 31)),
    },
}


def sunset_of(kind: str, version: str) -> Sunset | None:
    """The known sunset of a version (in any accepted spelling), or None when none is published."""
    with contextlib.suppress(ValueError):  # not a valid spelling: looked up as written, so not found
        version = normalize_version(kind, version)
    return SUNSETS.get(kind, {}).get(version)


def days_to_sunset(kind: str, version: str, today: date) -> int | None:
    """Days from `today` to the version's sunset: 0 on the day itself, negative once past; None when unknown.

    A datetime counts by its own calendar date (pass UTC).
    """
    sunset = sunset_of(kind, version)
    if sunset is None:
        return None
    day = today.date() if isinstance(today, datetime) else today
    return (sunset.day - day).days


def sunset_notice(kind: str, version: str, today: date) -> tuple[int, str]:
    """The start-up log line about a version: (logging level, message).

    ERROR from the sunset day on (the platform refuses the requests), WARNING within WARNING_DAYS of it,
    INFO otherwise and when no date is known.
    """
    setting = VERSION_SETTINGS.get(kind, "the version setting")
    label = f"{kind} API {version}"
    sunset = sunset_of(kind, version)
    days = days_to_sunset(kind, version, today)
    if sunset is None or days is None:
        return logging.INFO, f"{label}: no sunset date known"
    when = sunset.day.isoformat() + (" (projected)" if sunset.projected else "")
    if days <= 0:
        ago = "today" if days == 0 else f"{-days} days ago"
        return logging.ERROR, (
            f"{label} reached its sunset on {when}, {ago}: the platform refuses its requests and every "
            f"{kind} postback will fail; set {setting} to a live version"
        )
    if days < WARNING_DAYS:
        return logging.WARNING, (
            f"{label} is sunset on {when}, in {days} days: its requests will fail from then on; "
            f"set {setting} to a newer version"
        )
    return logging.INFO, f"{label}: sunset on {when}, in {days} days"
