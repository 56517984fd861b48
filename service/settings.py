"""Configuration: read once from the environment, validated at start-up.

Every setting is an environment variable; README.md lists them all. A bad value stops the process
with a message naming the variable (contract §5).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import phonenumbers

from schemas.kinds import DEFAULT_VERSIONS, KINDS, STATUSES, VERSION_SETTINGS, normalize_version
from schemas.status_maps import DEFAULT_STATUS_MAP, folded, status_map_errors
from service.kafka_connection import (
    SASL_MECHANISMS,
    SECURITY_PROTOCOLS,
    KafkaConnection,
    KafkaSecurity,
    build_ssl_context,
)

__all__ = [
    "KINDS",
    "STATUSES",
    "DestinationLimits",
    "RateLimitSetting",
    "Settings",
    "SettingsError",
    "Topics",
    "load_settings",
]
_DURATION = re.compile(r"^(\d+)(ms|s|m|h|d)?$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
_TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


@dataclass(frozen=True, slots=True)
class RateLimitSetting:
    """DESTINATION_RATE_LIMIT: requests per second to one destination, and the burst allowed above it."""

    rate_per_second: float
    burst: float


@dataclass(frozen=True, slots=True)
class DestinationLimits:
    """What one destination may have: requests in flight, a rate, and its circuit breakers' settings.

    The global settings (DESTINATION_CONCURRENCY, DESTINATION_RATE_LIMIT, BREAKER_*) are the default;
    DESTINATION_LIMITS (or DESTINATION_LIMITS_FILE) overrides any of them for a destination.
    """

    concurrency: int = 8
    rate_limit: RateLimitSetting | None = None
    breaker_failure_rate: float = 0.7  # trip at this share of failures ...
    breaker_min_requests: int = 20  # ... over at least this many recent outcomes
    breaker_open_seconds: float = 30.0  # the first open interval
    breaker_max_open_seconds: float = 60.0  # the cap of the open interval: a recovered one is probed by then
    breaker_probes: int = 5  # probes of a half-open round


class SettingsError(ValueError):
    """A setting with a bad value; the message names the variable."""


def parse_duration(name: str, raw: str) -> float:
    """Seconds from `90d`, `12h`, `30m`, `10s`, `250ms` or a bare number of seconds."""
    match = _DURATION.match(raw.strip())
    if not match:
        raise SettingsError(f"{name}={raw!r}: expected a duration such as 90d, 12h, 30m, 10s, 250ms or seconds")
    return int(match.group(1)) * _DURATION_UNITS[match.group(2)]


def _bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise SettingsError(f"{name}={raw!r}: expected true or false")


def _positive(name: str, raw: str) -> float:
    seconds = parse_duration(name, raw)
    if seconds <= 0:
        raise SettingsError(f"{name}={raw!r}: must be longer than 0")
    return seconds


def _int(name: str, raw: str, minimum: int, maximum: int) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r}: expected a whole number") from None
    if not minimum <= value <= maximum:
        raise SettingsError(f"{name}={value}: must be between {minimum} and {maximum}")
    return value


@dataclass(frozen=True)
class Topics:
    conversions: str
    campaign_rules: str
    offer_sources: str
    postbacks: dict[str, str]  # kind -> topic
    results: str
    dead_letter: str
    evaluations: str
    # Compacted: the non-personal fields of each conversion taken in by the api, so that
    # PATCH /v1/conversions/{id} can publish an update of it (see postback_router/api).
    conversion_index: str = "conversions.index"
    # Clicks (key: click_id), partitioned like `conversions`: what completes a conversion sent without
    # its campaign (streams/click_join.py). Not compacted: its retention should cover the attribution window.
    clicks: str = "clicks"
    prefix: str = ""

    def invalid(self, topic: str) -> str:
        return topic + ".invalid"

    @property
    def compacted(self) -> tuple[str, ...]:
        return (self.campaign_rules, self.offer_sources, self.conversion_index)

    def all(self) -> tuple[str, ...]:
        return (
            self.conversions,
            self.invalid(self.conversions),
            self.campaign_rules,
            self.invalid(self.campaign_rules),
            self.offer_sources,
            self.invalid(self.offer_sources),
            *self.postbacks.values(),
            self.results,
            self.dead_letter,
            self.evaluations,
            self.conversion_index,
            self.clicks,
        )


@dataclass(frozen=True)
class Settings:
    bootstrap_servers: str
    app_id: str
    topics: Topics
    default_status: str = "approved"
    # ISO 3166-1 alpha-2: the region of national-format phone numbers when neither the conversion
    # (`country`) nor its offer source (`default_region`) names one. None: such numbers are not hashed.
    default_phone_region: str | None = None
    max_conversion_bytes: int = 65_536
    fired_state_retention_seconds: int = 90 * 86400
    fired_state_sweep_interval_seconds: float = 3600
    # Conversions without campaign_id (streams/click_join.py): clicks older than the window are not
    # joined (and are swept from the local store); a conversion waits this long for its click.
    click_attribution_window_seconds: int = 30 * 86400
    click_grace_period_seconds: float = 600.0
    state_store: str = "rocksdb://"
    state_dir: str = "var/state"
    auto_create_topics: bool = True
    topic_partitions: int = 8
    topic_replication_factor: int | None = None  # None: min(3, brokers in the cluster)
    # One record per evaluated conversion version on `conversions.evaluated` (the api's trace index
    # reads it); kept for evaluations_retention_seconds, the trace index for trace_retention_seconds.
    emit_evaluations: bool = True
    evaluations_retention_seconds: int = 30 * 86400
    trace_retention_seconds: int = 30 * 86400
    trace_sweep_interval_seconds: float = 3600
    batch_max_size: int = 1000
    session_timeout_seconds: float = 30.0
    heartbeat_interval_seconds: float = 3.0
    # /healthz fails when a batch loop has had work this long without completing a batch (ops_http.Liveness).
    stall_timeout_seconds: float = 300.0
    log_level: str = "INFO"
    kafka_log_level: str = "WARNING"
    allow_private_targets: bool = False
    delivery_timeout_seconds: float = 10.0
    delivery_max_age_seconds: float = 24 * 3600
    retry_base_delay_seconds: float = 1.0
    retry_max_delay_seconds: float = 2 * 3600
    destination_concurrency: int = 8
    destination_rate_limit: RateLimitSetting | None = None
    # Circuit breakers (BREAKER_*), and per-destination overrides of them and of the two limits above
    # (DESTINATION_LIMITS): destination_id -> its limits, the defaults already merged in.
    breaker_failure_rate: float = 0.7
    breaker_min_requests: int = 20
    breaker_open_seconds: float = 30.0
    breaker_max_open_seconds: float = 60.0
    breaker_probes: int = 5
    destination_limits: Mapping[str, DestinationLimits] = field(default_factory=dict)
    # Back-pressure: a dispatcher stops fetching its partitions once this many postbacks it took are not
    # final, and fetches again once they are down to dispatch_resume_pending.
    dispatch_max_pending: int = 10_000
    dispatch_resume_pending: int = 5_000
    # PlatformCredentials keyword -> URL, only for those set (tests and proxies; the defaults are the platforms')
    platform_urls: Mapping[str, str] = field(default_factory=dict)
    # kind -> API version the dispatchers call (GOOGLE_ADS_API_VERSION, ...; dispatchers/platforms/api_versions.py)
    platform_api_versions: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_VERSIONS))
    # The HTTP server of every process (/metrics, /healthz, /readyz; the api's routes too). Port 0: none.
    http_host: str = "0.0.0.0"
    http_port: int = 8080
    log_format: str = "json"
    # `postback-router api` only. Secrets: kept out of repr() so that they never reach a log line.
    api_token: str | None = field(default=None, repr=False)
    intake_secret: str | None = field(default=None, repr=False)
    api_max_body_bytes: int = 1_048_576
    # Intake: status text -> status (folded keys, schemas/status_maps.py), after an offer source's status_map.
    intake_status_map: Mapping[str, str] = field(default_factory=lambda: folded(DEFAULT_STATUS_MAP))
    extra: Mapping[str, str] = field(default_factory=dict)
    # KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_*, KAFKA_SSL_*: its passwords are kept out of its repr().
    kafka_security: KafkaSecurity = field(default_factory=KafkaSecurity)

    @cached_property
    def kafka(self) -> KafkaConnection:
        """How every Kafka client of the process reaches the cluster (one TLS context shared by all)."""
        return KafkaConnection(self.bootstrap_servers, self.kafka_security)

    @property
    def destination_defaults(self) -> DestinationLimits:
        """The limits of a destination DESTINATION_LIMITS does not name."""
        return DestinationLimits(
            concurrency=self.destination_concurrency,
            rate_limit=self.destination_rate_limit,
            breaker_failure_rate=self.breaker_failure_rate,
            breaker_min_requests=self.breaker_min_requests,
            breaker_open_seconds=self.breaker_open_seconds,
            breaker_max_open_seconds=self.breaker_max_open_seconds,
            breaker_probes=self.breaker_probes,
        )

    def limits_for(self, destination_id: str) -> DestinationLimits:
        return self.destination_limits.get(destination_id) or self.destination_defaults

    def delivery_state_changelog(self, kind: str) -> str:
        """The compacted changelog of a dispatcher's delivery state: one partition per postbacks partition."""
        return f"{self.topics.prefix}{self.app_id}-dispatch-{kind}-state"

    @property
    def awaiting_click_changelog(self) -> str:
        """The compacted changelog of the conversions waiting for their click: one partition per conversions
        partition (streams/click_join.py)."""
        return f"{self.topics.prefix}{self.app_id}-awaiting-click-changelog"

    @property
    def fired_state_changelog(self) -> str:
        """The compacted changelog of the fired-state: one partition per conversions partition."""
        return f"{self.topics.prefix}{self.app_id}-fired-state-changelog"


