"""What the authority (host and port) of an S2S URL may be: one canonical spelling, read alike by every parser.

Parsers disagree about any other spelling. The WHATWG URL parser and `inet_aton` read `2130706433`,
`127.1`, `0177.0.0.1` and `0x7f.0.0.1` all as 127.0.0.1; a backslash ends the authority for WHATWG but
not for Python's `urlsplit` (`http://evil.example\\@good.example/` has two different hosts); IDNA
folds fullwidth digits to ASCII; `user:pass@` becomes an Authorization header. A URL written so is
refused when its rule is published (`streams/core/url_template.py`) and, should one still reach a
dispatcher, at once as a final rejection (`dispatchers/core/s2s.py`), not retried for a day.

Canonical: a DNS name of ASCII labels (letters, digits, `-` and `_`, no `-` at either end, at most 63
characters each, 253 in all; upper case is allowed, a name is compared lower-cased), or a dotted quad
of four decimal octets 0-255 without leading zeros, or a valid IPv6 address in brackets; then at
most a port 1-65535 without leading zeros. A name whose last label is a number (`example.123`,
`example.0x1`) is read as an IPv4 address by WHATWG, so it must be a dotted quad.
"""

from __future__ import annotations

import ipaddress
import re

_WHITESPACE_OR_CONTROL = re.compile(r"[\x00-\x20\x7f-\x9f]|\s")
_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
# What WHATWG's "ends in a number" checker reads as an IPv4 part: decimal digits, or 0x and hex digits.
_NUMERIC_LABEL = re.compile(r"[0-9]+|0[xX][0-9A-Fa-f]*")
_OCTET = re.compile(r"0|[1-9][0-9]{0,2}")
_PORT = re.compile(r"[1-9][0-9]{0,4}")

NUMERIC_HOST = (
    "a numeric host must be four decimal octets 0-255 without leading zeros, such as 192.0.2.1 "
    "(not 3221225985, 192.2.1, 0300.0.2.1 or 0xc0.0.2.1)"
)


def host_problem(authority: str) -> str | None:
    """Why `authority` (a URL's netloc: host and optional port) is not canonical, or None when it is.

    The reason names the rule broken, never the text itself (it may hold a user's password).
    """
    if not authority:
        return "the URL has no host"
    if _WHITESPACE_OR_CONTROL.search(authority):
        return "whitespace and control characters are not allowed in the host"
    if "\\" in authority:
        return "a backslash is not allowed in the host (parsers disagree where the host ends)"
    if "@" in authority:
        return "userinfo (user:password@) is not allowed before the host"
    if not authority.isascii():
        return "the host must be ASCII: write an internationalised name in its punycode form (xn--...)"
    if "%" in authority:
        return "'%' is not allowed in the host (no percent-encoding, no IPv6 zone id)"
    if authority.startswith("["):
        end = authority.find("]")
        literal, rest = (authority[1:end], authority[end + 1 :]) if end > 0 else ("", "")
        try:
            ipaddress.IPv6Address(literal)
        except ValueError:
            return "an IPv6 host must be a valid IPv6 address in brackets, followed by nothing but a port"
        if rest and not rest.startswith(":"):
            return "an IPv6 host must be a valid IPv6 address in brackets, followed by nothing but a port"
        return _port_problem(rest[1:]) if rest else None
    host, colon, port = authority.partition(":")
    if "[" in authority or "]" in authority or ":" in port:
        return "an IPv6 host must be a valid IPv6 address in brackets, followed by nothing but a port"
    if colon:
        problem = _port_problem(port)
        if problem:
            return problem
    return _name_problem(host)


def _port_problem(port: str) -> str | None:
    if _PORT.fullmatch(port) and int(port) <= 65535:
        return None
    return "the port must be a number from 1 to 65535 without leading zeros"


def _name_problem(host: str) -> str | None:
    if not host:
        return "the URL has no host"
    labels = host.split(".")
    if "" in labels:
        return "the host has an empty label (a leading, trailing or doubled dot)"
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        if len(labels) == 4 and all(_OCTET.fullmatch(label) and int(label) <= 255 for label in labels):
            return None
        return NUMERIC_HOST
    if len(host) > 253:
        return "the host is longer than 253 characters"
    if not all(_LABEL.fullmatch(label) for label in labels):
        return (
            "each label of the host may hold only letters, digits, '-' and '_' "
            "(no '-' at either end), up to 63 characters"
        )
    return None
