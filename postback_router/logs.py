"""Logging: one JSON object per line (LOG_FORMAT=json, the default), or plain text for a terminal.

Every line carries `ts`, `level`, `logger`, `message` and `pid`, plus the ids a call passes in
`extra` (`conversion_id`, `postback_id`, `kind`, `destination_id`, `campaign_id`). Before a line is
written, the known secret values of this process and anything shaped like a credential or an email
address are replaced by `[redacted]`: a defence in depth, since no call site logs them on purpose.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import traceback
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

# The `extra` fields a log line may carry; anything else passed in `extra` is not written.
CONTEXT_FIELDS = ("conversion_id", "postback_id", "kind", "destination_id", "campaign_id", "partition", "offset")
REDACTED = "[redacted]"
_SHAPES = re.compile(
    r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"  # Authorization: Bearer <token>
    r"|((?:access_token|client_secret|refresh_token|secret|token|password)=)[^&\s\"']+"  # query-string credentials
    r"|[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"  # an email address
)
# Environment variables whose values are secrets (dispatchers/secrets.py reads POSTBACK_SECRET_*).
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

    def __call__(self, text: str) -> str:
        if self._values is not None:
            text = self._values.sub(REDACTED, text)
        return _SHAPES.sub(_keep_prefix, text)


def _keep_prefix(match: re.Match[str]) -> str:
    prefix = match.group(1) or match.group(2) or ""
    return prefix + REDACTED


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
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value if isinstance(value, int) else self._redact(str(value))
        if record.exc_info:
            line["error"] = self._redact("".join(traceback.format_exception(*record.exc_info)).rstrip())
        return orjson.dumps(line).decode("utf-8")


class TextFormatter(logging.Formatter):
    def __init__(self, redact: Redactor) -> None:
        super().__init__("[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s")
        self._redact = redact

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        context = [
            f"{name}={getattr(record, name)}" for name in CONTEXT_FIELDS if getattr(record, name, None) is not None
        ]
        return self._redact(f"{text} [{' '.join(context)}]" if context else text)


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
