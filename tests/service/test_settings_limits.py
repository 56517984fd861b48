"""Delivery limits (issue 8, defects 4 and 5): breaker, concurrency and rate settings with a global default and
per-destination overrides (DESTINATION_LIMITS, DESTINATION_LIMITS_FILE), and the dispatchers' back-pressure
bound (DISPATCH_MAX_PENDING, DISPATCH_RESUME_PENDING); a bad value stops the start naming its setting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.settings import DestinationLimits, RateLimitSetting, Settings, SettingsError, load_settings

KAFKA = {"KAFKA_BOOTSTRAP_SERVERS": "kafka-1:9092"}


def settings(**env: str) -> Settings:
    return load_settings({**KAFKA, **env})


def test_defaults() -> None:
    s = settings()
    assert s.destination_defaults == DestinationLimits(
        concurrency=8,
        rate_limit=None,
        breaker_failure_rate=0.7,
        breaker_min_requests=20,
        breaker_open_seconds=30,
        breaker_max_open_seconds=60,
        breaker_probes=5,
    )
    assert s.destination_limits == {}
    assert s.limits_for("s2s:any.example") == s.destination_defaults
    assert (s.dispatch_max_pending, s.dispatch_resume_pending) == (10_000, 5_000)


@pytest.mark.parametrize(
    ("env", "attribute", "expected"),
    [
        pytest.param({"BREAKER_FAILURE_RATE": "50%"}, "breaker_failure_rate", 0.5, id="rate-percent"),
        pytest.param({"BREAKER_FAILURE_RATE": "0.9"}, "breaker_failure_rate", 0.9, id="rate-share"),
        pytest.param({"BREAKER_FAILURE_RATE": "100%"}, "breaker_failure_rate", 1.0, id="rate-all"),
        pytest.param({"BREAKER_MIN_REQUESTS": "5"}, "breaker_min_requests", 5, id="min-requests"),
        pytest.param({"BREAKER_OPEN_SECONDS": "10s"}, "breaker_open_seconds", 10, id="open"),
        pytest.param({"BREAKER_MAX_OPEN_SECONDS": "5m"}, "breaker_max_open_seconds", 300, id="max-open"),
        pytest.param({"BREAKER_OPEN_SECONDS": "2m"}, "breaker_max_open_seconds", 120, id="max-open-follows-open"),
        pytest.param({"BREAKER_OPEN_SECONDS": "250ms"}, "breaker_open_seconds", 0.25, id="open-ms"),
        pytest.param({"BREAKER_PROBES": "1"}, "breaker_probes", 1, id="one-probe"),
        pytest.param({"DISPATCH_MAX_PENDING": "100"}, "dispatch_resume_pending", 50, id="resume-half-of-max"),
        pytest.param(
            {"DISPATCH_MAX_PENDING": "100", "DISPATCH_RESUME_PENDING": "0"}, "dispatch_resume_pending", 0, id="resume-0"
        ),
    ],
)
def test_values(env: dict[str, str], attribute: str, expected: object) -> None:
    assert getattr(settings(**env), attribute) == pytest.approx(expected)


def test_destination_limits_override_the_defaults_per_destination() -> None:
    limits = {
        "Ad.Example.com": {"concurrency": 2, "rate_limit": "5/s:10", "breaker_open_seconds": "5s"},
        "s2s:[2001:db8::1]": {"rate_limit": None},
        "google_ads:123-456-7890": {"breaker_failure_rate": "50%", "breaker_min_requests": 40},
        "meta:731000000000001": {"breaker_max_open_seconds": 20, "breaker_probes": 3},
    }
    s = settings(DESTINATION_LIMITS=json.dumps(limits), DESTINATION_RATE_LIMIT="100/s", BREAKER_OPEN_SECONDS="10s")
    defaults = s.destination_defaults
    # Keys become destination ids as the worker writes them: s2s:<lower-case host>, google_ads:<digits>, ...
    assert set(s.destination_limits) == {
        "s2s:ad.example.com",
        "s2s:2001:db8::1",
        "google_ads:1234567890",
        "meta:731000000000001",
    }
    assert s.limits_for("s2s:ad.example.com") == DestinationLimits(
        concurrency=2,
        rate_limit=RateLimitSetting(5, 10),
        breaker_failure_rate=0.7,
        breaker_min_requests=20,
        breaker_open_seconds=5,
        breaker_max_open_seconds=60,
        breaker_probes=5,
    )
    assert s.limits_for("s2s:2001:db8::1").rate_limit is None  # no limit here, while the default has one
    assert defaults.rate_limit == RateLimitSetting(100, 100)
    google = s.limits_for("google_ads:1234567890")
    assert (google.breaker_failure_rate, google.breaker_min_requests, google.breaker_open_seconds) == (0.5, 40, 10)
    meta = s.limits_for("meta:731000000000001")
    assert (meta.breaker_max_open_seconds, meta.breaker_probes, meta.concurrency) == (20, 3, 8)
    assert s.limits_for("s2s:other.example") == defaults


def test_destination_limits_from_a_mounted_file(tmp_path: Path) -> None:
    path = tmp_path / "limits.json"
    path.write_text(json.dumps({"pb.example": {"concurrency": 1, "breaker_open_seconds": "2m"}}))
    limits = settings(DESTINATION_LIMITS_FILE=str(path)).limits_for("s2s:pb.example")
    assert (limits.concurrency, limits.breaker_open_seconds, limits.breaker_max_open_seconds) == (1, 120, 120)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"BREAKER_FAILURE_RATE": "0"}, r"^BREAKER_FAILURE_RATE='0': must be above 0"),
        ({"BREAKER_FAILURE_RATE": "120%"}, r"^BREAKER_FAILURE_RATE='120%': must be above 0 and at most 1"),
        ({"BREAKER_FAILURE_RATE": "most"}, r"^BREAKER_FAILURE_RATE='most': expected a share"),
        ({"BREAKER_FAILURE_RATE": "nan"}, r"^BREAKER_FAILURE_RATE='nan'"),
        ({"BREAKER_MIN_REQUESTS": "0"}, r"^BREAKER_MIN_REQUESTS=0: must be between 1 and 10000"),
        ({"BREAKER_OPEN_SECONDS": "0s"}, r"^BREAKER_OPEN_SECONDS='0s': must be longer than 0"),
        ({"BREAKER_OPEN_SECONDS": "soon"}, r"^BREAKER_OPEN_SECONDS='soon': expected a duration"),
        (
            {"BREAKER_MAX_OPEN_SECONDS": "10s"},
            r"^BREAKER_MAX_OPEN_SECONDS: .*\(10s\) is shorter than its first",
        ),
        ({"BREAKER_PROBES": "0"}, r"^BREAKER_PROBES=0: must be between 1 and 100"),
        ({"DISPATCH_MAX_PENDING": "0"}, r"^DISPATCH_MAX_PENDING=0: must be between 1"),
        ({"DISPATCH_MAX_PENDING": "lots"}, r"^DISPATCH_MAX_PENDING='lots': expected a whole number"),
        ({"DISPATCH_RESUME_PENDING": "10000"}, r"^DISPATCH_RESUME_PENDING=10000: must be below DISPATCH_MAX_PENDING"),
        ({"DESTINATION_LIMITS": "{"}, r"^DESTINATION_LIMITS: not JSON"),
        ({"DESTINATION_LIMITS": "[]"}, r"^DESTINATION_LIMITS: expected a JSON object"),
        ({"DESTINATION_LIMITS": '{"a.example": 3}'}, r"^DESTINATION_LIMITS\['a.example'\]: expected an object"),
        ({"DESTINATION_LIMITS": '{"a.example:8080": {}}'}, r"^DESTINATION_LIMITS: 'a.example:8080': expected a"),
        ({"DESTINATION_LIMITS": '{"https://a.example/": {}}'}, r"^DESTINATION_LIMITS: 'https://a.example/'"),
        ({"DESTINATION_LIMITS": '{"meta:": {}}'}, r"^DESTINATION_LIMITS: 'meta:': expected a destination id"),
        ({"DESTINATION_LIMITS": '{"a.example": {}, "s2s:A.example": {}}'}, r"names s2s:a.example, already given"),
        (
            {"DESTINATION_LIMITS": '{"a.example": {"concurency": 2}}'},
            r"^DESTINATION_LIMITS\['a.example'\]: unknown field 'concurency'",
        ),
        (
            {"DESTINATION_LIMITS": '{"a.example": {"concurrency": 0}}'},
            r"^DESTINATION_LIMITS\['a.example'\].concurrency=0: must be between 1 and 1000",
        ),
        (
            {"DESTINATION_LIMITS": '{"a.example": {"concurrency": true}}'},
            r"^DESTINATION_LIMITS\['a.example'\].concurrency=True: expected a whole number",
        ),
        (
            {"DESTINATION_LIMITS": '{"a.example": {"rate_limit": "fast"}}'},
            r"^DESTINATION_LIMITS\['a.example'\].rate_limit='fast': expected none or a rate",
        ),
        (
            {"DESTINATION_LIMITS": '{"a.example": {"breaker_failure_rate": 2}}'},
            r"^DESTINATION_LIMITS\['a.example'\].breaker_failure_rate='2': must be above 0 and at most 1",
        ),
        (
            {"DESTINATION_LIMITS": '{"a.example": {"breaker_open_seconds": -1}}'},
            r"^DESTINATION_LIMITS\['a.example'\].breaker_open_seconds=-1: must be longer than 0",
        ),
        (
            {"DESTINATION_LIMITS": '{"a.example": {"breaker_max_open_seconds": "10s"}}'},
            r"^DESTINATION_LIMITS\['a.example'\]: the breaker's longest open interval \(10s\) is shorter",
        ),
        (
            {"DESTINATION_LIMITS": "{}", "DESTINATION_LIMITS_FILE": "/etc/limits.json"},
            r"^DESTINATION_LIMITS and DESTINATION_LIMITS_FILE are both set",
        ),
        (
            {"DESTINATION_LIMITS_FILE": "/nonexistent/limits.json"},
            r"^DESTINATION_LIMITS_FILE=/nonexistent/limits.json: cannot be read",
        ),
    ],
)
def test_bad_values_name_their_setting(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        settings(**env)