def _rate(name: str, raw: str) -> RateLimitSetting | None:
    """`none`, or `<rate>/s` with an optional burst: `50/s`, `50/s:100`."""
    value = raw.strip().lower()
    if value in ("", "none", "off"):
        return None
    match = re.match(r"^(\d+(?:\.\d+)?)/s(?::(\d+))?$", value)
    if not match:
        raise SettingsError(f"{name}={raw!r}: expected none or a rate such as 50/s or 50/s:100 (burst)")
    rate = float(match.group(1))
    if rate <= 0:
        raise SettingsError(f"{name}={raw!r}: the rate must be above 0")
    return RateLimitSetting(rate, float(match.group(2) or max(1.0, rate)))


PLATFORM_URL_SETTINGS = {
    "GOOGLE_ADS_BASE_URL": "google_ads_base_url",
    "META_BASE_URL": "meta_base_url",
    "TIKTOK_BASE_URL": "tiktok_base_url",
    "MICROSOFT_ADS_BASE_URL": "microsoft_ads_base_url",
    "OAUTH_TOKEN_URL_GOOGLE": "oauth_token_url_google",
    "OAUTH_TOKEN_URL_MICROSOFT": "oauth_token_url_microsoft",
}


def _platform_urls(env: Mapping[str, str]) -> dict[str, str]:
    urls: dict[str, str] = {}
    for name, keyword in PLATFORM_URL_SETTINGS.items():
        value = env.get(name, "").strip()
        if value:
            if not re.match(r"^https?://[^\s/]+", value):
                raise SettingsError(f"{name}={value!r}: expected an http(s) URL")
            urls[keyword] = value.rstrip("/")
    return urls


