"""The operations settings: HTTP server, log format, the api's secrets and limits, the conversion index topic."""

from __future__ import annotations

import pytest

from service.settings import Settings, SettingsError, load_settings

KAFKA = {"KAFKA_BOOTSTRAP_SERVERS": "kafka-1:9092"}
TOKEN = "tok-0123456789abcdef-XYZ"
INTAKE = "intake-fedcba9876543210"


def settings(**env: str) -> Settings:
    return load_settings({**KAFKA, **env})


def test_defaults() -> None:
    s = settings()
    assert s.http_host == "0.0.0.0"
    assert s.http_port == 8080
    assert s.log_format == "json"
    assert s.api_token is None
    assert s.intake_secret is None
    assert s.api_max_body_bytes == 1_048_576
    assert s.topics.conversion_index == "conversions.index"


# --- HTTP_HOST, HTTP_PORT -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "host"), [("127.0.0.1", "127.0.0.1"), (" ::1 ", "::1"), ("", "0.0.0.0"), ("   ", "0.0.0.0")]
)
def test_http_host(raw: str, host: str) -> None:
    assert settings(HTTP_HOST=raw).http_host == host


@pytest.mark.parametrize("raw", ["0", "1", "9090", "65535"])
def test_http_port_in_range(raw: str) -> None:
    port = settings(HTTP_PORT=raw).http_port
    assert port == int(raw)
    assert type(port) is int


@pytest.mark.parametrize("raw", ["-1", "65536", "http", "80.5", ""])
def test_http_port_out_of_range_names_http_port(raw: str) -> None:
    with pytest.raises(SettingsError) as caught:
        settings(HTTP_PORT=raw)
    assert str(caught.value).startswith("HTTP_PORT=")


# --- LOG_FORMAT ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"), [("json", "json"), ("text", "text"), (" TEXT ", "text"), ("Json", "json")]
)
def test_log_format(raw: str, expected: str) -> None:
    assert settings(LOG_FORMAT=raw).log_format == expected


@pytest.mark.parametrize("raw", ["logfmt", "", "yaml"])
def test_log_format_refuses_others(raw: str) -> None:
    with pytest.raises(SettingsError, match=r"^LOG_FORMAT="):
        settings(LOG_FORMAT=raw)


# --- API_TOKEN, INTAKE_SECRET -------------------------------------------------------------------------


@pytest.mark.parametrize("variable", ["API_TOKEN", "INTAKE_SECRET"])
@pytest.mark.parametrize("raw", ["", "   "], ids=["empty", "blank"])
def test_unset_secret_is_none(variable: str, raw: str) -> None:
    s = settings(**{variable: raw})
    assert getattr(s, variable.lower()) is None


def test_secrets_are_read_and_stripped() -> None:
    s = settings(API_TOKEN=f"  {TOKEN}\n", INTAKE_SECRET=INTAKE)
    assert s.api_token == TOKEN
    assert s.intake_secret == INTAKE


@pytest.mark.parametrize("variable", ["API_TOKEN", "INTAKE_SECRET"])
def test_sixteen_characters_is_the_minimum(variable: str) -> None:
    assert getattr(settings(**{variable: "k" * 16}), variable.lower()) == "k" * 16
    with pytest.raises(SettingsError):
        settings(**{variable: "k" * 15})


@pytest.mark.parametrize("variable", ["API_TOKEN", "INTAKE_SECRET"])
@pytest.mark.parametrize("value", ["Zq7-short-1", "Pw9#x", "  spaced-Zq7-1  "])
def test_short_secret_fails_naming_the_variable_without_its_value(variable: str, value: str) -> None:
    with pytest.raises(SettingsError) as caught:
        settings(**{variable: value})
    message = str(caught.value)
    assert variable in message
    assert value.strip() not in message
    assert value.strip() not in repr(caught.value.args)


def test_repr_never_shows_the_secrets() -> None:
    s = settings(API_TOKEN=TOKEN, INTAKE_SECRET=INTAKE)
    for text in (repr(s), str(s), f"{s}", f"{s!r}"):
        assert TOKEN not in text
        assert INTAKE not in text
    assert "bootstrap_servers='kafka-1:9092'" in repr(s)  # the repr is still useful


# --- API_MAX_BODY_BYTES -------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", ["1024", "65536", "67108864"])
def test_api_max_body_bytes_in_range(raw: str) -> None:
    assert settings(API_MAX_BODY_BYTES=raw).api_max_body_bytes == int(raw)


@pytest.mark.parametrize("raw", ["1023", "67108865", "0", "-1", "1MB", ""])
def test_api_max_body_bytes_out_of_range(raw: str) -> None:
    with pytest.raises(SettingsError, match=r"^API_MAX_BODY_BYTES="):
        settings(API_MAX_BODY_BYTES=raw)


# --- TOPIC_CONVERSION_INDEX ---------------------------------------------------------------------------


def test_conversion_index_takes_the_prefix() -> None:
    topics = settings(TOPIC_PREFIX="team-a.").topics
    assert topics.conversion_index == "team-a.conversions.index"
    assert "team-a.conversions.index" in topics.compacted
    assert "team-a.conversions.index" in topics.all()


def test_conversion_index_override_with_prefix() -> None:
    topics = settings(TOPIC_PREFIX="p.", TOPIC_CONVERSION_INDEX="conv-idx").topics
    assert topics.conversion_index == "p.conv-idx"
    assert topics.compacted == ("p.campaign-rules", "p.offer-sources", "p.conv-idx")
    assert topics.all().count("p.conv-idx") == 1


@pytest.mark.parametrize("raw", ["conv idx", "", "a/b", "x" * 250])
def test_bad_conversion_index_names_its_variable(raw: str) -> None:
    with pytest.raises(SettingsError, match=r"^TOPIC_CONVERSION_INDEX="):
        settings(TOPIC_CONVERSION_INDEX=raw)
