"""Logging: one JSON object per line (LOG_FORMAT=json, the default), or plain text for a terminal.

Every line carries `ts`, `level`, `logger`, `message` and `pid`, plus every field a call passes in
`extra` (`conversion_id`, `postback_id`, `partition`, `offset`, `reason`, ...): strings, numbers
and booleans as they are, dicts and lists as JSON objects and arrays, anything else as its `str()`;
a field whose value is None is left out, and one named like a base field (`ts`, `level`, `logger`,
`pid`, `error`) is written as `extra_<name>`. Before a line is written, its text (the message, the
traceback, every string of `extra`, dict keys too) is scrubbed by `Redactor`: the known secret values
of this process, bearer tokens, URL userinfo, credential parameters (`CREDENTIAL_NAMES`), email
addresses, IPv4 and IPv6 addresses (not unspecified or loopback ones) and phone-like numbers become
`[redacted]`; a defence in depth, since no call site logs them on purpose. The value of an `extra`
field (or dict key) named like a credential is redacted whole. Numbers of `extra` stay numbers (only
a known secret value is scrubbed from them), the value of a field named `id` or `*_id` is not read
as a phone number, and the time, pid, level and logger of a text line are the service's own and
kept. Every pattern is linear in the length of the text, so a hostile megabyte takes well under a
second, not hours. A value that cannot be written never stops the line: it becomes a placeholder.
"""

from __future__ import annotations

import logging
import math
import os
import re
import sys
import traceback
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

from schemas.redaction import CREDENTIAL_NAMES, REDACTED, is_credential_name, scrub

__all__ = ["CREDENTIAL_NAMES", "REDACTED", "JsonFormatter", "Redactor", "TextFormatter", "configure_logging"]

# The attributes of every LogRecord (and those Formatter.format adds): whatever else a record has
# came from the call's `extra`.
_STANDARD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",  # Python 3.12+
}
# The JSON line's own fields: an `extra` field of the same name is written as `extra_<name>`.
_BASE_FIELDS = frozenset({"ts", "level", "logger", "message", "pid", "error"})
# Nesting kept in a context value; deeper values (and reference cycles) are written as text.
_MAX_DEPTH = 8
# The integers a JSON number carries exactly in orjson (64 bits); larger ones are written as text.
_INT_RANGE = range(-(2**63), 2**64)
# Environment variables whose values are secrets (dispatchers/adapters/secrets.py reads POSTBACK_SECRET_*).
_SECRET_ENV = re.compile(r"^(POSTBACK_SECRET_.+|API_TOKEN|INTAKE_SECRET)$")
# Shorter values are not scrubbed by value: they would redact ordinary words.
_MIN_SECRET_LENGTH = 8


class Redactor:
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        values = sorted({s for s in secrets if len(s) >= _MIN_SECRET_LENGTH}, key=len, reverse=True)
        self._values = re.compile("|".join(map(re.escape, values))) if values else None

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None) -> Redactor:
        env = os.environ if env is None else env
        return cls(value.strip() for name, value in env.items() if _SECRET_ENV.match(name) and value.strip())

    def __call__(self, text: str, *, phones: bool = True) -> str:
        """`text` scrubbed; `phones=False` keeps digit runs (the value of an id field)."""
        return scrub(self.secret_values(text), phones=phones)

    def secret_values(self, text: str) -> str:
        """`text` with this process's known secret values scrubbed, and nothing else."""
        return self._values.sub(REDACTED, text) if self._values is not None else text


def _is_identifier(name: str) -> bool:
    return name == "id" or name.endswith("_id")