def _platform_api_versions(env: Mapping[str, str]) -> dict[str, str]:
    """kind -> API version, in its one normalised form (`26` -> `v26`); unset or empty: the default."""
    versions: dict[str, str] = {}
    for kind, name in VERSION_SETTINGS.items():
        raw = env.get(name, "").strip()
        try:
            versions[kind] = normalize_version(kind, raw) if raw else DEFAULT_VERSIONS[kind]
        except ValueError as exc:
            raise SettingsError(f"{name}={raw!r}: {exc}") from None
    return versions


def _topic(env: Mapping[str, str], prefix: str, name: str, default: str) -> str:
    value = prefix + env.get(name, default)
    if not _TOPIC_NAME.match(value):
        raise SettingsError(f"{name}={value!r}: a topic name is 1-249 of A-Z a-z 0-9 . _ -")
    return value


def load_settings(env: Mapping[str, str] | None = None, *, require_kafka: bool = True) -> Settings:
    """Settings from `env` (default: os.environ); raises SettingsError naming the bad variable."""
    env = os.environ if env is None else env
    bootstrap = env.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if require_kafka and not bootstrap:
        raise SettingsError(
            "KAFKA_BOOTSTRAP_SERVERS is not set: give the Kafka cluster as host:port[,host:port], "
            "or start a development broker with `postback-router broker`"
        )
    prefix = env.get("TOPIC_PREFIX", "")
    if prefix and not _TOPIC_NAME.match(prefix):
        raise SettingsError(f"TOPIC_PREFIX={prefix!r}: a topic prefix is made of A-Z a-z 0-9 . _ -")
    postbacks_prefix = env.get("TOPIC_POSTBACKS_PREFIX", "postbacks")
    topics = Topics(
        conversions=_topic(env, prefix, "TOPIC_CONVERSIONS", "conversions"),
        campaign_rules=_topic(env, prefix, "TOPIC_CAMPAIGN_RULES", "campaign-rules"),
        offer_sources=_topic(env, prefix, "TOPIC_OFFER_SOURCES", "offer-sources"),
        postbacks={kind: _topic({}, prefix, "TOPIC_POSTBACKS_PREFIX", f"{postbacks_prefix}.{kind}") for kind in KINDS},
        results=_topic(env, prefix, "TOPIC_RESULTS", f"{postbacks_prefix}.results"),
        dead_letter=_topic(env, prefix, "TOPIC_DEAD_LETTER", f"{postbacks_prefix}.dead-letter"),
        evaluations=_topic(env, prefix, "TOPIC_EVALUATIONS", "conversions.evaluated"),
        conversion_index=_topic(env, prefix, "TOPIC_CONVERSION_INDEX", "conversions.index"),
        clicks=_topic(env, prefix, "TOPIC_CLICKS", "clicks"),
        prefix=prefix,
    )
    default_status = env.get("DEFAULT_STATUS", "approved")
    if default_status not in STATUSES:
        raise SettingsError(f"DEFAULT_STATUS={default_status!r}: must be one of {', '.join(STATUSES)}")
    phone_region_raw = env.get("DEFAULT_PHONE_REGION", "")
    default_phone_region = phone_region_raw.strip().upper() or None
    if default_phone_region is not None and not (
        re.fullmatch(r"[A-Z]{2}", default_phone_region) and default_phone_region in phonenumbers.SUPPORTED_REGIONS
    ):
        raise SettingsError(
            f"DEFAULT_PHONE_REGION={phone_region_raw!r}: expected an ISO 3166-1 alpha-2 country code "
            "with a phone numbering plan, such as GB or US (UK is GB), or unset"
        )
    state_store = env.get("STATE_STORE", "rocksdb://")
    if state_store not in ("rocksdb://", "memory://"):
        raise SettingsError(f"STATE_STORE={state_store!r}: must be rocksdb:// (production) or memory:// (tests)")
    replication_raw = env.get("TOPIC_REPLICATION_FACTOR", "auto")
    replication = None if replication_raw == "auto" else _int("TOPIC_REPLICATION_FACTOR", replication_raw, 1, 10)
    log_level = env.get("LOG_LEVEL", "INFO").upper()
    if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise SettingsError(f"LOG_LEVEL={log_level!r}: must be DEBUG, INFO, WARNING or ERROR")
    kafka_log_level = env.get("KAFKA_LOG_LEVEL", "WARNING").upper()
    if kafka_log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise SettingsError(f"KAFKA_LOG_LEVEL={kafka_log_level!r}: must be DEBUG, INFO, WARNING or ERROR")
    session_timeout = parse_duration("KAFKA_SESSION_TIMEOUT", env.get("KAFKA_SESSION_TIMEOUT", "30s"))
    heartbeat = parse_duration("KAFKA_HEARTBEAT_INTERVAL", env.get("KAFKA_HEARTBEAT_INTERVAL", "3s"))
    if heartbeat * 3 > session_timeout:
        raise SettingsError("KAFKA_HEARTBEAT_INTERVAL must be at most a third of KAFKA_SESSION_TIMEOUT")
    # Fired-state younger than the retention is what makes a re-delivery fire nothing (contract §2.5);
    # a retention under a second would forget every postback at once, a zero sweep interval spin.
    retention_raw = env.get("FIRED_STATE_RETENTION", "90d")
    retention = int(parse_duration("FIRED_STATE_RETENTION", retention_raw))
    if retention < 1:
        raise SettingsError(f"FIRED_STATE_RETENTION={retention_raw!r}: must be at least 1s")
    sweep_raw = env.get("FIRED_STATE_SWEEP_INTERVAL", "1h")
    sweep_interval = parse_duration("FIRED_STATE_SWEEP_INTERVAL", sweep_raw)
    if sweep_interval <= 0:
        raise SettingsError(f"FIRED_STATE_SWEEP_INTERVAL={sweep_raw!r}: must be more than 0")
    log_format = env.get("LOG_FORMAT", "json").strip().lower()
    if log_format not in ("json", "text"):
        raise SettingsError(f"LOG_FORMAT={log_format!r}: must be json (production) or text (a terminal)")
    limits = _default_limits(env)
    max_pending, resume_pending = _back_pressure(env)
    return Settings(
        bootstrap_servers=bootstrap,
        app_id=env.get("APP_ID", "postback-router"),
        topics=topics,
        default_status=default_status,
        default_phone_region=default_phone_region,
        max_conversion_bytes=_int("MAX_CONVERSION_BYTES", env.get("MAX_CONVERSION_BYTES", "65536"), 256, 16_777_216),
        fired_state_retention_seconds=retention,
        fired_state_sweep_interval_seconds=sweep_interval,
        click_attribution_window_seconds=max(
            1, int(_positive("CLICK_ATTRIBUTION_WINDOW", env.get("CLICK_ATTRIBUTION_WINDOW", "30d")))
        ),
        click_grace_period_seconds=_positive("CLICK_GRACE_PERIOD", env.get("CLICK_GRACE_PERIOD", "10m")),
        state_store=state_store,
        state_dir=env.get("STATE_DIR", "var/state"),
        auto_create_topics=_bool("AUTO_CREATE_TOPICS", env.get("AUTO_CREATE_TOPICS", "true")),
        topic_partitions=_int("TOPIC_PARTITIONS", env.get("TOPIC_PARTITIONS", "8"), 1, 10_000),
        topic_replication_factor=replication,
        emit_evaluations=_bool("EMIT_EVALUATIONS", env.get("EMIT_EVALUATIONS", "true")),
        evaluations_retention_seconds=max(
            1, int(_positive("EVALUATIONS_RETENTION", env.get("EVALUATIONS_RETENTION", "30d")))
        ),
        trace_retention_seconds=max(1, int(_positive("TRACE_RETENTION", env.get("TRACE_RETENTION", "30d")))),
        trace_sweep_interval_seconds=_positive("TRACE_SWEEP_INTERVAL", env.get("TRACE_SWEEP_INTERVAL", "1h")),
        batch_max_size=_int("BATCH_MAX_SIZE", env.get("BATCH_MAX_SIZE", "1000"), 1, 100_000),
        session_timeout_seconds=session_timeout,
        heartbeat_interval_seconds=heartbeat,
        stall_timeout_seconds=_positive("STALL_TIMEOUT", env.get("STALL_TIMEOUT", "5m")),
        log_level=log_level,
        kafka_log_level=kafka_log_level,
        allow_private_targets=_bool("POSTBACK_ALLOW_PRIVATE_TARGETS", env.get("POSTBACK_ALLOW_PRIVATE_TARGETS", "0")),
        delivery_timeout_seconds=_positive("DELIVERY_TIMEOUT", env.get("DELIVERY_TIMEOUT", "10s")),
        delivery_max_age_seconds=_positive("DELIVERY_MAX_AGE", env.get("DELIVERY_MAX_AGE", "24h")),
        retry_base_delay_seconds=_positive("RETRY_BASE_DELAY", env.get("RETRY_BASE_DELAY", "1s")),
        retry_max_delay_seconds=_positive("RETRY_MAX_DELAY", env.get("RETRY_MAX_DELAY", "2h")),
        destination_concurrency=limits.concurrency,
        destination_rate_limit=limits.rate_limit,
        breaker_failure_rate=limits.breaker_failure_rate,
        breaker_min_requests=limits.breaker_min_requests,
        breaker_open_seconds=limits.breaker_open_seconds,
        breaker_max_open_seconds=limits.breaker_max_open_seconds,
        breaker_probes=limits.breaker_probes,
        destination_limits=_destination_limits(env, limits),
        dispatch_max_pending=max_pending,
        dispatch_resume_pending=resume_pending,
        platform_urls=_platform_urls(env),
        platform_api_versions=_platform_api_versions(env),
        http_host=env.get("HTTP_HOST", "0.0.0.0").strip() or "0.0.0.0",
        http_port=_int("HTTP_PORT", env.get("HTTP_PORT", "8080"), 0, 65535),
        log_format=log_format,
        api_token=_secret("API_TOKEN", env.get("API_TOKEN", "")),
        intake_secret=_secret("INTAKE_SECRET", env.get("INTAKE_SECRET", "")),
        api_max_body_bytes=_int("API_MAX_BODY_BYTES", env.get("API_MAX_BODY_BYTES", "1048576"), 1024, 67_108_864),
        intake_status_map=_intake_status_map(env.get("INTAKE_STATUS_MAP", "")),
        kafka_security=_kafka_security(env),
    )


