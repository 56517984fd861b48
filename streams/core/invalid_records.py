"""`.invalid` records: the refused input kept whole, with its reason and its source position.

The original value is kept so that it can be fixed and replayed, with one exception: the known
personal fields of a JSON value (user.email, user.phone, user.external_id, user.ip) are replaced
by `sha256:<hex>` of their normalised form, because raw personal data must not reach a topic; a
`user` that is not an object is replaced whole. A value that is not a JSON object cannot be searched
for fields; email addresses in its text are masked.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from typing import Any

import orjson

from schemas.errors import InvalidInput
from streams.core.pii import normalize_email, normalize_external_id, normalize_phone_e164, sha256_hex

SCHEMA_VERSION = 1
_EMAIL_IN_TEXT = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
_PERSONAL_USER_FIELDS: dict[str, Callable[[str], str | None]] = {
    "email": normalize_email,
    "phone": normalize_phone_e164,
    "external_id": normalize_external_id,
    "ip": str.strip,
}


def _as_text(raw: bytes) -> tuple[str, str]:
    try:
        return raw.decode("utf-8"), "text"
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode("ascii"), "base64"


def redact_personal_data(value: bytes) -> tuple[str | None, str, list[str]]:
    """(value text, encoding, redacted field names) with personal data replaced by hashes."""
    text, encoding = _as_text(value)
    if encoding == "base64":
        return text, encoding, []
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        # not JSON, or JSON without fields (a bare string may well be an email address)
        masked, count = _EMAIL_IN_TEXT.subn("[email redacted]", text)
        return masked, encoding, (["text:email"] if count else [])
    user = data.get("user")
    if user is not None and not isinstance(user, dict):
        data["user"] = "[redacted]"
        return orjson.dumps(data).decode("utf-8"), encoding, ["user"]
    if not isinstance(user, dict):
        return text, encoding, []
    redacted: list[str] = []
    for name, normalize in _PERSONAL_USER_FIELDS.items():
        raw_field = user.get(name)
        if isinstance(raw_field, str) and raw_field:
            normalized = normalize(raw_field) or raw_field.strip()
            user[name] = "sha256:" + sha256_hex(normalized)
            redacted.append(f"user.{name}")
        elif raw_field is not None and not isinstance(raw_field, str):
            user[name] = "[redacted]"
            redacted.append(f"user.{name}")
    if not redacted:
        return text, encoding, []
    return orjson.dumps(data).decode("utf-8"), encoding, redacted


def invalid_record(
    error: InvalidInput,
    key: bytes | None,
    value: bytes | None,
    source: dict[str, Any],
    rejected_at: str,
) -> dict[str, Any]:
    """The message for `<topic>.invalid`, as `schemas/invalid-record.schema.json` describes it."""
    record: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "source": source}
    if key is None:
        record["key"] = None
    else:
        record["key"], record["key_encoding"] = _as_text(key)
    if value is None:
        record.update(value=None, value_encoding="null", redacted_fields=[])
    else:
        text, encoding, redacted = redact_personal_data(value)
        record.update(value=text, value_encoding=encoding, redacted_fields=redacted)
    error_body: dict[str, Any] = {"reason": error.reason, "message": error.message, "field": error.field}
    if error.errors:
        error_body["errors"] = [{"field": e.field, "message": e.message} for e in error.errors]
    record["error"] = error_body
    record["rejected_at"] = rejected_at
    return record