def _text(value: object) -> str:
    """str(value), or a placeholder naming its type when that fails: a bad value never stops a log line."""
    try:
        return str(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"


def context_fields(record: logging.LogRecord) -> dict[str, object]:
    """The fields the call put in `extra` (those that are not None), in the order it gave them."""
    return {
        name: value for name, value in vars(record).items() if name not in _STANDARD_ATTRIBUTES and value is not None
    }


def safe_value(value: object, redact: Redactor, name: str = "") -> Any:
    """`value` (of the field or key `name`) as something JSON can hold, with every string in it redacted.

    The value of a credential's name is redacted whole; in that of an id (`id`, `*_id`) digits are not
    read as a phone number. Numbers stay numbers unless their text holds a known secret; non-finite
    floats and integers beyond 64 bits become text; dicts become objects (keys redacted), lists,
    tuples and sets arrays (down to _MAX_DEPTH); anything else becomes its str(). Never raises: a
    value that cannot be read becomes a placeholder.
    """
    try:
        return _safe_value(value, redact, name, 0)
    except Exception:
        return f"<unprintable {type(value).__name__}>"


def _safe_value(value: object, redact: Redactor, name: str, depth: int) -> Any:
    if is_credential_name(name):
        return REDACTED
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        text = _text(value)
        redacted = redact.secret_values(text)
        if redacted != text:
            return redacted
        if isinstance(value, int):
            return int(value) if value in _INT_RANGE else text
        return float(value) if math.isfinite(value) else text
    phones = not _is_identifier(name)
    if isinstance(value, str):
        return redact(value, phones=phones)
    if depth < _MAX_DEPTH:
        if isinstance(value, Mapping):
            items = ((_text(k), v) for k, v in value.items())
            return {redact(key): _safe_value(v, redact, key, depth + 1) for key, v in items}
        if isinstance(value, list | tuple | set | frozenset):
            return [_safe_value(v, redact, name, depth + 1) for v in value]
    return redact(_text(value), phones=phones)


class JsonFormatter(logging.Formatter):
    def __init__(self, redact: Redactor) -> None:
        super().__init__()
        self._redact = redact

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": self._redact(record.getMessage()),
            "pid": record.process,
        }
        for name, value in context_fields(record).items():
            key = self._redact(f"extra_{name}" if name in _BASE_FIELDS else name)
            line[key] = safe_value(value, self._redact, name)
        if record.exc_info:
            line["error"] = self._redact("".join(traceback.format_exception(*record.exc_info)).rstrip())
        try:
            return orjson.dumps(line).decode("utf-8")
        except orjson.JSONEncodeError:
            # a string that is not UTF-8 (a lone surrogate, from bytes decoded with surrogateescape)
            return orjson.dumps(_utf8(line)).decode("utf-8")


class TextFormatter(logging.Formatter):
    def __init__(self, redact: Redactor) -> None:
        super().__init__("[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s")
        self._redact = redact

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        # The time, pid, level and logger before the message are the service's own (a 7-digit pid is
        # not a phone number): the message and traceback after them are scrubbed, the context by value.
        head = len(self.formatMessage(record)) - len(record.message)
        text = text[:head] + self._redact(text[head:])
        context = [
            f"{self._redact(name)}={_plain(safe_value(value, self._redact, name))}"
            for name, value in context_fields(record).items()
        ]
        return f"{text} [{' '.join(context)}]" if context else text


def _plain(value: Any) -> str:
    """A context value (already made safe) in a text line: a string as it is, anything else as JSON."""
    if isinstance(value, str):
        return value
    try:
        return orjson.dumps(value).decode("utf-8")
    except orjson.JSONEncodeError:
        return orjson.dumps(_utf8(value)).decode("utf-8")


def _utf8(value: Any) -> Any:
    """A JSON-ready value with the lone surrogates of its strings written as `\\udcff` escapes."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_utf8(k): _utf8(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_utf8(v) for v in value]
    return value


def configure_logging(level: str, kafka_level: str, log_format: str) -> None:
    """Route every logger to stderr in `log_format` (json or text), with redaction."""
    redact = Redactor.from_environment()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(redact) if log_format == "json" else TextFormatter(redact))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiokafka").setLevel(kafka_level)
    # aiohttp's access log would write query strings, where an intake secret may travel.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