def _intake_status_map(raw: str) -> dict[str, str]:
    """INTAKE_STATUS_MAP: a JSON object that replaces the default status map of intake (so that an
    entry can be removed too); unset or empty, the default (schemas/status_maps.py)."""
    if not raw.strip():
        return folded(DEFAULT_STATUS_MAP)
    try:
        document = json.loads(raw)
    except ValueError:
        raise SettingsError('INTAKE_STATUS_MAP is not JSON: give an object such as {"sale": "approved"}') from None
    errors = status_map_errors(document, "INTAKE_STATUS_MAP")
    if errors:
        raise SettingsError("; ".join(f"{e.field}: {e.message}" for e in errors[:5]))
    return folded(document)


def _secret(name: str, raw: str) -> str | None:
    """A shared secret, or None when unset; too short a one is refused (the message never shows it)."""
    value = raw.strip()
    if not value:
        return None
    if len(value) < 16:
        raise SettingsError(f"{name} is too short: use at least 16 characters (e.g. `openssl rand -hex 32`)")
    return value


# --- delivery limits: DESTINATION_CONCURRENCY, DESTINATION_RATE_LIMIT, BREAKER_*, DESTINATION_LIMITS, DISPATCH_* ---

_LIMIT_FIELDS = (
    "concurrency",
    "rate_limit",
    "breaker_failure_rate",
    "breaker_min_requests",
    "breaker_open_seconds",
    "breaker_max_open_seconds",
    "breaker_probes",
)
# A bare S2S host (a DNS name, a dotted quad, an IPv6 address in brackets), without a port.
_BARE_HOST = re.compile(r"^(?:[a-z0-9_](?:[a-z0-9_.-]*[a-z0-9_])?|\[[0-9a-f:.]+\])$")
_DESTINATION_FORMS = (
    "expected a destination id (s2s:<host>, google_ads:<customer id>, meta:<pixel id>, tiktok:<pixel code>, "
    "microsoft_ads:<account id>) or an S2S host, without a port"
)


