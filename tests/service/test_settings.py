"""Configuration (contract §5): read once, validated at start-up; a bad value fails naming its variable."""

from __future__ import annotations

import pytest

from service.settings import KINDS, Settings, SettingsError, load_settings, parse_duration

KAFKA = {"KAFKA_BOOTSTRAP_SERVERS": "kafka-1:9092,kafka-2:9092"}


def settings(**env: str) -> Settings:
    return load_settings({**KAFKA, **env})


def test_defaults() -> None:
    s = settings()
    assert s.bootstrap_servers == "kafka-1:9092,kafka-2:9092"
    assert s.app_id == "postback-router"
    assert s.default_status == "approved"
    assert s.default_phone_region is None
    assert s.max_conversion_bytes == 65_536
    assert s.fired_state_retention_seconds == 90 * 86_400
    assert s.fired_state_sweep_interval_seconds == 3600
    assert s.state_store == "rocksdb://"
    assert s.state_dir == "var/state"
    assert s.auto_create_topics is True
    assert s.topic_partitions == 8
    assert s.topic_replication_factor is None
    assert s.emit_evaluations is True
    assert s.trace_retention_seconds == s.evaluations_retention_seconds == 30 * 86400
    assert s.batch_max_size == 1000
    assert s.session_timeout_seconds == 30
    assert s.heartbeat_interval_seconds == 3
    assert s.stall_timeout_seconds == 300
    assert s.log_level == "INFO"


def test_default_topics() -> None:
    topics = settings().topics
    assert topics.conversions == "conversions"
    assert topics.campaign_rules == "campaign-rules"
    assert topics.offer_sources == "offer-sources"
    assert topics.postbacks == {kind: f"postbacks.{kind}" for kind in KINDS}
    assert topics.results == "postbacks.results"
    assert topics.dead_letter == "postbacks.dead-letter"
    assert topics.evaluations == "conversions.evaluated"
    assert topics.invalid(topics.conversions) == "conversions.invalid"
    assert topics.invalid(topics.campaign_rules) == "campaign-rules.invalid"
    assert topics.conversion_index == "conversions.index"
    assert topics.compacted == ("campaign-rules", "offer-sources", "conversions.index")
    assert len(topics.all()) == len(set(topics.all())) == 16


