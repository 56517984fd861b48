"""`.invalid` records: the refused input kept, with its reason and its source position, and no personal data.

The original value is kept so that it can be fixed and replayed, except for personal data, which
must not reach any topic we write:
- in a JSON object, every field of `user` but `user_agent` (known or not) is replaced by
  `sha256:<hex>` of its normalised form (`[redacted]` when it is not a string; a `user` that is not an
  object is replaced whole), and credentials, email and IP addresses anywhere else in its strings are
  masked (schemas/redaction.py);
- in anything else (not JSON, a JSON array or string, broken JSON), credentials, email addresses, IP
  addresses and phone-like digit runs are masked in the text;
- a value that is not UTF-8 is redacted the same way on its decodable text, its other bytes kept as
  they were (then base64, as before);
- a key holding an email, IP address or phone number is replaced by `sha256:<hex>` of itself
  (`redacted_fields` says `key`), in the record and as the Kafka key it is written under.
Every record is bounded: a value whose copy would be larger than `schemas.redaction.MAX_KEPT_BYTES`
keeps a redacted prefix instead, with the original's size and SHA-256 (`value_truncated`), so that
no input can make an output the producer cannot write (which would stop the partition). The masking,
the bound and the key rule are schemas/redaction.py's, shared with the dispatchers' dead-letter records.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import orjson

from schemas.errors import InvalidInput
from schemas.redaction import keep_copy, keep_key, mask_text
from streams.core.pii import normalize_email, normalize_external_id, normalize_phone_e164, sha256_hex

SCHEMA_VERSION = 1

# The one field of `user` that is not personal data (the contract lists it); every other field, known
# or not, is hashed.
_KEPT_USER_FIELDS = frozenset({"user_agent"})
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


def _hash_user_field(name: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        return "[redacted]"
    normalize = _PERSONAL_USER_FIELDS.get(name, str.strip)
    return "sha256:" + sha256_hex(normalize(value) or value.strip())


def _mask_strings(value: Any, found: list[str]) -> Any:
    """Email and IP addresses masked in every string of a JSON value (keys included)."""
    if isinstance(value, str):
        # Not phones: the digits of a JSON value's ids and amounts are not read as phone numbers.
        masked, kinds = mask_text(value, phones=False)
        found.extend(kind for kind in kinds if kind not in found)
        return masked
    if isinstance(value, list):
        return [_mask_strings(item, found) for item in value]
    if isinstance(value, dict):
        return {_mask_strings(key, found): _mask_strings(item, found) for key, item in value.items()}
    return value


def _redact_json_object(data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    redacted: list[str] = []
    user = data.pop("user", None)
    found: list[str] = []
    data = _mask_strings(data, found)
    if isinstance(user, dict):
        hashed = {}
        for name, field_value in user.items():
            if field_value is None or field_value == "" or (name in _KEPT_USER_FIELDS and isinstance(field_value, str)):
                hashed[name] = field_value
                continue
            hashed[name] = _hash_user_field(name, field_value)
            redacted.append(f"user.{name}")
        data["user"] = hashed
    elif user is not None:
        data["user"] = "[redacted]"
        redacted.append("user")
    return data, redacted + found


def redact_text(text: str) -> tuple[str, list[str]]:
    """A value's text with its personal data hashed or masked, and what was redacted (see the module doc)."""
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        # not JSON, or JSON without fields (a bare string may well be an email address)
        return mask_text(text)
    redacted_data, redacted = _redact_json_object(data)
    if not redacted:
        return text, []  # nothing personal: kept byte for byte
    return orjson.dumps(redacted_data).decode("utf-8"), redacted


def redact_personal_data(value: bytes) -> tuple[str, str, list[str]]:
    """(value text, encoding, redacted field names) with personal data replaced by hashes or masks."""
    copy = keep_copy(value, redact_text)
    return copy.text, copy.encoding, copy.redacted


def redact_key(key: bytes | None) -> tuple[bytes | None, bool]:
    """The Kafka key a refused record is kept under (schemas/redaction.py `keep_key`)."""
    return keep_key(key)


def invalid_record(
    error: InvalidInput,
    key: bytes | None,
    value: bytes | None,
    source: dict[str, Any],
    rejected_at: str,
) -> dict[str, Any]:
    """The message for `<topic>.invalid`, as `schemas/invalid-record.schema.json` describes it."""
    record: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "source": source}
    redacted: list[str] = []
    kept_key, key_redacted = redact_key(key)
    if kept_key is None:
        record["key"] = None
    else:
        record["key"], record["key_encoding"] = _as_text(kept_key)
        if key_redacted:
            redacted.append("key")
    if value is None:
        record.update(value=None, value_encoding="null")
    else:
        copy = keep_copy(value, redact_text)
        redacted.extend(copy.redacted)
        record.update(value=copy.text, value_encoding=copy.encoding)
        if copy.truncated:
            record.update(value_truncated=True, value_bytes=copy.size, value_sha256=copy.sha256)
    record["redacted_fields"] = redacted
    error_body: dict[str, Any] = {"reason": error.reason, "message": error.message, "field": error.field}
    if error.errors:
        error_body["errors"] = [{"field": e.field, "message": e.message} for e in error.errors]
    record["error"] = error_body
    record["rejected_at"] = rejected_at
    return record
