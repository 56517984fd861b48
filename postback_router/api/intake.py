"""Conversion intake, the way affiliate networks call a tracker: postback fields -> a conversion event.

Pure: no I/O. Networks fill a postback URL's macros and call it (`?clickid=...&status=...&sum=...`);
every field arrives as text, an unfilled macro often as an empty value, and extra macros nobody
asked for are common. So: an empty value counts as absent, unknown fields are ignored, and each
documented field is checked against its own rule (`PARAMETERS`, also the OpenAPI description), so
an error names the field the caller sent (`clickid`, `sum`), not the event field it becomes.

Each field may come under the names networks use for trackers (`ALIASES`: `cid`, `subid`, `sum`,
`goal`, ...), and the status in the network's own words (`sale`, `HOLD`), mapped through status maps
(schemas/status_maps.py). A call may leave the campaign out: the worker completes the conversion from
its click (streams/click_join.py). docs/intake.md says all of it for users.

What a network sends by mistake is refused rather than guessed at: a value still holding a macro
(`{clickid}`, `[CLICK_ID]`, `#clickid#`, see `MACRO_PATTERN`), text that is not UTF-8, a field
given twice, two names of one field that disagree. Each refusal carries a reason
(`RefusedField.reason`) so that a client can tell them apart. This applies to the documented
fields (`PARAMETERS`); the intake secret is only compared, and every other field is ignored, its
encoding and repetitions included.
"""

from __future__ import annotations

import codecs
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import unquote_to_bytes

import orjson

from postback_router.api.auth import SECRET_FIELD
from schemas.errors import FieldError, InvalidInput
from schemas.status_maps import DEFAULT_STATUS_MAP, MAX_STATUS_LENGTH, accepted_statuses, folded, map_status
from streams.core.conversion import CLICK_ID_FIELDS, DEFAULT_TYPE, conversion_key, parse_conversion

# campaign_id may be left out: the worker completes such a conversion from its click (the `clicks`
# topic, streams/click_join.py); it is then published under its click_id (`conversion_key`).
REQUIRED = ("clickid",)
# The names networks give a field when they call a tracker, canonical name first: RedTrack's
# `clickid`, `sum` and `type`, Voluum's `cid`, Keitaro's `subid`, and the names in this api's
# conversion events (`click_id`, `transaction_id`). `clickid` is required as any one of its names.
ALIASES: Mapping[str, tuple[str, ...]] = {
    "clickid": ("clickid", "click_id", "cid", "subid"),
    "payout": ("payout", "sum", "amount"),
    "type": ("type", "event", "goal"),
    "txid": ("txid", "transaction_id"),
}
# Amounts: the first name given wins (`payout` over `sum` over `amount`), as `payout` has always won
# over `sum` here; networks fill a payout and a sale amount at once, and the payout is what a
# postback reports. Every other field: two of its names with different values are refused
# (`conflicting_fields`): a wrong click id, type or transaction would attribute the conversion to
# another click or merge two conversions, silently; a refused call is seen and fixed at the network.
FIRST_NAME_WINS = frozenset({"payout"})
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
        **{name: _text(512) for name in ALIASES["clickid"]},
        "campaign_id": _text(256),
        "conversion_id": _text(256),
        "offer_source_id": _text(256),
        **{name: _text(128) for name in ALIASES["type"]},
        # any text: mapped to a status by the offer source's status_map and INTAKE_STATUS_MAP
        "status": _text(MAX_STATUS_LENGTH),
        **{name: {"type": "string", "pattern": _DECIMAL_OR_EMPTY} for name in ALIASES["payout"]},
        "currency": {"type": "string", "pattern": "^([A-Z]{3})?$"},
        **{name: _text(512) for name in ALIASES["txid"]},
        **{name: _text(512) for name in CLICK_ID_FIELDS},
        **{name: _text(1024) for name in SUB_FIELDS},
    }.items()
}
# What intake reads of a request: the documented fields and the intake secret.
READ_FIELDS = frozenset({*PARAMETERS, SECRET_FIELD})

# Why a postback is refused (the `reason` of a 400's body and of each of its `fields`).
IntakeReason = Literal[
    "not_utf8", "repeated_field", "unfilled_macro", "conflicting_fields", "missing_field", "invalid_value"
]


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
        """The request's reason: the first of not_utf8, repeated_field, unfilled_macro,
        conflicting_fields that any field has (an unfilled macro is what to fix first: other errors
        often follow from it), else invalid_value."""
        found = {e.reason for e in self.errors}
        for reason in ("not_utf8", "repeated_field", "unfilled_macro", "conflicting_fields"):
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


# The default map, folded: what intake maps a status with when no setting replaces it.
DEFAULT_STATUS_MAPS: tuple[Mapping[str, str], ...] = (folded(DEFAULT_STATUS_MAP),)