@pytest.mark.parametrize(
    ("env", "attribute", "expected"),
    [
        pytest.param({"DEFAULT_STATUS": "pending"}, "default_status", "pending", id="default-status"),
        pytest.param({"DEFAULT_STATUS": "other"}, "default_status", "other", id="default-status-other"),
        pytest.param({"DEFAULT_PHONE_REGION": "GB"}, "default_phone_region", "GB", id="phone-region"),
        pytest.param({"DEFAULT_PHONE_REGION": " us "}, "default_phone_region", "US", id="phone-region-any-case"),
        pytest.param({"DEFAULT_PHONE_REGION": ""}, "default_phone_region", None, id="phone-region-empty-unset"),
        pytest.param({"APP_ID": "pr-test"}, "app_id", "pr-test", id="app-id"),
        pytest.param({"STATE_STORE": "memory://"}, "state_store", "memory://", id="memory-store"),
        pytest.param({"TOPIC_REPLICATION_FACTOR": "3"}, "topic_replication_factor", 3, id="replication"),
        pytest.param({"TOPIC_REPLICATION_FACTOR": "auto"}, "topic_replication_factor", None, id="replication-auto"),
        pytest.param({"LOG_LEVEL": "debug"}, "log_level", "DEBUG", id="log-level-any-case"),
        pytest.param({"AUTO_CREATE_TOPICS": "no"}, "auto_create_topics", False, id="bool-no"),
        pytest.param({"AUTO_CREATE_TOPICS": "Off"}, "auto_create_topics", False, id="bool-off"),
        pytest.param({"EMIT_EVALUATIONS": "1"}, "emit_evaluations", True, id="bool-1"),
        pytest.param({"EMIT_EVALUATIONS": " TRUE "}, "emit_evaluations", True, id="bool-true-spaced"),
        pytest.param({"MAX_CONVERSION_BYTES": "256"}, "max_conversion_bytes", 256, id="max-bytes-minimum"),
        pytest.param({"TOPIC_PARTITIONS": "64"}, "topic_partitions", 64, id="partitions"),
        pytest.param({"BATCH_MAX_SIZE": "1"}, "batch_max_size", 1, id="batch-size-1"),
        pytest.param({"FIRED_STATE_RETENTION": "1s"}, "fired_state_retention_seconds", 1, id="retention-minimum"),
        pytest.param({"FIRED_STATE_RETENTION": "7d"}, "fired_state_retention_seconds", 7 * 86_400, id="retention"),
        pytest.param({"FIRED_STATE_SWEEP_INTERVAL": "10m"}, "fired_state_sweep_interval_seconds", 600, id="sweep"),
        pytest.param({"STALL_TIMEOUT": "90s"}, "stall_timeout_seconds", 90, id="stall-timeout"),
        pytest.param(
            {"KAFKA_SESSION_TIMEOUT": "45s", "KAFKA_HEARTBEAT_INTERVAL": "15s"},
            "heartbeat_interval_seconds",
            15,
            id="heartbeat-a-third",
        ),
    ],
)
def test_values(env: dict[str, str], attribute: str, expected: object) -> None:
    actual = getattr(settings(**env), attribute)
    if isinstance(expected, float):
        assert actual == pytest.approx(expected)
    else:
        assert actual == expected
        assert type(actual) is type(expected)


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [
        pytest.param("90d", 90 * 86_400, id="days"),
        pytest.param("12h", 12 * 3600, id="hours"),
        pytest.param("30m", 1800, id="minutes"),
        pytest.param("10s", 10, id="seconds"),
        pytest.param("250ms", 0.25, id="milliseconds"),
        pytest.param("7", 7, id="bare-seconds"),
        pytest.param(" 5s ", 5, id="surrounding-space"),
        pytest.param("0", 0, id="zero"),
    ],
)
def test_parse_duration(raw: str, seconds: float) -> None:
    assert parse_duration("X", raw) == pytest.approx(seconds)


@pytest.mark.parametrize("raw", ["", "soon", "1w", "-1s", "1.5s", "5 ms", "10S", "s", "1h30m"])
def test_parse_duration_refuses(raw: str) -> None:
    with pytest.raises(SettingsError, match=r"^MY_DURATION="):
        parse_duration("MY_DURATION", raw)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DEFAULT_STATUS", "maybe"),
        ("DEFAULT_STATUS", "Approved"),
        ("DEFAULT_STATUS", ""),
        ("DEFAULT_PHONE_REGION", "GBR"),
        ("DEFAULT_PHONE_REGION", "UK"),  # not ISO 3166-1: GB
        ("DEFAULT_PHONE_REGION", "XX"),
        ("DEFAULT_PHONE_REGION", "44"),
        ("DEFAULT_PHONE_REGION", "001"),
        ("STATE_STORE", "redis://"),
        ("TOPIC_REPLICATION_FACTOR", "0"),
        ("TOPIC_REPLICATION_FACTOR", "11"),
        ("TOPIC_REPLICATION_FACTOR", "three"),
        ("LOG_LEVEL", "verbose"),
        ("KAFKA_SESSION_TIMEOUT", "soon"),
        ("KAFKA_HEARTBEAT_INTERVAL", "1w"),
        ("KAFKA_HEARTBEAT_INTERVAL", "20s"),  # more than a third of the session timeout
        ("MAX_CONVERSION_BYTES", "255"),
        ("MAX_CONVERSION_BYTES", "16777217"),
        ("MAX_CONVERSION_BYTES", "64k"),
        ("FIRED_STATE_RETENTION", "forever"),
        ("FIRED_STATE_RETENTION", "0"),  # would forget every fired postback: re-deliveries fire again
        ("FIRED_STATE_RETENTION", "500ms"),
        ("FIRED_STATE_SWEEP_INTERVAL", "hourly"),
        ("FIRED_STATE_SWEEP_INTERVAL", "0s"),
        ("STALL_TIMEOUT", "0s"),
        ("STALL_TIMEOUT", "never"),
        ("AUTO_CREATE_TOPICS", "maybe"),
        ("EMIT_EVALUATIONS", "2"),
        ("TOPIC_PARTITIONS", "0"),
        ("TOPIC_PARTITIONS", "-1"),
        ("BATCH_MAX_SIZE", "0"),
        ("BATCH_MAX_SIZE", "100001"),
        ("TOPIC_CONVERSIONS", "bad topic"),
        ("TOPIC_CONVERSIONS", ""),
        ("TOPIC_CAMPAIGN_RULES", "rules/v1"),
        ("TOPIC_OFFER_SOURCES", "x" * 250),
        ("TOPIC_RESULTS", "results!"),
        ("TOPIC_DEAD_LETTER", "dead letter"),
        ("TOPIC_EVALUATIONS", "eval#"),
        ("TOPIC_POSTBACKS_PREFIX", "post/backs"),
        ("TOPIC_PREFIX", "team a."),
        ("TOPIC_PREFIX", "x" * 250),
    ],
)
def test_bad_value_fails_naming_its_variable(variable: str, value: str) -> None:
    with pytest.raises(SettingsError) as caught:
        settings(**{variable: value})
    assert variable in str(caught.value)


