"""Conversion intake, the way affiliate networks call a tracker: postback fields -> a conversion event.

Pure: no I/O. Networks fill a postback URL's macros and call it (`?clickid=...&status=...&sum=...`);
every field arrives as text, an unfilled macro often as an empty value, and extra macros nobody
asked for are common. So: an empty value counts as absent, unknown fields are ignored, and each
documented field is checked against its own rule (`PARAMETERS`, also the OpenAPI description), so
an error names the field the caller sent (`clickid`, `sum`), not the event field it becomes.

What a network sends by mistake is refused rather than guessed at: a value still holding a macro
(`{clickid}`, `[CLICK_ID]`, `#clickid#`, see `MACRO_PATTERN`), text that is not UTF-8, a field
given twice. Each refusal carries a reason (`RefusedField.reason`) so that a client can tell them
apart. This applies to the documented fields (`PARAMETERS`); the intake secret is only compared,
and every other field is ignored, its encoding and repetitions included.
"""

from __future__ import annotations

import codecs
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import unquote_to_bytes

import orjson

from postback_router.api.auth import SECRET_FIELD
from schemas.errors import FieldError, InvalidInput
from streams.core.conversion import CLICK_ID_FIELDS, DEFAULT_TYPE, parse_conversion

STATUSES = ("approved", "pending", "declined", "other")
REQUIRED = ("clickid", "campaign_id")
SUB_FIELDS = tuple(f"sub{n}" for n in range(1, 21))
# The decimal strings conversion.schema.json accepts, or nothing (an unfilled payout macro)
_DECIMAL_OR_EMPTY = r"^([0-9]{1,18}(\.[0-9]{1,12})?)?$"

# An unfilled macro: a delimiter pair around a macro-like name, anywhere in the value. The name
# starts with an ASCII letter or `_` and goes on with letters, digits, `_`, `-`, `.` (64 at most),
# which is how networks name theirs: `{clickid}`, `{sub1}`, `[CLICK_ID]`, `#clickid#`, `{aff_sub.2}`.
# Relatives match through the inner pair: `{{clickid}}`, `${clickid}`. A delimiter may still be
# percent-encoded once or more (`%7Bclickid%7D`, `%5BCLICK_ID%5D`, `%23s1%23`, `%257B...`): a
# network that encoded its template before filling it. Not macros, so never refused: a lone or
# unpaired delimiter (`a#b`, `x[1`, `{a]`), an empty pair (`{}`, `##`), a name that starts with a
# digit or holds other characters (`[1]`, `#2#`, `{"a":1}`, `{a b}`, `{a@b}`), `%name%` and
# `<name>` forms. The price: free text in a sub that brackets a word (`[promo]`) is refused too.
# Written in the common subset of Python and ECMA-262 regular expressions: the OpenAPI document
# carries it as `"not": {"pattern": ...}` on every parameter.
_MACRO_NAME = "[A-Za-z_][A-Za-z0-9_.-]{0,63}"
MACRO_PATTERN = "|".join(
    f"(?:{opening}){_MACRO_NAME}(?:{closing})"
    for opening, closing in (
        ("\\{|%(?:25)*7[Bb]", "\\}|%(?:25)*7[Dd]"),
        ("\\[|%(?:25)*5[Bb]", "\\]|%(?:25)*5[Dd]"),
        ("#|%(?:25)*23", "#|%(?:25)*23"),
    )
)
_MACRO = re.compile(MACRO_PATTERN)


def holds_macro(value: str) -> bool:
    """Whether `value` still holds a macro the network did not fill (see `MACRO_PATTERN`)."""
    return _MACRO.search(value) is not None


def _text(max_length: int, min_length: int = 0) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string", "maxLength": max_length}
    if min_length:
        schema["minLength"] = min_length
    return schema


def _no_macro(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "not": {"pattern": MACRO_PATTERN}}


# Every documented field, with the JSON Schema of its value (lengths as in conversion.schema.json).
PARAMETERS: dict[str, dict[str, Any]] = {
    name: _no_macro(schema)
    for name, schema in {
        "clickid": _text(512, 1),
        "campaign_id": _text(256, 1),
        "conversion_id": _text(256),
        "offer_source_id": _text(256),
        "type": _text(128),
        "status": {"type": "string", "enum": ["", *STATUSES]},
        "payout": {"type": "string", "pattern": _DECIMAL_OR_EMPTY},
        "sum": {"type": "string", "pattern": _DECIMAL_OR_EMPTY},
        "currency": {"type": "string", "pattern": "^([A-Z]{3})?$"},
        "txid": _text(512),
        **{name: _text(512) for name in CLICK_ID_FIELDS},
        **{name: _text(1024) for name in SUB_FIELDS},
    }.items()
}
# What intake reads of a request: the documented fields and the intake secret.
READ_FIELDS = frozenset({*PARAMETERS, SECRET_FIELD})

