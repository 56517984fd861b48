"""What no topic and no log line may carry, and how it is taken out of text: credentials, personal data.

One scrubber for every place that writes text it did not make: the log formatter (service/logs.py),
`.invalid` records of refused input (streams/core/invalid_records.py) and delivery records that echo a
destination's answer (dispatchers/core/delivery_records.py). It removes bearer tokens, URL userinfo,
credential parameters (`CREDENTIAL_NAMES`), email addresses, IPv4 and IPv6 addresses (not unspecified
or loopback ones) and phone-like numbers. Every pattern is linear in the length of the text, so a
hostile megabyte takes well under a second, not hours. Pure: no I/O.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import orjson

REDACTED = "[redacted]"
Marker = Callable[[str], str]  # kind ("credential", "email", "ip", "phone") -> what replaces it


def plain_marker(kind: str) -> str:
    """Every kind replaced by `[redacted]`, as log lines have it."""
    return REDACTED


# Parameter names whose values are credentials (README "Logs"), in any case: alone or as the last part
# of a longer name after `_`, `-` or `.` (api_key, x-api-key, access_token, client_secret, hmac_sig).
CREDENTIAL_NAMES = (
    "key",
    "apikey",
    "token",
    "auth",
    "authorization",
    "sig",
    "sign",
    "signature",
    "hmac",
    "password",
    "passwd",
    "pwd",
    "pass",
    "secret",
    "credential",
    "credentials",
)
_NAME = "(?:" + "|".join(sorted(CREDENTIAL_NAMES, key=len, reverse=True)) + ")"
# Every pattern below is linear in the length of the text: each one that could run over a long stretch
# of characters starts with a lookbehind that fails inside a stretch it could have started earlier, so a
# stretch without a match is read once, not once per position (the old email pattern was quadratic:
# 30 s for 70 KB of letters), and the others are bounded in length.
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+")
# `name=value` as in a query string or a form, with `=` (and a `?`, `&` or `_` before the name) maybe
# URL-encoded once or twice; the value runs to the next `&`, whitespace, quote, `<`, `>`, `\` or `#`.
# Or `"name": "value"` as in JSON or a Python repr.
_CREDENTIAL = re.compile(
    rf"""(?i)((?:(?<![A-Za-z0-9])|(?<=%3F|%26|%5F)|(?<=%253F|%2526|%255F)){_NAME}(?:=|%(?:25)?3D))[^&\s"'<>\\#]+"""
    rf"""|((["'])(?:[\w.-]*[_.-])?{_NAME}\3\s*:\s*["'])(?:[^"'\\]|\\.)*"""
)
# The userinfo of a URL (`https://user:password@host/`), whatever its characters.
_USERINFO = re.compile(r"((?<![A-Za-z0-9+.-])[A-Za-z][A-Za-z0-9+.-]*://)[^/?#@\s]+@")
_CREDENTIAL_FIELD = re.compile(rf"(?is)(?:.*[^A-Za-z0-9])?{_NAME}")
# An email address, its `@` maybe URL-encoded (`%40`).
_EMAIL = re.compile(
    r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+(?:@|%(?:25)?40)(?:[A-Za-z0-9-]{1,63}\.){1,8}[A-Za-z]{2,24}"
)
_IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?!\.?\d)")
# Eight groups, or fewer around one `::`; not glued to a word (`std::vector`) or to more colons (`10:00:00`
# has neither shape). Runs after _IPV4, so `::ffff:192.0.2.1` keeps only `::ffff:`.
_H = "[0-9A-Fa-f]{1,4}"
_IPV6 = re.compile(rf"(?<![\w:.])(?:(?:{_H}:){{7}}{_H}|(?:{_H}(?::{_H}){{0,6}})?::(?:{_H}(?::{_H}){{0,6}})?)(?![\w:])")
# 7 to 15 digits (E.164's longest), single spaces, hyphens, parentheses, `+` or `%20` between them, after a
# `+` (or `%2B`) or on their own: not glued to a word, a `.`, `/`, `:` or `-` (ids, decimals, versions,
# positions such as 3/1234567, destinations such as meta:1234567890) and not a date (2026-11-20 10...).
# After a `+`, dots separate groups too (+1.555.123.4567): no decimal or version starts with `+`.
_PHONE = re.compile(
    r"(?:(?<![\w+])\+|%2[Bb])\d(?:(?:[ ().+-]|%20){0,2}\d){6,14}(?![\w-]|\.\d)"
    r"|(?<![\w+./:%-])(?!\d{4}-\d\d-\d\d(?!\d))\d(?:(?:[ ()+-]|%20){0,2}\d){6,14}(?![\w-]|\.\d)"
)


def scrub(text: str, *, phones: bool = True, mark: Marker = plain_marker, found: set[str] | None = None) -> str:
    """`text` without credentials and personal data; `found` (when given) collects the kinds removed.

    `phones=False` keeps digit runs (the value of an id field); `mark` says what replaces each kind.
    """

    def replace(kind: str, keep: Callable[[re.Match[str]], str]) -> Callable[[re.Match[str]], str]:
        def one(match: re.Match[str]) -> str:
            kept = keep(match)
            if kept == match.group():
                return kept
            if found is not None:
                found.add(kind)
            return kept.replace(REDACTED, mark(kind))

        return one

    text = _BEARER.sub(replace("credential", _keep_prefix), text)
    # Each pattern needs a character the others leave alone: most strings skip most of them.
    if "=" in text or ":" in text or "%" in text:
        text = _CREDENTIAL.sub(replace("credential", _keep_prefix), text)
    if "://" in text:
        text = _USERINFO.sub(replace("credential", _keep_prefix_and_at), text)
    if "@" in text or "%" in text:
        text = _EMAIL.sub(replace("email", lambda _: REDACTED), text)
    if "." in text:
        text = _IPV4.sub(replace("ip", _address), text)
    if ":" in text:
        text = _IPV6.sub(replace("ip", _address), text)
    return _PHONE.sub(replace("phone", _phone), text) if phones else text