def test_messages_do_not_blame_another_variable() -> None:
    with pytest.raises(SettingsError) as caught:
        settings(TOPIC_PREFIX="bad prefix ")
    assert str(caught.value).startswith("TOPIC_PREFIX=")


@pytest.mark.parametrize("prefix", ["t1.", "team-a_", "x"])
def test_topic_prefix_applies_to_every_topic(prefix: str) -> None:
    s = settings(TOPIC_PREFIX=prefix)
    unprefixed = settings().topics.all()
    assert s.topics.all() == tuple(prefix + topic for topic in unprefixed)
    assert s.topics.postbacks == {kind: f"{prefix}postbacks.{kind}" for kind in KINDS}
    assert s.topics.invalid(s.topics.conversions) == f"{prefix}conversions.invalid"


def test_topic_overrides_and_postbacks_prefix() -> None:
    s = settings(
        TOPIC_PREFIX="p.",
        TOPIC_CONVERSIONS="events",
        TOPIC_POSTBACKS_PREFIX="pb",
        TOPIC_EVALUATIONS="audit",
    )
    assert s.topics.conversions == "p.events"
    assert s.topics.invalid(s.topics.conversions) == "p.events.invalid"
    assert s.topics.postbacks == {kind: f"p.pb.{kind}" for kind in KINDS}
    assert (s.topics.results, s.topics.dead_letter) == ("p.pb.results", "p.pb.dead-letter")
    assert s.topics.evaluations == "p.audit"


@pytest.mark.parametrize("value", [None, "", "   "], ids=["unset", "empty", "blank"])
def test_missing_kafka_bootstrap_servers(value: str | None) -> None:
    env = {} if value is None else {"KAFKA_BOOTSTRAP_SERVERS": value}
    with pytest.raises(SettingsError) as caught:
        load_settings(env)
    assert "KAFKA_BOOTSTRAP_SERVERS" in str(caught.value)


def test_kafka_not_required_for_commands_that_do_not_connect() -> None:
    assert load_settings({}, require_kafka=False).bootstrap_servers == ""


def test_environment_is_read_from_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "env-kafka:9092")
    monkeypatch.setenv("DEFAULT_STATUS", "declined")
    s = load_settings()
    assert (s.bootstrap_servers, s.default_status) == ("env-kafka:9092", "declined")
