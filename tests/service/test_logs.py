"""Logging: JSON or text lines, context fields from `extra`, and redaction of secrets before writing."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import string
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.logs import CREDENTIAL_NAMES, REDACTED, JsonFormatter, Redactor, TextFormatter, configure_logging
from service.settings import load_settings
from streams.core.batch import SourceRecord
from streams.worker import MatchingWorker

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
    rec = record("delivered %s in %d ms", "pb-1", 42, level=logging.WARNING, name="dispatchers.core.s2s")
    line = json_line(JsonFormatter(Redactor()), rec)
    assert line["level"] == "WARNING"
    assert line["logger"] == "dispatchers.core.s2s"
    assert line["message"] == "delivered pb-1 in 42 ms"
    assert line["pid"] == os.getpid()
    assert line["ts"] == datetime.fromtimestamp(rec.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:23] + "Z"
    assert "error" not in line
    assert set(line) == {"ts", "level", "logger", "message", "pid"}


def logged(message: str, *args: object, **kwargs: Any) -> logging.LogRecord:
    """The record a real logger call makes (Logger.makeRecord puts `extra` on it)."""
    logger = logging.getLogger("postback_router.test_logs.extra")
    captured: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, rec: logging.LogRecord) -> None:
            captured.append(rec)

    handler = Keep()
    logger.addHandler(handler)
    old_level, logger.level = logger.level, logging.INFO
    try:
        logger.info(message, *args, **kwargs)
    finally:
        logger.removeHandler(handler)
        logger.level = old_level
    [rec] = captured
    return rec


def test_json_line_has_every_field_given_in_extra() -> None:
    rec = logged(
        "matched",
        extra={
            "conversion_id": "cv-1",
            "postback_id": "pb-9",
            "kind": "s2s",
            "destination_id": "dest-3",
            "campaign_id": "cmp-7",
            "partition": 0,
            "offset": 1234,
            "reason": "not_json",
            "attempts": 3,
            "ratio": 0.25,
            "retrying": False,
            "source": {"topic": "conversions", "partition": 2, "offset": 7},
            "kinds": ["meta", "s2s"],
            "absent": None,
        },
    )
    line = json_line(JsonFormatter(Redactor()), rec)
    assert {k: v for k, v in line.items() if k not in ("ts", "pid")} == {
        "level": "INFO",
        "logger": "postback_router.test_logs.extra",
        "message": "matched",
        "conversion_id": "cv-1",
        "postback_id": "pb-9",
        "kind": "s2s",
        "destination_id": "dest-3",
        "campaign_id": "cmp-7",
        "partition": 0,  # a falsy int is still written, as a number
        "offset": 1234,
        "reason": "not_json",
        "attempts": 3,
        "ratio": 0.25,
        "retrying": False,  # a boolean stays a boolean (and False is written)
        "source": {"topic": "conversions", "partition": 2, "offset": 7},  # nested values stay JSON
        "kinds": ["meta", "s2s"],
        # None is left out
    }
    assert list(line)[5:8] == ["conversion_id", "postback_id", "kind"]  # in the order the call gave them


def test_standard_record_attributes_are_not_written() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        rec = logged("failed %s", "x", extra={"conversion_id": "cv-1"}, exc_info=True, stack_info=True)
    # another handler's formatter may have set `message`, `asctime` and `exc_text` on the record first
    TextFormatter(Redactor()).format(rec)
    assert rec.exc_text and rec.message and rec.asctime
    line = json_line(JsonFormatter(Redactor()), rec)
    assert set(line) == {"ts", "level", "logger", "message", "pid", "error", "conversion_id"}


def test_extra_fields_named_like_base_fields_do_not_replace_them() -> None:
    try:
        raise RuntimeError("the real failure")
    except RuntimeError:
        rec = logged(
            "invalid",
            exc_info=True,
            extra={"level": "DEBUG", "logger": "spoofed", "ts": "yesterday", "pid": 1, "error": "missing_field"},
        )
    line = json_line(JsonFormatter(Redactor()), rec)
    assert (line["level"], line["logger"], line["pid"]) == ("INFO", "postback_router.test_logs.extra", os.getpid())
    assert line["ts"] != "yesterday"
    assert "RuntimeError: the real failure" in line["error"]
    assert line["extra_level"] == "DEBUG"
    assert line["extra_logger"] == "spoofed"
    assert line["extra_ts"] == "yesterday"
    assert line["extra_pid"] == 1
    assert line["extra_error"] == "missing_field"


def test_secrets_and_emails_in_extra_fields_are_redacted_at_any_depth() -> None:
    numeric_secret = "4815162342"
    redact = Redactor([SECRET, numeric_secret])
    rec = logged(
        "delivering",
        extra={
            "url": f"https://h.example/cb?token={SECRET}",
            "owner": "owner@example.com",
            "payload": {"user": {"email": "a@b.example", "note": f"key {SECRET}"}, "n": 1},
            "recipients": ["x@y.example", ("ok", f"Bearer {SECRET}")],
            "by_address": {"someone@example.org": 1},
            "pin": int(numeric_secret),  # a secret made of digits is redacted as a number too
            "body": f'{{"password": "{SECRET}"}}'.encode(),  # bytes: written as text, then redacted
        },
    )
    line = json_line(JsonFormatter(redact), rec)
    text = orjson.dumps(line).decode()
    for leaked in (SECRET, numeric_secret, "owner@example.com", "a@b.example", "x@y.example", "someone@example.org"):
        assert leaked not in text
    assert line["url"] == f"https://h.example/cb?token={REDACTED}"
    assert line["owner"] == REDACTED
    assert line["payload"] == {"user": {"email": REDACTED, "note": f"key {REDACTED}"}, "n": 1}
    assert line["recipients"] == [REDACTED, ["ok", f"Bearer {REDACTED}"]]
    assert line["by_address"] == {REDACTED: 1}
    assert line["pin"] == REDACTED
    assert REDACTED in line["body"]


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no text for you")


class Opaque:
    def __str__(self) -> str:
        return "opaque for owner@example.com"


def test_values_json_cannot_hold_are_written_as_text_and_never_stop_the_line() -> None:
    cycle: list[Any] = [1]
    cycle.append(cycle)
    deep: list[Any] = ["bottom"]
    for _ in range(50):
        deep = [deep]
    rec = logged(
        "odd values",
        extra={
            "amount": Decimal("12.50"),
            "at": datetime(2000, 1, 2, 3, 4, 5, tzinfo=UTC),
            "kinds": {"meta"},
            "huge": 2**70,
            "not_a_number": float("nan"),
            "infinite": float("-inf"),
            "opaque": Opaque(),
            "unprintable": Unprintable(),
            "cycle": cycle,
            "deep": deep,
            "surrogate": "broken \udcff byte",
            "odd_keys": {1: "one", (2, 3): "pair", None: "none"},
        },
    )
    for formatter in (JsonFormatter(Redactor()), TextFormatter(Redactor())):
        formatter.format(rec)  # neither raises
    line = json_line(JsonFormatter(Redactor()), rec)
    assert line["amount"] == "12.50"
    assert line["at"] == "2000-01-02 03:04:05+00:00"
    assert line["kinds"] == ["meta"]
    assert line["huge"] == str(2**70)  # beyond 64 bits: text, not a failed line
    assert line["not_a_number"] == "nan"
    assert line["infinite"] == "-inf"
    assert line["opaque"] == f"opaque for {REDACTED}"
    assert line["unprintable"] == "<unprintable Unprintable>"
    assert line["cycle"][0] == 1 and "[...]" in orjson.dumps(line["cycle"]).decode()
    assert "bottom" in orjson.dumps(line["deep"]).decode()
    assert line["surrogate"] == "broken \\udcff byte"  # a lone surrogate (not UTF-8) is escaped, not fatal
    assert line["odd_keys"] == {"1": "one", "(2, 3)": "pair", "None": "none"}
    assert line["message"] == "odd values"


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
    text = TextFormatter(Redactor()).format(record("plain"))
    assert text.endswith("[INFO] postback_router.test: plain")


def test_text_line_has_every_extra_field_as_key_value_pairs() -> None:
    rec = logged(
        "refused",
        extra={"reason": "not_json", "offset": 7, "retrying": True, "source": {"topic": "t", "partition": 0}},
    )
    text = TextFormatter(Redactor()).format(rec)
    assert text.endswith('refused [reason=not_json offset=7 retrying=true source={"topic":"t","partition":0}]')
    assert "lineno=" not in text and "asctime=" not in text


def test_text_line_redacts_nested_extra_fields() -> None:
    rec = logged("x", extra={"payload": {"email": "a@b.example", "key": SECRET}, "who": "c@d.example"})
    text = TextFormatter(Redactor([SECRET])).format(rec)
    assert "a@b.example" not in text and "c@d.example" not in text and SECRET not in text
    assert f'payload={{"email":"{REDACTED}","key":"{REDACTED}"}} who={REDACTED}' in text


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


# --- the worker's line for a refused conversion -------------------------------------------------------


def test_a_refused_conversion_is_one_warning_line_with_its_reason_and_source_position(
    caplog: pytest.LogCaptureFixture,
) -> None:
    worker = MatchingWorker(load_settings({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "STATE_STORE": "memory://"}))
    records = [
        SourceRecord("conversions", 3, 41, None, b"cv-17", b'{"user": {"email": "someone@example.com"}, oops'),
        SourceRecord("conversions", 3, 42, None, b"\xff\xfe", b'{"conversion_id": "cv-18", "user": {"phone": "+4917'),
        SourceRecord("conversions", 5, 0, None, None, b"[]"),
    ]
    with caplog.at_level(logging.WARNING):
        result = worker.processor.process(records)
        worker._log_refused(result.messages)
    assert [r.name for r in caplog.records] == ["streams.worker"] * 3  # one WARNING line each, the worker's
    lines = [json_line(JsonFormatter(Redactor()), r) for r in caplog.records]
    for line in lines:
        del line["ts"], line["pid"]
    base = {"level": "WARNING", "logger": "streams.worker", "topic": "conversions"}
    assert lines == [
        {
            **base,
            "message": "conversion refused (not_json), kept in conversions.invalid",
            "reason": "not_json",
            "partition": 3,
            "offset": 41,
            "conversion_id": "cv-17",
        },
        # a key that is not UTF-8 is no conversion id: left out, as is the id inside the refused value
        {
            **base,
            "message": "conversion refused (not_json), kept in conversions.invalid",
            "reason": "not_json",
            "partition": 3,
            "offset": 42,
        },
        {
            **base,
            "message": "conversion refused (not_object), kept in conversions.invalid",
            "reason": "not_object",
            "partition": 5,
            "offset": 0,
        },
    ]
    text = orjson.dumps(lines).decode()
    assert "someone" not in text and "4917" not in text and "cv-18" not in text and "oops" not in text


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


# --- issue 8, defect 9: linear time, and credentials, addresses and phones in any line --------------------

HOSTILE_LINE_CHARS = 1_000_000
HOSTILE_LINES = {
    # each a shape that made a pattern rescan the rest of the line from every position (minutes per MB)
    "letters": "a" * HOSTILE_LINE_CHARS,
    "dots": "." * HOSTILE_LINE_CHARS,
    "at-signs": "@" * HOSTILE_LINE_CHARS,
    "dotted-local-part": "a." * (HOSTILE_LINE_CHARS // 2),
    "local-parts-without-domain": ("a" * 999 + "@") * (HOSTILE_LINE_CHARS // 1000),
    "domain-without-tld": "a@" + "a1." * (HOSTILE_LINE_CHARS // 3),
    "encoded-at-signs": "a%40" * (HOSTILE_LINE_CHARS // 4),
    "digits": "7" * HOSTILE_LINE_CHARS,
    "spaced-digits": "7 " * (HOSTILE_LINE_CHARS // 2),
    "dotted-digits": "1." * (HOSTILE_LINE_CHARS // 2),
    "colons": ":" * HOSTILE_LINE_CHARS,
    "hex-and-colons": "a:" * (HOSTILE_LINE_CHARS // 2),
    "credential-names": "api_key" * (HOSTILE_LINE_CHARS // 7),
    "credential-name-then-spaces": '"token"' + " " * HOSTILE_LINE_CHARS,
    "bearer-then-spaces": "Bearer" + " " * HOSTILE_LINE_CHARS,
    "schemes-without-hosts": "a.b://" * (HOSTILE_LINE_CHARS // 6),
    "scheme-then-userinfo-without-at": "http://" + "u" * HOSTILE_LINE_CHARS,
}


def best_time(function: Any, argument: str, repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        function(argument)
        best = min(best, time.perf_counter() - started)
    return best


@pytest.fixture(scope="module")
def ordinary_seconds() -> float:
    """The time to redact 1 MB of ordinary log text, on this machine now: what the bound is measured against."""
    line = '{"message": "postback delivered after 1 attempt(s): http_200", "partition": 3, "offset": 1234} '
    return best_time(Redactor([SECRET]), (line * (HOSTILE_LINE_CHARS // len(line) + 1))[:HOSTILE_LINE_CHARS], 3)


@pytest.mark.parametrize("shape", list(HOSTILE_LINES))
def test_redacting_a_1mb_hostile_line_takes_linear_time(shape: str, ordinary_seconds: float) -> None:
    # The quadratic email pattern took about 30 s for 70 KB of `a` (about 100 minutes for this 1 MB).
    # Bound: a few seconds, and no more than 10x the time of redacting 1 MB of ordinary log text.
    elapsed = best_time(Redactor([SECRET]), HOSTILE_LINES[shape])
    assert elapsed < 5.0, f"{shape}: {elapsed:.2f} s"
    assert elapsed < max(10 * ordinary_seconds, 0.25), f"{shape}: {elapsed:.3f} s, ordinary {ordinary_seconds:.3f} s"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("GET /pb?api_key=AbC123&x=1", "GET /pb?api_key=[redacted]&x=1", id="api_key"),
        pytest.param("/pb?apikey=AbC123", "/pb?apikey=[redacted]", id="apikey"),
        pytest.param("/pb?API-KEY=AbC123", "/pb?API-KEY=[redacted]", id="api-key-upper-case"),
        pytest.param("/pb?x-api-key=AbC123", "/pb?x-api-key=[redacted]", id="x-api-key"),
        pytest.param("/pb?cid=1&key=AbC123", "/pb?cid=1&key=[redacted]", id="key"),
        pytest.param("/pb?Token=AbC123", "/pb?Token=[redacted]", id="token-mixed-case"),
        pytest.param("/pb?auth=AbC123", "/pb?auth=[redacted]", id="auth"),
        pytest.param("/pb?sig=AbC123", "/pb?sig=[redacted]", id="sig"),
        pytest.param("/pb?signature=AbC123", "/pb?signature=[redacted]", id="signature"),
        pytest.param("/pb?hmac_sig=AbC123", "/pb?hmac_sig=[redacted]", id="suffix-after-underscore"),
        pytest.param("/pb?PASSWORD=AbC123", "/pb?PASSWORD=[redacted]", id="password-upper-case"),
        pytest.param("/pb?secret=AbC123", "/pb?secret=[redacted]", id="secret"),
        pytest.param("/pb?access_token=AbC123", "/pb?access_token=[redacted]", id="access_token"),
        pytest.param("/pb?pwd=AbC123&pass=XyZ789", "/pb?pwd=[redacted]&pass=[redacted]", id="pwd-and-pass"),
        pytest.param("/pb?token%3DAbC123%26x%3D1", "/pb?token%3D[redacted]", id="encoded-equals"),
        pytest.param(
            "u=https%3A%2F%2Ft.example%2Fpb%3Fcid%3D1%26api_key%3DAbC123",
            "u=https%3A%2F%2Ft.example%2Fpb%3Fcid%3D1%26api_key%3D[redacted]",
            id="encoded-url-in-a-parameter",
        ),
        pytest.param("/pb?api%5Fkey%3dAbC123", "/pb?api%5Fkey%3d[redacted]", id="encoded-underscore"),
        pytest.param('{"api_key": "AbC123", "n": 1}', '{"api_key": "[redacted]", "n": 1}', id="json-member"),
        pytest.param("{'Token': 'AbC123'}", "{'Token': '[redacted]'}", id="python-repr"),
        pytest.param("monkey=banana keys=3 tokens=2", "monkey=banana keys=3 tokens=2", id="not-credential-names"),
        pytest.param("client 203.0.113.7 called", "client [redacted] called", id="ipv4"),
        pytest.param("from 203.0.113.7:443.", "from [redacted]:443.", id="ipv4-with-port"),
        pytest.param("client 2001:db8::1 called", "client [redacted] called", id="ipv6"),
        pytest.param("client [2001:db8:0:0:1:0:0:1]:443", "client [[redacted]]:443", id="ipv6-full"),
        pytest.param("client 2001:db8:: and fe80::1%eth0", "client [redacted] and [redacted]%eth0", id="ipv6-short"),
        pytest.param("mapped ::ffff:192.0.2.1 here", "mapped ::ffff:[redacted] here", id="ipv4-mapped"),
        pytest.param("call +44 7911 123456 now", "call [redacted] now", id="phone-international"),
        pytest.param("call 07911 123456.", "call [redacted].", id="phone-national"),
        pytest.param("call (555) 123-4567", "call ([redacted]", id="phone-us"),
        pytest.param("phone=%2B4917612345678&x=1", "phone=%2B[redacted]&x=1", id="phone-encoded-plus"),
        pytest.param("sub1=4917612345678", "sub1=[redacted]", id="phone-digits-in-a-query"),
        pytest.param("to mail%40example.com", "to [redacted]", id="encoded-email"),
        pytest.param("GET https://admin:p!ss@t.example/pb", "GET https://[redacted]@t.example/pb", id="userinfo"),
    ],
)
def test_credentials_addresses_and_phones_are_redacted(text: str, expected: str) -> None:
    assert Redactor()(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("2026-11-20T10:00:00.999Z", id="iso-timestamp"),
        pytest.param("[2026-11-20 10:00:00,123] [INFO]", id="text-log-time"),
        pytest.param("2026-11-20 10:00:00+05:30", id="date-time-offset"),
        pytest.param("ts=1795168800 ms=1795168800123", id="unix-seconds-and-milliseconds"),
        pytest.param("invalid record on campaign-rules at 3/12345678: not_json", id="partition-and-offset"),
        pytest.param("serving on http://tracker.example:8080/metrics", id="port"),
        pytest.param("listening on 0.0.0.0:8080, 127.0.0.1:9092, [::]:8080 and [::1]:8080", id="where-it-listens"),
        pytest.param("retrying in 12.5s after 1234567ms", id="durations"),
        pytest.param("postback 5e0c4b2a-1c1d-5b7e-9f00-000000000001", id="uuid"),
        pytest.param("postback 12345678-1234-5678-1234-567812345678", id="uuid-of-digits"),
        pytest.param("google_ads:1234567890 meta:123456789012345", id="destination-ids"),
        pytest.param("conversion cv-1234567 of campaign camp_7654321", id="prefixed-ids"),
        pytest.param("payout 1234567.89 EUR, version 1.2.3", id="decimals-and-versions"),
        pytest.param("took 10:00:00 at 12:30", id="times-of-day"),
        pytest.param("offset 123456 partition 12", id="short-numbers"),
        pytest.param("12345678901234567890", id="20-digit-id"),
        pytest.param("std::vector and Class::method", id="scope-operators"),
    ],
)
def test_timestamps_positions_ports_durations_and_ids_are_kept(text: str) -> None:
    assert Redactor()(text) == text


def test_numbers_of_extra_fields_are_kept_and_only_text_is_scrubbed() -> None:
    rec = logged(
        "committed offset %d for %s",
        12345678,
        "+44 7911 123456",
        extra={
            "offset": 12345678,
            "partition": 7,
            "duration_ms": 1234567,
            "occurred_at": 1795168800,
            "conversion_id": "987654321",  # a numeric id is an id, not a phone
            "postback_id": "5e0c4b2a-1c1d-5b7e-9f00-000000000001",
            "note": "call 07911 123456 from 203.0.113.7",
            "payload": {"api_key": "AbC123", "nested": {"Password": 12345}, "source_id": "7654321"},
        },
    )
    for formatter in (JsonFormatter(Redactor()), TextFormatter(Redactor())):
        assert "7911" not in formatter.format(rec) and "AbC123" not in formatter.format(rec)
    line = json_line(JsonFormatter(Redactor()), rec)
    assert line["message"] == "committed offset [redacted] for [redacted]"  # in the text of a message: a phone
    assert (line["offset"], line["partition"], line["duration_ms"], line["occurred_at"]) == (
        12345678,
        7,
        1234567,
        1795168800,
    )
    assert line["conversion_id"] == "987654321"
    assert line["postback_id"] == "5e0c4b2a-1c1d-5b7e-9f00-000000000001"
    assert line["note"] == f"call {REDACTED} from {REDACTED}"
    assert line["payload"] == {"api_key": REDACTED, "nested": {"Password": REDACTED}, "source_id": "7654321"}
    text = TextFormatter(Redactor()).format(rec)
    assert "offset=12345678 partition=7 duration_ms=1234567 occurred_at=1795168800 conversion_id=987654321" in text


def test_the_text_line_keeps_its_time_and_a_7_digit_pid() -> None:
    rec = record("phone +44 7911 123456")
    rec.process = 4194303
    text = TextFormatter(Redactor()).format(rec)
    assert "] [4194303] [INFO] postback_router.test: phone [redacted]" in text
    assert text.startswith(f"[{datetime.fromtimestamp(rec.created).strftime('%Y-%m-%d %H:%M:%S')},")


# What the property below embeds in random text, one space on either side.
_LOCAL = st.text(alphabet=string.ascii_letters + string.digits + "._%+-", min_size=1, max_size=64)
_LABEL = st.from_regex(r"\A[A-Za-z0-9](?:[A-Za-z0-9-]{0,20}[A-Za-z0-9])?\Z")
_EMAILS = st.builds(
    lambda local, labels, tld: f"{local}@{'.'.join(labels)}.{tld}",
    _LOCAL,
    st.lists(_LABEL, min_size=1, max_size=4),
    st.text(alphabet=string.ascii_letters, min_size=2, max_size=12),
)
# `0.0.0.0`, `127.*`, `::` and `::1` are kept (where a process listens); the only loopback and
# unspecified IPv6 addresses are `::1` and `::`.
_IPV4 = st.ip_addresses(v=4).filter(lambda a: not (a.is_loopback or a.is_unspecified)).map(str)
_IPV6 = st.ip_addresses(v=6).filter(lambda a: not (a.is_loopback or a.is_unspecified)).map(str)
_PHONES = st.builds(
    lambda plus, groups, separator: plus + separator.join(groups),
    st.sampled_from(["", "+", "%2B"]),
    st.lists(st.text(alphabet=string.digits, min_size=1, max_size=5), min_size=1, max_size=5),
    st.sampled_from(["", " ", "-"]),
).filter(
    lambda phone: (
        7 <= sum(c.isdigit() for c in phone.removeprefix("%2B")) <= 15
        # the documented exceptions: Unix times (10 or 13 digits from 1) and dates
        and not re.fullmatch(r"1(\d{9}|\d{12})", phone)
        and not re.match(r"\d{4}-\d\d-\d\d(?!\d)", phone)
    )
)
_CREDENTIALS = st.builds(
    lambda prefix, name, secret: f"{prefix}{name}={secret}",
    st.sampled_from(["", "x_", "partner-", "?", "&"]),
    st.sampled_from(sorted(CREDENTIAL_NAMES)).flatmap(lambda n: st.sampled_from([n, n.upper(), n.title()])),
    st.text(alphabet=string.ascii_letters + string.digits + "._~-", min_size=1, max_size=40),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    before=st.text(max_size=200),
    after=st.text(max_size=200),
    personal=st.one_of(_EMAILS, _IPV4, _IPV6, _PHONES, _CREDENTIALS),
)
def test_personal_data_and_credentials_in_random_text_never_survive(before: str, after: str, personal: str) -> None:
    redacted = Redactor()(f"{before} {personal} {after}")
    assert f" {personal} " not in redacted  # a credential keeps its name; its value is what is gone
    assert REDACTED in redacted
