"""Logging: JSON or text lines, context fields from `extra`, and redaction of secrets before writing."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from postback_router.logs import REDACTED, JsonFormatter, Redactor, TextFormatter, configure_logging

SECRET = "pb-secret-0123456789abcdef"


def record(
    message: str = "hello",
    *args: object,
    level: int = logging.INFO,
    name: str = "postback_router.test",
    exc_info: Any = None,
    **extra: object,
) -> logging.LogRecord:
    rec = logging.LogRecord(name, level, __file__, 10, message, args or None, exc_info)
    for key, value in extra.items():
        setattr(rec, key, value)
    return rec


def json_line(formatter: logging.Formatter, rec: logging.LogRecord) -> dict[str, Any]:
    text = formatter.format(rec)
    assert "\n" not in text  # one object per line, even with a traceback inside
    line: dict[str, Any] = orjson.loads(text)
    return line


# --- Redactor -----------------------------------------------------------------------------------------


def test_known_secret_values_are_replaced() -> None:
    redact = Redactor([SECRET, "another-long-secret"])
    assert redact(f"calling with {SECRET} and another-long-secret.") == f"calling with {REDACTED} and {REDACTED}."


def test_the_longest_secret_wins_when_one_contains_another() -> None:
    # "abcdefgh" alone would leave the tail of the longer secret in the line
    redact = Redactor(["abcdefgh", "abcdefgh-tail-of-it"])
    assert redact("x abcdefgh-tail-of-it y") == f"x {REDACTED} y"


def test_secret_values_with_regex_characters_are_matched_literally() -> None:
    redact = Redactor(["a.b*c+d?(e)"])
    assert redact("v=a.b*c+d?(e)!") == f"v={REDACTED}!"
    assert redact("v=aXbbbcdde") == "v=aXbbbcdde"


def test_short_values_are_not_scrubbed() -> None:
    redact = Redactor(["order", "12345678"])
    # 7 characters or fewer would redact ordinary words
    assert redact("order placed") == "order placed"
    assert redact("id 12345678") == f"id {REDACTED}"


def test_from_environment_takes_only_secret_variables() -> None:
    env = {
        "POSTBACK_SECRET_META_TOKEN": f"  {SECRET}  ",  # surrounding space stripped
        "API_TOKEN": "api-token-value-xyz",
        "INTAKE_SECRET": "intake-secret-value",
        "POSTBACK_SECRET_SHORT": "tiny",
        "POSTBACK_SECRET_EMPTY": "   ",
        "HOME": "/home/someone-long",
        "MY_API_TOKEN": "not-a-known-name-value",
    }
    redact = Redactor.from_environment(env)
    line = f"{SECRET} api-token-value-xyz intake-secret-value tiny /home/someone-long not-a-known-name-value"
    assert redact(line) == f"{REDACTED} {REDACTED} {REDACTED} tiny /home/someone-long not-a-known-name-value"


def test_from_environment_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTBACK_SECRET_UNIT_TEST", SECRET)
    assert Redactor.from_environment()(f"x {SECRET}") == f"x {REDACTED}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "Authorization: Bearer eyJhbGc.iOiJ-IUz_I1~N+i/J9=",
            "Authorization: Bearer [redacted]",
            id="bearer",
        ),
        pytest.param("authorization: bearer abc123 next", "authorization: bearer [redacted] next", id="bearer-lower"),
        pytest.param(
            "GET /oauth?access_token=ya29.abc&x=1",
            "GET /oauth?access_token=[redacted]&x=1",
            id="access-token",
        ),
        pytest.param(
            "grant_type=refresh_token&client_secret=s3cr3t&refresh_token=1//0g",
            "grant_type=refresh_token&client_secret=[redacted]&refresh_token=[redacted]",
            id="client-secret-refresh-token",
        ),
        pytest.param("https://h/p?password=hunter2 done", "https://h/p?password=[redacted] done", id="password"),
        pytest.param('{"url": "https://h/?token=abc"}', '{"url": "https://h/?token=[redacted]"}', id="quoted"),
        pytest.param("sent to john.doe+ads@example.co.uk today", "sent to [redacted] today", id="email"),
        pytest.param("nothing to see here: status=200", "nothing to see here: status=200", id="untouched"),
    ],
)
def test_credential_and_email_shapes_are_redacted_keeping_the_prefix(text: str, expected: str) -> None:
    assert Redactor()(text) == expected


def test_a_known_secret_inside_a_query_shape_is_redacted_once() -> None:
    assert Redactor([SECRET])(f"?access_token={SECRET}") == f"?access_token={REDACTED}"


# --- JsonFormatter ------------------------------------------------------------------------------------


def test_json_line_has_the_base_fields() -> None:
    rec = record("delivered %s in %d ms", "pb-1", 42, level=logging.WARNING, name="dispatchers.s2s")
    line = json_line(JsonFormatter(Redactor()), rec)
    assert line["level"] == "WARNING"
    assert line["logger"] == "dispatchers.s2s"
    assert line["message"] == "delivered pb-1 in 42 ms"
    assert line["pid"] == os.getpid()
    assert line["ts"] == datetime.fromtimestamp(rec.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:23] + "Z"
    assert "error" not in line
    assert set(line) == {"ts", "level", "logger", "message", "pid"}


def test_json_line_has_context_fields_from_extra_and_not_unknown_ones() -> None:
    logger = logging.getLogger("postback_router.test_logs.extra")
    captured: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, rec: logging.LogRecord) -> None:
            captured.append(rec)

    handler = Keep()
    logger.addHandler(handler)
    old_level, logger.level = logger.level, logging.INFO
    try:
        logger.info(
            "matched",
            extra={
                "conversion_id": "cv-1",
                "postback_id": "pb-9",
                "kind": "s2s",
                "destination_id": "dest-3",
                "campaign_id": "cmp-7",
                "partition": 0,
                "offset": 1234,
                "payload": {"email": "a@b.example"},
                "user_ip": "203.0.113.9",
            },
        )
    finally:
        logger.removeHandler(handler)
        logger.level = old_level
    [rec] = captured
    line = json_line(JsonFormatter(Redactor()), rec)
    assert line["conversion_id"] == "cv-1"
    assert line["postback_id"] == "pb-9"
    assert line["kind"] == "s2s"
    assert line["destination_id"] == "dest-3"
    assert line["campaign_id"] == "cmp-7"
    assert line["partition"] == 0  # a falsy int is still written, as a number
    assert line["offset"] == 1234
    assert "payload" not in line
    assert "user_ip" not in line
    assert "203.0.113.9" not in orjson.dumps(line).decode()


def test_json_context_values_and_message_are_redacted() -> None:
    rec = record(f"token {SECRET}", conversion_id=f"cv-{SECRET}", campaign_id="owner@example.com")
    line = json_line(JsonFormatter(Redactor([SECRET])), rec)
    assert line["message"] == f"token {REDACTED}"
    assert line["conversion_id"] == f"cv-{REDACTED}"
    assert line["campaign_id"] == REDACTED


def test_json_line_includes_the_exception_redacted() -> None:
    try:
        raise RuntimeError(f"upstream said no to Bearer {SECRET}")
    except RuntimeError:
        exc_info = sys.exc_info()
    line = json_line(JsonFormatter(Redactor([SECRET])), record("delivery failed", exc_info=exc_info))
    assert line["message"] == "delivery failed"
    assert "Traceback (most recent call last)" in line["error"]
    assert "RuntimeError: upstream said no to Bearer [redacted]" in line["error"]
    assert SECRET not in line["error"]
    assert not line["error"].endswith("\n")


# --- TextFormatter ------------------------------------------------------------------------------------


def test_text_line_shape_with_context() -> None:
    rec = record("matched %s", "rule-1", name="streams.worker", conversion_id="cv-1", kind="meta")
    text = TextFormatter(Redactor()).format(rec)
    assert f"] [{os.getpid()}] [INFO] streams.worker: matched rule-1 [conversion_id=cv-1 kind=meta]" in text
    assert text.startswith("[")


def test_text_line_without_context_has_no_brackets_at_the_end() -> None:
    text = TextFormatter(Redactor()).format(record("plain", unknown_extra="x"))
    assert text.endswith("[INFO] postback_router.test: plain")
    assert "unknown_extra" not in text


def test_text_line_is_redacted_including_exception_and_context() -> None:
    try:
        raise ValueError(f"bad key {SECRET}")
    except ValueError:
        exc_info = sys.exc_info()
    rec = record(f"using {SECRET}", exc_info=exc_info, postback_id="to user@example.com")
    text = TextFormatter(Redactor([SECRET])).format(rec)
    assert SECRET not in text
    assert "user@example.com" not in text
    assert f"using {REDACTED}" in text
    assert f"ValueError: bad key {REDACTED}" in text
    assert f"postback_id=to {REDACTED}" in text


def test_text_line_keeps_partition_zero() -> None:
    text = TextFormatter(Redactor()).format(record("committed", partition=0, offset=5))
    assert "partition=0" in text


# --- configure_logging --------------------------------------------------------------------------------


@contextlib.contextmanager
def preserved_logging() -> Iterator[None]:
    """Puts the root handlers and the levels that configure_logging changes back as they were."""
    root = logging.getLogger()
    names = ("aiokafka", "aiohttp.access")
    handlers, level = root.handlers[:], root.level
    levels = {name: logging.getLogger(name).level for name in names}
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        for name, saved in levels.items():
            logging.getLogger(name).setLevel(saved)


def test_configure_logging_json(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("POSTBACK_SECRET_UNIT_TEST", SECRET)
    with preserved_logging():
        configure_logging("DEBUG", "ERROR", "json")
        root = logging.getLogger()
        [handler] = root.handlers
        assert isinstance(handler, logging.StreamHandler)
        assert handler.stream is sys.stderr
        assert isinstance(handler.formatter, JsonFormatter)
        assert root.level == logging.DEBUG
        assert logging.getLogger("aiokafka").level == logging.ERROR
        assert logging.getLogger("aiohttp.access").level == logging.WARNING
        logging.getLogger("postback_router.test_logs").debug("key is %s", SECRET, extra={"postback_id": "pb-1"})
    lines = [orjson.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert lines == [
        {
            "ts": lines[0]["ts"],
            "level": "DEBUG",
            "logger": "postback_router.test_logs",
            "message": f"key is {REDACTED}",
            "pid": os.getpid(),
            "postback_id": "pb-1",
        }
    ]


def test_configure_logging_text_replaces_existing_handlers(capsys: pytest.CaptureFixture[str]) -> None:
    with preserved_logging():
        logging.getLogger().addHandler(logging.NullHandler())
        configure_logging("WARNING", "INFO", "text")
        root = logging.getLogger()
        assert len(root.handlers) == 1
        assert isinstance(root.handlers[0].formatter, TextFormatter)
        assert root.level == logging.WARNING
        assert logging.getLogger("aiokafka").level == logging.INFO
        logging.getLogger("postback_router.test_logs").info("below the level")
        logging.getLogger("postback_router.test_logs").warning("shown to user@example.com")
    err = capsys.readouterr().err
    assert "below the level" not in err
    assert f"[WARNING] postback_router.test_logs: shown to {REDACTED}" in err
    assert not err.lstrip().startswith("{")