def _fraction(name: str, raw: str) -> float:
    """A share in (0, 1]: `0.7` or `70%`."""
    value = raw.strip()
    try:
        number = float(value[:-1]) / 100 if value.endswith("%") else float(value)
    except ValueError:
        raise SettingsError(f"{name}={raw!r}: expected a share such as 0.7 or 70%") from None
    if not (math.isfinite(number) and 0 < number <= 1):
        raise SettingsError(f"{name}={raw!r}: must be above 0 and at most 1 (100%)")
    return number


def _checked_limits(name: str, limits: DestinationLimits) -> DestinationLimits:
    if limits.breaker_max_open_seconds < limits.breaker_open_seconds:
        raise SettingsError(
            f"{name}: the breaker's longest open interval ({limits.breaker_max_open_seconds:g}s) is shorter "
            f"than its first ({limits.breaker_open_seconds:g}s)"
        )
    return limits


def _default_limits(env: Mapping[str, str]) -> DestinationLimits:
    """The global limits; BREAKER_MAX_OPEN_SECONDS unset is 60s, or BREAKER_OPEN_SECONDS if that is longer."""
    open_seconds = _positive("BREAKER_OPEN_SECONDS", env.get("BREAKER_OPEN_SECONDS", "30s"))
    max_open_raw = env.get("BREAKER_MAX_OPEN_SECONDS", "").strip()
    max_open_seconds = _positive("BREAKER_MAX_OPEN_SECONDS", max_open_raw) if max_open_raw else max(60.0, open_seconds)
    return _checked_limits(
        "BREAKER_MAX_OPEN_SECONDS",
        DestinationLimits(
            concurrency=_int("DESTINATION_CONCURRENCY", env.get("DESTINATION_CONCURRENCY", "8"), 1, 1000),
            rate_limit=_rate("DESTINATION_RATE_LIMIT", env.get("DESTINATION_RATE_LIMIT", "none")),
            breaker_failure_rate=_fraction("BREAKER_FAILURE_RATE", env.get("BREAKER_FAILURE_RATE", "70%")),
            breaker_min_requests=_int("BREAKER_MIN_REQUESTS", env.get("BREAKER_MIN_REQUESTS", "20"), 1, 10_000),
            breaker_open_seconds=open_seconds,
            breaker_max_open_seconds=max_open_seconds,
            breaker_probes=_int("BREAKER_PROBES", env.get("BREAKER_PROBES", "5"), 1, 100),
        ),
    )