# Why a postback is refused (the `reason` of a 400's body and of each of its `fields`).
IntakeReason = Literal["not_utf8", "repeated_field", "unfilled_macro", "missing_field", "invalid_value"]


@dataclass(frozen=True, slots=True)
class RefusedField(FieldError):
    reason: IntakeReason = "invalid_value"


class PostbackRefused(Exception):
    """A postback refused with 400; `errors` names every failing field (as sent)."""

    def __init__(self, errors: list[RefusedField]) -> None:
        super().__init__("; ".join(f"{e.field}: {e.message}" for e in errors[:5]))
        self.errors = errors

    @property
    def reason(self) -> IntakeReason:
        """The request's reason: the first of not_utf8, repeated_field, unfilled_macro that any field
        has (an unfilled macro is what to fix first: other errors often follow from it), else
        invalid_value."""
        found = {e.reason for e in self.errors}
        for reason in ("not_utf8", "repeated_field", "unfilled_macro"):
            if reason in found:
                return reason
        return "invalid_value"


# A fixed namespace: the same (campaign, click, type, txid) yields the same id on every replica, forever.
CONVERSION_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://postback-router.dev/conversion-id")


def derive_conversion_id(campaign_id: str, click_id: str, type_: str, transaction_id: str | None) -> str:
    """The conversion_id of a postback that names none.

    A repeated postback for the same click, type and transaction (a status change, a re-sent call)
    is then an update of the same conversion (contract §2.5), while a second type for the same click
    (lead, then deposit) or another transaction (a second deposit) is a conversion of its own.
    """
    # \x1f (unit separator) cannot be confused with text inside a field, unlike a printable separator
    name = "\x1f".join((campaign_id, click_id, type_, transaction_id or ""))
    return str(uuid.uuid5(CONVERSION_ID_NAMESPACE, name))


def split_urlencoded(raw: bytes) -> list[tuple[bytes, bytes]]:
    """`a=1&b=%7Bx%7D+y` -> [(b"a", b"1"), (b"b", b"{x} y")]: a query string or form body split and
    percent-decoded once (`+` is a space; a `%` not followed by two hex digits stays as it is), as
    browsers encode forms and aiohttp reads query strings, but left as bytes: decoding the text is
    `read_fields`' job, and it refuses what is not text instead of replacing it with U+FFFD."""
    pairs = []
    for part in raw.split(b"&"):
        if not part:
            continue
        name, _, value = part.partition(b"=")
        pairs.append((unquote_to_bytes(name.replace(b"+", b" ")), unquote_to_bytes(value.replace(b"+", b" "))))
    return pairs


def read_fields(*sources: tuple[Iterable[tuple[bytes, bytes]], str]) -> tuple[dict[str, str], list[RefusedField]]:
    """The fields intake reads, from every source together (the query string's pairs, then the
    form's, each with its charset), and what is wrong with them, each named: `not_utf8` for a value
    that is not text in its charset (for UTF-8: an invalid sequence, or a surrogate such as
    `%ED%A0%80`), `repeated_field` for a field given more than once, in one source or across them
    (which value the network meant is unknowable), even with the same value.

    The fields hold the first value of each that decodes, so that the intake secret can be checked
    before the errors are answered: a caller without the secret is told that first. The secret is
    not a conversion field and is only compared (the header, else its first value that decodes
    authenticates): given in the query and the form, or not decodable, it is no mistake. A name
    that does not decode is not one intake reads (those are ASCII), so it is ignored like every
    unknown field, and so are unknown fields' values and repetitions. A charset must be one Python
    knows (`known_charset`).
    """
    fields: dict[str, str] = {}
    given: dict[str, int] = {}
    not_text: dict[str, RefusedField] = {}
    for pairs, charset in sources:
        for raw_name, raw_value in pairs:
            try:
                name = raw_name.decode(charset)
            except UnicodeDecodeError:
                continue
            if name not in READ_FIELDS:
                continue
            checked = name in PARAMETERS  # the secret is only compared: see above
            if checked:
                given[name] = given.get(name, 0) + 1
            try:
                fields.setdefault(name, raw_value.decode(charset))
            except UnicodeDecodeError:
                if checked:
                    message = _NOT_UTF8 if codecs.lookup(charset).name == "utf-8" else f"is not text in {charset}"
                    not_text.setdefault(name, RefusedField(name, message, "not_utf8"))
    repeated = [RefusedField(name, _REPEATED, "repeated_field") for name, count in given.items() if count > 1]
    return fields, [*not_text.values(), *repeated]


def known_charset(charset: str) -> bool:
    try:
        codecs.lookup(charset)
    except LookupError:
        return False
    return True


_NOT_UTF8 = "is not UTF-8 text (an invalid byte sequence or a lone surrogate)"
_REPEATED = "is given more than once: send each field once"


