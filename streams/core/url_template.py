"""S2S postback URL templates: checked when a rule is published, rendered when a postback fires.

A template is an http(s) URL with `{macro}` placeholders in its path, query or fragment, and a host
written the one canonical way (`schemas/hosts.py`: no `127.1`, `0x7f.0.0.1`, userinfo or backslash,
which URL parsers read differently). Macros
are the fixed names of contract §3, `{sub1}`..`{sub20}`, and `{subs.<key>}` for any other key of the
conversion's `subs`. Rendered values are percent-encoded (RFC 3986 unreserved characters only), so a
value can never add a path segment, a query parameter, a header or a line break.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from schemas.hosts import host_problem

FIXED_MACROS = frozenset(
    {
        "clickid",
        "conversion_id",
        "campaign_id",
        "external_id",
        "type",
        "status",
        "payout",
        "currency",
        "transaction_id",
        "timestamp",
    }
)
SUB_MACROS = frozenset(f"sub{n}" for n in range(1, 21))
SUBS_PREFIX = "subs."
_SUBS_KEY = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_MACRO = re.compile(r"\{([^{}]*)\}")
# Control characters and whitespace have no place in a URL; rejecting them at publish time is what
# makes CR/LF injection into the request line impossible. `\s` adds Unicode whitespace and line
# separators (U+00A0, U+2028, ...), the range the C1 controls (U+0085 NEL among them).
_FORBIDDEN = re.compile(r"[\x00-\x20\x7f-\x9f]|\s")


class TemplateError(ValueError):
    """A URL template that cannot be used; the message says why."""


@dataclass(frozen=True, slots=True)
class UrlTemplate:
    """A checked template: literal text alternating with macro names."""

    source: str
    parts: tuple[tuple[str, str | None], ...]
    host: str

    @property
    def macros(self) -> frozenset[str]:
        return frozenset(name for _, name in self.parts if name is not None)


def is_known_macro(name: str) -> bool:
    if name in FIXED_MACROS or name in SUB_MACROS:
        return True
    return name.startswith(SUBS_PREFIX) and bool(_SUBS_KEY.match(name[len(SUBS_PREFIX) :]))


def compile_url_template(template: str) -> UrlTemplate:
    """Check a template and split it into parts; raises TemplateError with the reason."""
    if _FORBIDDEN.search(template):
        raise TemplateError("URL contains whitespace or control characters")
    placeholder_free = _MACRO.sub("x", template)
    if "{" in placeholder_free or "}" in placeholder_free:
        raise TemplateError("URL has an unmatched '{' or '}'")
    try:
        split = urlsplit(template)
    except ValueError as exc:
        raise TemplateError(f"URL cannot be parsed: {exc}") from None
    if split.scheme.lower() not in ("http", "https"):
        raise TemplateError("URL scheme must be http or https")
    if "{" in split.netloc:
        raise TemplateError("macros are not allowed in the URL's host or port")
    host = split.hostname
    if not host:
        raise TemplateError("URL has no host")
    try:
        split.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise TemplateError("URL has an invalid port") from None
    problem = host_problem(split.netloc)
    if problem is not None:
        raise TemplateError(f"URL host is not canonical: {problem}")
    parts: list[tuple[str, str | None]] = []
    position = 0
    for match in _MACRO.finditer(template):
        name = match.group(1)
        if not is_known_macro(name):
            raise TemplateError(f"unknown macro {{{name}}}")
        if match.start() > position:
            parts.append((template[position : match.start()], None))
        parts.append(("", name))
        position = match.end()
    if position < len(template):
        parts.append((template[position:], None))
    return UrlTemplate(source=template, parts=tuple(parts), host=host.lower())


def render_postback_url(template: UrlTemplate, values: Mapping[str, str]) -> str:
    """The URL with every macro replaced by its percent-encoded value; a missing value renders empty."""
    out: list[str] = []
    for literal, name in template.parts:
        if name is None:
            out.append(literal)
        else:
            value = values.get(name)
            if value:
                out.append(quote(value, safe=""))
    return "".join(out)