def is_credential_name(name: str) -> bool:
    """Whether a field or key of this name holds a credential (`x_api_key`, `Password`): its value is redacted."""
    return _CREDENTIAL_FIELD.fullmatch(name) is not None


def _keep_prefix(match: re.Match[str]) -> str:
    return (match.group(1) or match.group(2) or "") + REDACTED


def _keep_prefix_and_at(match: re.Match[str]) -> str:
    return match.group(1) + REDACTED + "@"


def _address(match: re.Match[str]) -> str:
    address = match.group()
    if address in ("0.0.0.0", "::", "::1") or address.startswith("127."):
        return address  # unspecified or loopback: where a process listens, never a person's address
    return REDACTED


def _phone(match: re.Match[str]) -> str:
    digits = match.group()
    if digits.isdigit() and len(digits) in (10, 13) and digits[0] == "1":
        return digits  # a Unix time in seconds or milliseconds (2001-2033), not a phone number
    return "%2B" + REDACTED if digits[:1] == "%" else REDACTED


# --- refused input kept in a topic: redacted and bounded -------------------------------------------------

# A refused record's copy is kept in full up to this many bytes once redacted and JSON-escaped (control
# bytes take six each): far below any broker's message limit (1 MiB by default), above the largest
# conversion accepted by default (64 KiB). A larger one keeps a prefix, its size and its hash, so that no
# input can make an output the producer cannot write (which would stop its partition).
MAX_KEPT_BYTES = 128 * 1024
# What a shortened copy keeps: enough to recognise the record, small enough to read in a console.
KEPT_PREFIX_CHARS = 2048
# Ids are at most 256 characters (conversion.schema.json); a longer key is kept as its hash.
MAX_KEPT_KEY_BYTES = 1024
TextRedactor = Callable[[str], tuple[str, list[str]]]  # text -> (redacted text, what was redacted)


def _kind_marker(kind: str) -> str:
    return f"[{kind} redacted]"


def mask_text(text: str, *, phones: bool = True) -> tuple[str, list[str]]:
    """`text` with credentials, email and IP addresses and (unless `phones=False`) phone-like numbers
    replaced by `[<kind> redacted]`; the kinds found, as `text:<kind>`."""
    found: set[str] = set()
    masked = scrub(text, phones=phones, mark=_kind_marker, found=found)
    return masked, [f"text:{kind}" for kind in sorted(found)]


@dataclass(frozen=True, slots=True)
class KeptCopy:
    """A refused record's bytes as a topic may keep them: redacted, and bounded."""

    text: str  # the value's (redacted) text, or base64 of its bytes when they are not UTF-8
    encoding: Literal["text", "base64"]
    redacted: list[str]  # what was redacted, e.g. `text:email`, `user.phone`
    truncated: bool = False  # `text` is a prefix; `size` and `sha256` describe the original
    size: int = 0
    sha256: str = ""


def keep_copy(value: bytes, redact_text: TextRedactor = mask_text) -> KeptCopy:
    """The copy of a refused record's bytes that a topic may hold.

    UTF-8 text goes through `redact_text` (by default `mask_text`); other bytes keep their decodable
    text masked and the rest as they were, in base64. A copy larger than MAX_KEPT_BYTES becomes a
    prefix of it, with the original's size and SHA-256.
    """
    # A value far over the limit is not redacted whole only to be cut.
    head = value if len(value) <= 4 * MAX_KEPT_BYTES else value[: 4 * MAX_KEPT_BYTES]
    try:
        text, redacted = redact_text(head.decode("utf-8"))
        encoding: Literal["text", "base64"] = "text"
    except UnicodeDecodeError:
        masked, redacted = mask_text(head.decode("utf-8", errors="surrogateescape"))
        text = base64.b64encode(masked.encode("utf-8", errors="surrogateescape")).decode("ascii")
        encoding = "base64"
    if head is value and len(orjson.dumps(text)) <= MAX_KEPT_BYTES:
        return KeptCopy(text, encoding, redacted)
    if encoding == "base64":
        prefix = base64.b64encode(base64.b64decode(text)[: KEPT_PREFIX_CHARS // 2]).decode("ascii")
    else:
        prefix = text[:KEPT_PREFIX_CHARS]
    return KeptCopy(prefix, encoding, redacted, True, len(value), hashlib.sha256(value).hexdigest())


def keep_key(key: bytes | None) -> tuple[bytes | None, bool]:
    """The Kafka key a refused record is kept under: itself, or `sha256:<hex>` of it when it holds
    personal data or credentials, or is longer than any id (True: it was replaced)."""
    if key is None:
        return None, False
    if len(key) > MAX_KEPT_KEY_BYTES or mask_text(key.decode("utf-8", errors="surrogateescape"))[1]:
        return ("sha256:" + hashlib.sha256(key).hexdigest()).encode("ascii"), True
    return key, False
