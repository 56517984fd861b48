"""Platform API versions: the settings, the sunset table, the builders' URLs, the start-up warning and gauge.

Dates are derived from the table or from the real current date, never written as "today": the guard
test below must start failing on its own the day a default version comes within 30 days of its sunset.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from devtools.fakes.platforms import sample_postback
from dispatchers.core.http import HttpRequest
from dispatchers.dispatcher import check_api_versions
from dispatchers.platforms import google_ads, meta, microsoft_ads, tiktok
from dispatchers.platforms.api_versions import (
    DEFAULT_VERSIONS,
    PLATFORM_KINDS,
    SUNSETS,
    VERSION_SETTINGS,
    WARNING_DAYS,
    Sunset,
    days_to_sunset,
    normalize_version,
    sunset_notice,
)
from service.settings import KINDS, SettingsError, load_settings

KAFKA = {"KAFKA_BOOTSTRAP_SERVERS": "kafka-1:9092"}
GAUGE = "postback_platform_api_days_to_sunset"
OCCURRED = datetime(2026, 11, 20, 8, 30, tzinfo=UTC)


def versions(**env: str) -> dict[str, str]:
    return dict(load_settings({**KAFKA, **env}).platform_api_versions)


def known_sunsets() -> list[tuple[str, str, Sunset]]:
    return [(kind, version, sunset) for kind, table in SUNSETS.items() for version, sunset in table.items()]


# --- settings ------------------------------------------------------------------------------------


def test_every_platform_kind_has_a_default_and_a_setting() -> None:
    assert set(PLATFORM_KINDS) == set(KINDS) - {"s2s"}
    assert set(DEFAULT_VERSIONS) == set(VERSION_SETTINGS) == set(SUNSETS) == set(PLATFORM_KINDS)
    assert versions() == DEFAULT_VERSIONS
    # Each default is already in its one normalised form.
    assert {kind: normalize_version(kind, version) for kind, version in DEFAULT_VERSIONS.items()} == DEFAULT_VERSIONS


@pytest.mark.parametrize(
    ("variable", "raw", "kind", "expected"),
    [
        ("GOOGLE_ADS_API_VERSION", "v26", "google_ads", "v26"),
        ("GOOGLE_ADS_API_VERSION", "26", "google_ads", "v26"),
        ("GOOGLE_ADS_API_VERSION", " V27 ", "google_ads", "v27"),
        ("GOOGLE_ADS_API_VERSION", "v025", "google_ads", "v25"),
        ("GOOGLE_ADS_API_VERSION", "", "google_ads", DEFAULT_VERSIONS["google_ads"]),
        ("META_GRAPH_API_VERSION", "v26.0", "meta", "v26.0"),
        ("META_GRAPH_API_VERSION", "v27.0", "meta", "v27.0"),
        ("META_GRAPH_API_VERSION", " ", "meta", DEFAULT_VERSIONS["meta"]),
        ("TIKTOK_API_VERSION", "v1.3", "tiktok", "v1.3"),
        ("TIKTOK_API_VERSION", "V1.3", "tiktok", "v1.3"),
        ("MICROSOFT_ADS_API_VERSION", "v13", "microsoft_ads", "v13"),
    ],
)
def test_version_settings(variable: str, raw: str, kind: str, expected: str) -> None:
    parsed = versions(**{variable: raw})
    assert parsed[kind] == expected
    assert {k: v for k, v in parsed.items() if k != kind} == {k: v for k, v in DEFAULT_VERSIONS.items() if k != kind}


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("GOOGLE_ADS_API_VERSION", "v26.0"),
        ("GOOGLE_ADS_API_VERSION", "latest"),
        ("GOOGLE_ADS_API_VERSION", "v"),
        ("GOOGLE_ADS_API_VERSION", "v0"),
        ("GOOGLE_ADS_API_VERSION", "-26"),
        ("GOOGLE_ADS_API_VERSION", "26a"),
        ("GOOGLE_ADS_API_VERSION", "v2026"),
        ("META_GRAPH_API_VERSION", "26.0"),
        ("META_GRAPH_API_VERSION", "v26"),
        ("META_GRAPH_API_VERSION", "v26.0.1"),
        ("META_GRAPH_API_VERSION", "v26.x"),
        ("TIKTOK_API_VERSION", "1.3"),
        ("TIKTOK_API_VERSION", "v13"),
        ("TIKTOK_API_VERSION", "v1"),
        ("MICROSOFT_ADS_API_VERSION", "13"),
        ("MICROSOFT_ADS_API_VERSION", "v13.0"),
        ("MICROSOFT_ADS_API_VERSION", "bingads-13"),
    ],
)
def test_bad_version_fails_naming_its_variable(variable: str, raw: str) -> None:
    with pytest.raises(SettingsError) as caught:
        versions(**{variable: raw})
    message = str(caught.value)
    assert message.startswith(f"{variable}=")
    assert "expected an API version such as" in message
    assert not [other for other in VERSION_SETTINGS.values() if other != variable and other in message]


def test_a_sunset_version_is_accepted_by_the_settings() -> None:
    """Refusing it would stop every kind of the dispatcher, S2S included: the start-up check warns instead."""
    assert versions(GOOGLE_ADS_API_VERSION="21")["google_ads"] == "v21"


# --- the sunset table ----------------------------------------------------------------------------


def test_the_table_holds_the_published_dates() -> None:
    """The dates of the brief (checked 2026-11-30); a typo here would move a warning by months."""
    google = {version: (s.day, s.projected) for version, s in SUNSETS["google_ads"].items()}
    assert google == {
        "v19": (date(2026, 2, 11), False),
        "v20": (date(2026, 6, 10), False),
        "v21": (date(2026, 8, 5), False),
        "v22": (date(2026, 10, 7), False),
        "v23": (date(2027, 2, 1), True),
        "v24": (date(2027, 5, 1), True),
        "v25": (date(2027, 8, 1), True),
        "v26": (date(2027, 11, 1), True),
    }
    assert {version: s.day for version, s in SUNSETS["meta"].items()} == {
        "v21.0": date(2025, 9, 9),
        "v22.0": date(2026, 2, 19),
        "v23.0": date(2026, 6, 9),
        "v24.0": date(2026, 11, 10),
        "v25.0": date(2027, 2, 23),
    }
    assert {version: s.day for version, s in SUNSETS["tiktok"].items()} == {"v1.2": date(2023, 8, 15)}
    assert {version: s.day for version, s in SUNSETS["microsoft_ads"].items()} == {"v12": date(2019, 10, 31)}
    for kind, version, _ in known_sunsets():
        assert normalize_version(kind, version) == version, (kind, version)


@pytest.mark.parametrize(("kind", "version", "sunset"), known_sunsets(), ids=lambda v: str(v))
@pytest.mark.parametrize("offset", [45, WARNING_DAYS, 12, 1, 0, -1, -400])
def test_days_to_sunset_counts_from_the_injected_day(kind: str, version: str, sunset: Sunset, offset: int) -> None:
    today = sunset.day - timedelta(days=offset)
    assert days_to_sunset(kind, version, today) == offset
    # A datetime counts by its calendar date, whatever its time of day.
    assert days_to_sunset(kind, version, datetime.combine(today, datetime.max.time(), UTC)) == offset


@pytest.mark.parametrize(
    ("kind", "version"),
    [
        ("meta", "v26.0"),  # expiration TBD
        ("meta", "v27.0"),  # expiration TBD
        ("tiktok", "v1.3"),
        ("microsoft_ads", "v13"),
        ("google_ads", "v27"),  # not released yet: nothing published
        ("s2s", "v1"),
        ("google_ads", "not a version"),
    ],
)
def test_days_to_sunset_is_none_without_a_known_date(kind: str, version: str) -> None:
    today = datetime.now(UTC).date()
    assert days_to_sunset(kind, version, today) is None
    assert sunset_notice(kind, version, today) == (logging.INFO, f"{kind} API {version}: no sunset date known")


def test_any_accepted_spelling_finds_the_date() -> None:
    day = SUNSETS["google_ads"]["v21"].day
    assert days_to_sunset("google_ads", "21", day) == days_to_sunset("google_ads", "v21", day) == 0


def test_default_versions_are_not_within_30_days_of_a_sunset() -> None:
    """The guard: fails (from the real current date) once a default ages; then pick a newer default."""
    today = datetime.now(UTC).date()
    for kind, version in DEFAULT_VERSIONS.items():
        days = days_to_sunset(kind, version, today)
        assert days is None or days >= WARNING_DAYS, (
            f"the default {kind} API version {version} is sunset in {days} days: update DEFAULT_VERSIONS in "
            "dispatchers/platforms/api_versions.py and the README's Platform API versions"
        )


# --- the builders use the configured version ----------------------------------------------------

BUILDERS: dict[str, Callable[[list[dict[str, Any]], str], HttpRequest]] = {
    "google_ads": lambda pbs, version: google_ads.build_request(
        pbs, base_url="https://ads.test", access_token="t", developer_token="d", api_version=version
    ),
    "meta": lambda pbs, version: meta.build_request(
        pbs, base_url="https://graph.test", access_token="t", api_version=version
    ),
    "tiktok": lambda pbs, version: tiktok.build_request(
        pbs, base_url="https://tt.test", access_token="t", api_version=version
    ),
    "microsoft_ads": lambda pbs, version: microsoft_ads.build_request(
        pbs, base_url="https://ms.test", access_token="t", developer_token="d", api_version=version
    ),
}


@pytest.mark.parametrize(
    ("kind", "env", "url"),
    [
        ("google_ads", {}, "https://ads.test/v26/customers/1234567890:uploadClickConversions"),
        (
            "google_ads",
            {"GOOGLE_ADS_API_VERSION": "25"},
            "https://ads.test/v25/customers/1234567890:uploadClickConversions",
        ),
        ("meta", {}, "https://graph.test/v26.0/1122334455/events"),
        ("meta", {"META_GRAPH_API_VERSION": "v27.0"}, "https://graph.test/v27.0/1122334455/events"),
        ("tiktok", {}, "https://tt.test/open_api/v1.3/event/track/"),
        ("tiktok", {"TIKTOK_API_VERSION": "v1.4"}, "https://tt.test/open_api/v1.4/event/track/"),
        ("microsoft_ads", {}, "https://ms.test/CampaignManagement/v13/OfflineConversions/Apply"),
        (
            "microsoft_ads",
            {"MICROSOFT_ADS_API_VERSION": "v14"},
            "https://ms.test/CampaignManagement/v14/OfflineConversions/Apply",
        ),
    ],
)
def test_each_builder_puts_the_configured_version_in_its_url(kind: str, env: dict[str, str], url: str) -> None:
    version = versions(**env)[kind]
    request = BUILDERS[kind]([sample_postback(kind, OCCURRED)], version)
    assert request.url == url


# --- start-up: the log line and the gauge --------------------------------------------------------


class Today:
    """The injected clock: a day that tests move."""

    def __init__(self, day: date) -> None:
        self.day = day

    def __call__(self) -> date:
        return self.day


def gauge(registry: CollectorRegistry, kind: str, version: str) -> float | None:
    return registry.get_sample_value(GAUGE, {"kind": kind, "version": version})


def test_startup_warns_within_30_days_and_exports_the_gauge(caplog: pytest.LogCaptureFixture) -> None:
    sunset = SUNSETS["google_ads"]["v26"]
    today = Today(sunset.day - timedelta(days=12))
    registry = CollectorRegistry()
    run = {"google_ads": "v26", "meta": "v26.0", "tiktok": "v1.3", "microsoft_ads": "v13"}
    with caplog.at_level(logging.INFO, logger="dispatchers.dispatcher"):
        check_api_versions(run, registry, today)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [(r.getMessage(), getattr(r, "kind", None)) for r in warnings] == [
        (
            f"google_ads API v26 is sunset on {sunset.day.isoformat()} (projected), in 12 days: its requests "
            "will fail from then on; set GOOGLE_ADS_API_VERSION to a newer version",
            "google_ads",
        )
    ]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert gauge(registry, "google_ads", "v26") == 12
    # No known date: no sample (not a made-up number), so nothing to alert on.
    for kind in ("meta", "tiktok", "microsoft_ads"):
        assert gauge(registry, kind, run[kind]) is None
    # Computed when scraped: a dispatcher that runs for weeks counts down, past zero.
    today.day = sunset.day + timedelta(days=3)
    assert gauge(registry, "google_ads", "v26") == -3


def test_startup_logs_an_error_for_a_version_past_its_sunset_and_still_starts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sunset = SUNSETS["meta"]["v24.0"]
    registry = CollectorRegistry()
    with caplog.at_level(logging.INFO, logger="dispatchers.dispatcher"):
        check_api_versions({"meta": "v24.0"}, registry, Today(sunset.day + timedelta(days=20)))
    (error,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    message = error.getMessage()
    assert message.startswith(f"meta API v24.0 reached its sunset on {sunset.day.isoformat()}, 20 days ago")
    assert "will fail" in message and "META_GRAPH_API_VERSION" in message
    assert gauge(registry, "meta", "v24.0") == -20


@pytest.mark.parametrize(
    ("offset", "level"),
    [(WARNING_DAYS, logging.INFO), (WARNING_DAYS - 1, logging.WARNING), (1, logging.WARNING), (0, logging.ERROR)],
)
def test_notice_levels_around_the_thresholds(offset: int, level: int) -> None:
    sunset = SUNSETS["google_ads"]["v22"]
    assert sunset_notice("google_ads", "v22", sunset.day - timedelta(days=offset))[0] == level