def conversion_from_postback(
    fields: Mapping[str, str],
    received_at: datetime,
    max_bytes: int,
    status_maps: Sequence[Mapping[str, str]] = DEFAULT_STATUS_MAPS,
) -> dict[str, Any]:
    """The conversion event for a postback's fields; raises PostbackRefused naming every failing field.

    `occurred_at` is `received_at` (networks do not send the time of the conversion in a usable
    form; a repeat of a conversion taken in before keeps its first one: `keep_first_occurred_at`).
    Each field may come under any of its names (`ALIASES`); every name given is checked. A status
    is mapped through `status_maps` (folded maps, the offer source's first: `schemas/status_maps.py`);
    one that none knows is refused, naming the statuses accepted.
    """
    errors = parameter_errors(fields)
    chosen, conflicts = choose_aliases(fields, refused={e.field for e in errors})
    status = None
    raw_status = fields.get("status")
    if raw_status and not any(e.field == "status" for e in errors):
        status = map_status(raw_status, *status_maps)
        if status is None:
            accepted = ", ".join(accepted_statuses(*status_maps))
            errors.append(RefusedField("status", f"must be one of {accepted} (in any case)"))
    errors.extend(conflicts)
    if errors:
        raise PostbackRefused(errors)

    def get(name: str) -> str | None:
        sent_as = chosen.get(name, name)
        return fields.get(sent_as) or None

    click_id = get("clickid") or ""
    campaign_id = get("campaign_id")  # None: the worker completes the conversion from its click
    type_ = get("type") or DEFAULT_TYPE
    transaction_id = get("txid")
    event: dict[str, Any] = {
        "conversion_id": get("conversion_id")
        or derive_conversion_id(campaign_id or "", click_id, type_, transaction_id),
        "click_id": click_id,
        "campaign_id": campaign_id,
        "offer_source_id": get("offer_source_id"),
        "type": type_,
        "status": status,
        "payout": get("payout"),
        "currency": get("currency"),
        "transaction_id": transaction_id,
        "occurred_at": received_at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "click_ids": {name: fields[name] for name in CLICK_ID_FIELDS if fields.get(name)},
        "subs": {name: fields[name] for name in SUB_FIELDS if fields.get(name)},
    }
    event = {name: value for name, value in event.items() if value not in (None, {})}
    # The worker's own check, so that what is accepted here is never refused downstream.
    try:
        parse_conversion(conversion_key(event).encode("utf-8"), orjson.dumps(event), max_bytes)
    except InvalidInput as error:
        errors = [RefusedField(parameter_name(e.field, chosen), e.message) for e in _field_errors(error)]
        raise PostbackRefused(errors) from None
    return event


def choose_aliases(
    fields: Mapping[str, str], refused: frozenset[str] | set[str] = frozenset()
) -> tuple[dict[str, str], list[RefusedField]]:
    """For each field with several names (`ALIASES`), the name whose value is taken (canonical name
    -> name sent; absent when none is given), and the conflicts: two names of one field given with
    different values, each named with the other (an empty value counts as absent; the same value
    under two names is no conflict, as networks that fill one macro into two names do). Amounts
    take the first name given instead (`FIRST_NAME_WINS`). Names already `refused` (an unfilled
    macro, say) are left out of the comparison: they are answered for that alone."""
    chosen: dict[str, str] = {}
    conflicts: list[RefusedField] = []
    for canonical, names in ALIASES.items():
        given = [name for name in names if fields.get(name) and name not in refused]
        if not given:
            continue
        chosen[canonical] = given[0]
        if canonical in FIRST_NAME_WINS:
            continue
        differing = [name for name in given[1:] if fields[name] != fields[given[0]]]
        if differing:
            names_given = ", ".join(given)
            message = f"names the same field as {{others}} with another value: send one of {names_given}"
            for name in given:
                others = " and ".join(other for other in given if other != name)
                conflicts.append(RefusedField(name, message.format(others=others), "conflicting_fields"))
    return chosen, conflicts


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
            if name in REQUIRED and not any(fields.get(alias) for alias in ALIASES.get(name, ())):
                errors.append(RefusedField(name, _required_message(name), "missing_field"))
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


def _required_message(name: str) -> str:
    others = [alias for alias in ALIASES.get(name, ()) if alias != name]
    return f"is required (or one of {', '.join(others)})" if others else "is required"


# No value is echoed (it may be personal data), the macro included.
_UNFILLED_MACRO = (
    "holds a macro the network did not fill in (a name between {}, [] or ##, maybe percent-encoded): "
    "check the postback URL configured at the network"
)


_PATTERN_MESSAGES = {
    **{
        name: "must be a decimal number such as 12.50 (at most 18 digits before the point and 12 after)"
        for name in ALIASES["payout"]
    },
    "currency": "must be an ISO 4217 code in capitals, such as USD",
}

_EVENT_TO_PARAMETER = {"click_id": "clickid", "transaction_id": "txid"}


def parameter_name(event_field: str | None, chosen: Mapping[str, str] | None = None) -> str:
    """The intake field an event field came from, as sent (`chosen`: see `choose_aliases`):
    click_id -> clickid (or cid, ...), click_ids.gclid -> gclid."""
    if event_field is None:
        return "(request)"
    head, _, tail = event_field.partition(".")
    if head in ("click_ids", "subs") and tail:
        return tail
    name = _EVENT_TO_PARAMETER.get(event_field, event_field)
    return (chosen or {}).get(name, name)


def _field_errors(error: InvalidInput) -> list[FieldError]:
    return error.errors or [FieldError(error.field or "(request)", error.message)]