def _encodable(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def conversion_from_postback(fields: Mapping[str, str], received_at: datetime, max_bytes: int) -> dict[str, Any]:
    """The conversion event for a postback's fields; raises PostbackRefused naming every failing field.

    `occurred_at` is `received_at` (networks do not send the time of the conversion in a usable
    form; a repeat of a conversion taken in before keeps its first one: `keep_first_occurred_at`).
    `payout` wins over `sum` when both are given; both are checked.
    """
    errors = parameter_errors(fields)
    if errors:
        raise PostbackRefused(errors)

    def get(name: str) -> str | None:
        return fields.get(name) or None

    click_id = get("clickid") or ""
    campaign_id = get("campaign_id") or ""
    type_ = get("type") or DEFAULT_TYPE
    transaction_id = get("txid")
    event: dict[str, Any] = {
        "conversion_id": get("conversion_id") or derive_conversion_id(campaign_id, click_id, type_, transaction_id),
        "click_id": click_id,
        "campaign_id": campaign_id,
        "offer_source_id": get("offer_source_id"),
        "type": type_,
        "status": get("status"),
        "payout": get("payout") or get("sum"),
        "currency": get("currency"),
        "transaction_id": transaction_id,
        "occurred_at": received_at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "click_ids": {name: fields[name] for name in CLICK_ID_FIELDS if fields.get(name)},
        "subs": {name: fields[name] for name in SUB_FIELDS if fields.get(name)},
    }
    event = {name: value for name, value in event.items() if value not in (None, {})}
    # The worker's own check, so that what is accepted here is never refused downstream.
    try:
        parse_conversion(event["conversion_id"].encode("utf-8"), orjson.dumps(event), max_bytes)
    except InvalidInput as error:
        errors = [RefusedField(parameter_name(e.field), e.message) for e in _field_errors(error)]
        raise PostbackRefused(errors) from None
    return event


def keep_first_occurred_at(event: Mapping[str, Any], known: Mapping[str, Any] | None) -> dict[str, Any]:
    """`event`, with the `occurred_at` of `known` (the index entry of the same conversion_id, when
    the api took it in before): calling the same postback again moves nothing in time."""
    occurred_at = known.get("occurred_at") if known is not None else None
    if isinstance(occurred_at, str) and occurred_at:
        return {**event, "occurred_at": occurred_at}
    return dict(event)


def parameter_errors(fields: Mapping[str, str]) -> list[RefusedField]:
    """Every documented field whose value breaks its rule, and every required field that is missing.

    A value holding an unfilled macro, or a lone surrogate, is refused for that alone: its other
    rules would only describe the symptom.
    """
    errors: list[RefusedField] = []
    for name, schema in PARAMETERS.items():
        value = fields.get(name)
        if not value:
            if name in REQUIRED:
                errors.append(RefusedField(name, "is required", "missing_field"))
            continue
        if not _encodable(value):
            errors.append(RefusedField(name, _NOT_UTF8, "not_utf8"))
        elif holds_macro(value):
            errors.append(RefusedField(name, _UNFILLED_MACRO, "unfilled_macro"))
        elif len(value) > schema.get("maxLength", len(value)):
            errors.append(RefusedField(name, f"must be at most {schema['maxLength']} characters"))
        elif "enum" in schema and value not in schema["enum"]:
            errors.append(RefusedField(name, "must be one of " + ", ".join(v for v in schema["enum"] if v)))
        elif "pattern" in schema and not re.fullmatch(schema["pattern"], value):  # "$" alone allows a final \n
            errors.append(RefusedField(name, _PATTERN_MESSAGES[name]))
    return errors


# No value is echoed (it may be personal data), the macro included.
_UNFILLED_MACRO = (
    "holds a macro the network did not fill in (a name between {}, [] or ##, maybe percent-encoded): "
    "check the postback URL configured at the network"
)


_PATTERN_MESSAGES = {
    "payout": "must be a decimal number such as 12.50 (at most 18 digits before the point and 12 after)",
    "sum": "must be a decimal number such as 12.50 (at most 18 digits before the point and 12 after)",
    "currency": "must be an ISO 4217 code in capitals, such as USD",
}

_EVENT_TO_PARAMETER = {"click_id": "clickid", "transaction_id": "txid"}


def parameter_name(event_field: str | None) -> str:
    """The intake field an event field came from: click_id -> clickid, click_ids.gclid -> gclid."""
    if event_field is None:
        return "(request)"
    head, _, tail = event_field.partition(".")
    if head in ("click_ids", "subs") and tail:
        return tail
    return _EVENT_TO_PARAMETER.get(event_field, event_field)


def _field_errors(error: InvalidInput) -> list[FieldError]:
    return error.errors or [FieldError(error.field or "(request)", error.message)]