def _destination_key(name: str, key: object) -> str:
    """The destination_id a DESTINATION_LIMITS key names, as the worker writes it (streams/core/rules.py)."""
    if not isinstance(key, str) or not key.strip():
        raise SettingsError(f"{name}: {key!r}: {_DESTINATION_FORMS}")
    kind, colon, rest = key.strip().partition(":")
    if colon and kind in KINDS and kind != "s2s":
        ident = rest.strip().replace("-", "") if kind == "google_ads" else rest.strip()
        if not ident or any(char.isspace() for char in ident):
            raise SettingsError(f"{name}: {key!r}: {_DESTINATION_FORMS}")
        return f"{kind}:{ident}"
    host = (rest if colon and kind == "s2s" else key).strip().lower()
    if not _BARE_HOST.match(host):
        raise SettingsError(f"{name}: {key!r}: {_DESTINATION_FORMS}")
    return "s2s:" + host.strip("[]")


def _json_int(name: str, value: object, minimum: int, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise SettingsError(f"{name}={value!r}: expected a whole number")
    return _int(name, str(value), minimum, maximum)


def _json_seconds(name: str, value: object) -> float:
    """A duration: `10s`, `2m`, ... or a JSON number of seconds; longer than 0."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise SettingsError(f"{name}={value!r}: expected a duration such as 10s or 2m, or a number of seconds")
    seconds = float(value) if not isinstance(value, str) else parse_duration(name, value)
    if not (math.isfinite(seconds) and seconds > 0):
        raise SettingsError(f"{name}={value!r}: must be longer than 0")
    return seconds


def _limit_override(name: str, raw: object, defaults: DestinationLimits) -> DestinationLimits:
    if not isinstance(raw, dict):
        raise SettingsError(f"{name}: expected an object with some of {', '.join(_LIMIT_FIELDS)}")
    unknown = sorted(set(raw) - set(_LIMIT_FIELDS))
    if unknown:
        raise SettingsError(f"{name}: unknown field {unknown[0]!r}; known: {', '.join(_LIMIT_FIELDS)}")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        field_name = f"{name}.{key}"
        if key == "concurrency":
            values[key] = _json_int(field_name, value, 1, 1000)
        elif key == "rate_limit":
            if value is not None and not isinstance(value, str):
                raise SettingsError(f"{field_name}={value!r}: expected none or a rate such as 50/s or 50/s:100")
            values[key] = _rate(field_name, value or "none")
        elif key == "breaker_failure_rate":
            if isinstance(value, bool) or not isinstance(value, int | float | str):
                raise SettingsError(f"{field_name}={value!r}: expected a share such as 0.7 or 70%")
            values[key] = _fraction(field_name, str(value))
        elif key == "breaker_min_requests":
            values[key] = _json_int(field_name, value, 1, 10_000)
        elif key == "breaker_probes":
            values[key] = _json_int(field_name, value, 1, 100)
        else:
            values[key] = _json_seconds(field_name, value)
    if "breaker_open_seconds" in values and "breaker_max_open_seconds" not in values:
        values["breaker_max_open_seconds"] = max(values["breaker_open_seconds"], defaults.breaker_max_open_seconds)
    return _checked_limits(name, dataclasses.replace(defaults, **values))


def _destination_limits(env: Mapping[str, str], defaults: DestinationLimits) -> dict[str, DestinationLimits]:
    """DESTINATION_LIMITS (JSON) or DESTINATION_LIMITS_FILE (a JSON file, e.g. a mounted ConfigMap):
    destination id or S2S host -> {concurrency, rate_limit, breaker_*}; what it leaves out is the default."""
    inline = env.get("DESTINATION_LIMITS", "").strip()
    path = env.get("DESTINATION_LIMITS_FILE", "").strip()
    if inline and path:
        raise SettingsError("DESTINATION_LIMITS and DESTINATION_LIMITS_FILE are both set: use one of them")
    if not inline and not path:
        return {}
    name = "DESTINATION_LIMITS" if inline else f"DESTINATION_LIMITS_FILE={path}"
    if path:
        try:
            with open(path, encoding="utf-8") as file:
                inline = file.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise SettingsError(f"{name}: cannot be read ({exc.__class__.__name__}: {exc})") from None
    try:
        document = json.loads(inline)
    except ValueError as exc:
        raise SettingsError(f"{name}: not JSON ({exc})") from None
    if not isinstance(document, dict):
        raise SettingsError(f"{name}: expected a JSON object of destination -> limits")
    limits: dict[str, DestinationLimits] = {}
    for key, raw in document.items():
        destination_id = _destination_key(name, key)
        if destination_id in limits:
            raise SettingsError(f"{name}: {key!r} names {destination_id}, already given")
        limits[destination_id] = _limit_override(f"{name}[{key!r}]", raw, defaults)
    return limits


def _back_pressure(env: Mapping[str, str]) -> tuple[int, int]:
    """DISPATCH_MAX_PENDING, and DISPATCH_RESUME_PENDING below it (default: half of it)."""
    max_pending = _int("DISPATCH_MAX_PENDING", env.get("DISPATCH_MAX_PENDING", "10000"), 1, 10_000_000)
    raw = env.get("DISPATCH_RESUME_PENDING", "").strip()
    if not raw:
        return max_pending, max_pending // 2
    resume = _int("DISPATCH_RESUME_PENDING", raw, 0, 10_000_000)
    if resume >= max_pending:
        raise SettingsError(f"DISPATCH_RESUME_PENDING={resume}: must be below DISPATCH_MAX_PENDING ({max_pending})")
    return max_pending, resume


# --- Kafka security: KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_*, KAFKA_SSL_* (docs/kafka-security.md) ---

_SASL_SETTINGS = ("KAFKA_SASL_MECHANISM", "KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD", "KAFKA_SASL_PASSWORD_FILE")
_SSL_SETTINGS = (
    "KAFKA_SSL_CAFILE",
    "KAFKA_SSL_CERTFILE",
    "KAFKA_SSL_KEYFILE",
    "KAFKA_SSL_KEY_PASSWORD",
    "KAFKA_SSL_KEY_PASSWORD_FILE",
    "KAFKA_SSL_CHECK_HOSTNAME",
)


def _secret_value(env: Mapping[str, str], name: str) -> str | None:
    """`<name>` or the content of the file `<name>_FILE` (a mounted Secret), never both; None when neither.

    One trailing line break of the file is dropped (`echo secret > file` adds one). No message shows the
    value, only the variable and the file's path.
    """
    inline = env.get(name, "")
    path = env.get(f"{name}_FILE", "").strip()
    if inline and path:
        raise SettingsError(f"{name} and {name}_FILE are both set: use one of them")
    if not path:
        return inline or None
    try:
        with open(path, encoding="utf-8") as file:
            value = file.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"{name}_FILE={path}: cannot be read ({exc.__class__.__name__})") from None
    value = value.removesuffix("\n").removesuffix("\r")
    if not value:
        raise SettingsError(f"{name}_FILE={path}: the file is empty")
    return value


def _readable_file(env: Mapping[str, str], name: str) -> str | None:
    path = env.get(name, "").strip()
    if not path:
        return None
    if not os.path.isfile(path) or not os.access(path, os.R_OK):
        raise SettingsError(f"{name}={path}: no such readable file (a mounted Secret or ConfigMap?)")
    return path


def _kafka_security(env: Mapping[str, str]) -> KafkaSecurity:
    """How the clients authenticate and encrypt; a setting the protocol would ignore is refused, not ignored."""
    protocol = env.get("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT").strip().upper() or "PLAINTEXT"
    if protocol not in SECURITY_PROTOCOLS:
        raise SettingsError(f"KAFKA_SECURITY_PROTOCOL={protocol!r}: must be one of {', '.join(SECURITY_PROTOCOLS)}")
    uses_sasl = protocol in ("SASL_PLAINTEXT", "SASL_SSL")
    uses_ssl = protocol in ("SSL", "SASL_SSL")
    for group, used, what, protocols in (
        (_SASL_SETTINGS, uses_sasl, "SASL", "SASL_SSL or SASL_PLAINTEXT"),
        (_SSL_SETTINGS, uses_ssl, "TLS", "SSL or SASL_SSL"),
    ):
        stray = [name for name in group if env.get(name, "").strip()]
        if stray and not used:
            raise SettingsError(
                f"{stray[0]} is set but KAFKA_SECURITY_PROTOCOL={protocol} does not use {what}: "
                f"set KAFKA_SECURITY_PROTOCOL to {protocols}, or unset {stray[0]}"
            )
    security = KafkaSecurity(protocol=protocol)
    if uses_sasl:
        security = dataclasses.replace(security, **_sasl(env, protocol))
    if uses_ssl:
        security = dataclasses.replace(security, **_ssl(env))
        try:
            build_ssl_context(security)  # refuse unusable files at start-up, not at the first connection
        except ValueError as exc:
            raise SettingsError(str(exc)) from None
    return security


def _sasl(env: Mapping[str, str], protocol: str) -> dict[str, Any]:
    mechanism = env.get("KAFKA_SASL_MECHANISM", "").strip().upper()
    if mechanism == "OAUTHBEARER":
        raise SettingsError(
            "KAFKA_SASL_MECHANISM=OAUTHBEARER is not supported: the Kafka client (aiokafka) needs a token "
            "provider written for your identity provider (MSK IAM, Confluent OAuth), which this service does "
            f"not ship; use one of {', '.join(SASL_MECHANISMS)}"
        )
    if mechanism not in SASL_MECHANISMS:
        raise SettingsError(
            f"KAFKA_SASL_MECHANISM={mechanism!r}: KAFKA_SECURITY_PROTOCOL={protocol} needs one of "
            f"{', '.join(SASL_MECHANISMS)}"
        )
    username = env.get("KAFKA_SASL_USERNAME", "").strip()
    if not username:
        raise SettingsError(f"KAFKA_SASL_USERNAME is not set: KAFKA_SECURITY_PROTOCOL={protocol} needs it")
    password = _secret_value(env, "KAFKA_SASL_PASSWORD")
    if password is None:
        raise SettingsError(
            f"KAFKA_SASL_PASSWORD (or KAFKA_SASL_PASSWORD_FILE) is not set: KAFKA_SECURITY_PROTOCOL={protocol} needs it"
        )
    return {"sasl_mechanism": mechanism, "sasl_username": username, "sasl_password": password}


def _ssl(env: Mapping[str, str]) -> dict[str, Any]:
    certfile = _readable_file(env, "KAFKA_SSL_CERTFILE")
    keyfile = _readable_file(env, "KAFKA_SSL_KEYFILE")
    key_password = _secret_value(env, "KAFKA_SSL_KEY_PASSWORD")
    if keyfile and not certfile:
        raise SettingsError(
            "KAFKA_SSL_KEYFILE is set without KAFKA_SSL_CERTFILE: the key belongs to a client certificate"
        )
    if key_password is not None and not certfile:
        raise SettingsError("KAFKA_SSL_KEY_PASSWORD is set without KAFKA_SSL_CERTFILE: there is no key to decrypt")
    return {
        "ssl_cafile": _readable_file(env, "KAFKA_SSL_CAFILE"),
        "ssl_certfile": certfile,
        "ssl_keyfile": keyfile,
        "ssl_key_password": key_password,
        "ssl_check_hostname": _bool("KAFKA_SSL_CHECK_HOSTNAME", env.get("KAFKA_SSL_CHECK_HOSTNAME", "true")),
    }
