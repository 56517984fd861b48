"""S2S postbacks: build the HTTP request from a matched postback, and judge the traffic source's answer.

Pure: the request goes out through the scheduler (dispatchers/engine/scheduler.py, `deliver_s2s`).

POST decision: the rendered URL's query becomes an `application/x-www-form-urlencoded` body and the
request goes to the URL without its query. That is what an HTML form POST looks like and what POST
handlers read (PHP `$_POST`, Express `urlencoded`, Django `request.POST`); it also keeps click ids
out of access logs on the way. The rendered values are already percent-encoded, which is valid form
encoding, so the query is the body byte for byte. A POST URL without a query is sent with an empty body.

A 200 whose body fails the destination's `success_body_pattern` (TUNE `success=false; err_msg=...`,
ExoClick `ERROR: ...`) is REJECTED with reason `body_check_failed`, not retried: the source received
the postback and refused it on purpose (unknown click, duplicate, bad goal), so repeating it gives the
same answer, and ExoClick even rejects repeats for 24 h. It goes to the dead-letter topic with the
answer, where a person can fix the rule and replay it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from dispatchers.core.http import HttpRequest, HttpResponse, redact_url
from dispatchers.core.outcome import Outcome, Verdict
from dispatchers.core.retry_policy import outcome_for_status
from schemas.hosts import host_problem
from schemas.version import __version__

USER_AGENT = f"postback-router/{__version__}"
# Success patterns are user-written regexes; a pathological one could backtrack for a long time on a
# large body. Tracker answers are a few bytes ("OK", "success=true;"), so 8 KiB is plenty to search.
BODY_CHECK_MAX_CHARS = 8 * 1024
DETAIL_MAX_CHARS = 300
_BODY_SNIPPET_CHARS = 120
BREAKER_SCOPE_MAX_CHARS = 200
_FORBIDDEN_URL_CHARS = re.compile(r"[\x00-\x20\x7f]")  # CR/LF would split the request line; no space either
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]+")


def _rejected(reason: str, detail: str) -> Outcome:
    return Outcome(Verdict.REJECTED, reason, detail[:DETAIL_MAX_CHARS])


def build_s2s_request(postback: Mapping[str, Any], timeout_seconds: float) -> HttpRequest | Outcome:
    """The request for an S2S postback, or a REJECTED Outcome when its URL or method cannot be sent."""
    url = postback.get("url")
    method = str(postback.get("method") or "GET").upper()
    if not isinstance(url, str) or not url:
        return _rejected("invalid_url", "postback has no url")
    if _FORBIDDEN_URL_CHARS.search(url):
        return _rejected("invalid_url", f"url contains whitespace or control characters: {redact_url(url)!r}")
    try:
        split = urlsplit(url)
        split.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        return _rejected("invalid_url", "url cannot be parsed")
    if split.scheme.lower() not in ("http", "https"):
        return _rejected("invalid_url", f"url scheme {split.scheme!r} is not http or https")
    if not split.hostname:
        return _rejected("invalid_url", "url has no host")
    host_refusal = host_problem(split.netloc)  # a rule published before hosts were checked (issue 8)
    if host_refusal is not None:
        return _rejected("invalid_url", f"url host is not canonical: {host_refusal}")
    if method not in ("GET", "POST"):
        return _rejected("invalid_method", f"method {method!r} is not GET or POST")
    headers = {"User-Agent": USER_AGENT, "Accept": "*/*"}
    without_fragment = urlunsplit((split.scheme, split.netloc, split.path, split.query, ""))
    if method == "GET":
        return HttpRequest("GET", without_fragment, headers, None, timeout_seconds)
    if split.query:
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    target = urlunsplit((split.scheme, split.netloc, split.path or "/", "", ""))
    return HttpRequest("POST", target, headers, split.query.encode("ascii"), timeout_seconds)


def s2s_breaker_scope(postback: Mapping[str, Any]) -> str:
    """The path of an S2S postback's URL as its rule writes it (`/conversion.php`): the endpoint within its
    host that a circuit breaker watches, so one failing path does not hold back the host's others.

    The rule's template, not the rendered URL: a macro in the path (`/{clickid}/done`) must not make a
    breaker per click. "" (the whole host) when the entry has no URL; at most BREAKER_SCOPE_MAX_CHARS.
    """
    entry = postback.get("entry")
    template = entry.get("url") if isinstance(entry, Mapping) else None
    if not isinstance(template, str):
        return ""
    try:
        path = urlsplit(template).path
    except ValueError:
        return ""
    return (path or "/")[:BREAKER_SCOPE_MAX_CHARS]


@functools.lru_cache(maxsize=1024)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _snippet(body: bytes) -> str:
    text = body[: _BODY_SNIPPET_CHARS * 4].decode("utf-8", errors="replace")
    return _CONTROL_CHARS.sub(" ", text).strip()[:_BODY_SNIPPET_CHARS]


def classify_s2s_response(response: HttpResponse, entry: Mapping[str, Any], *, now: datetime | None = None) -> Outcome:
    """DELIVERED when the status is a success (the entry's `success_status_codes`, else 2xx) and the
    body matches the entry's `success_body_pattern` when one is set; otherwise the contract §4 class.

    A status that contract §4 calls delivered but that is not in `success_status_codes` is REJECTED
    (`http_<status>`): the user said what success looks like. `now` (aware) is for Retry-After dates.
    """
    status = response.status
    target = redact_url(entry["url"]) if isinstance(entry.get("url"), str) else "destination"
    snippet = _snippet(response.body)
    detail = f"{target} answered {status}" + (f": {snippet}" if snippet else "")
    codes = entry.get("success_status_codes")
    success = status in codes if codes else 200 <= status < 300
    if success:
        pattern = entry.get("success_body_pattern")
        if pattern:
            try:
                compiled = _compiled(str(pattern))
            except re.error as exc:
                return _rejected("invalid_success_pattern", f"success_body_pattern does not compile: {exc}")
            text = response.body.decode("utf-8", errors="replace")[:BODY_CHECK_MAX_CHARS]
            if not compiled.search(text):
                return Outcome(
                    Verdict.REJECTED,
                    "body_check_failed",
                    f"{detail} (success_body_pattern not found)"[:DETAIL_MAX_CHARS],
                    status,
                )
        return Outcome(Verdict.DELIVERED, f"http_{status}", detail[:DETAIL_MAX_CHARS], status)
    outcome = outcome_for_status(status, response.headers, now=now or datetime.now(UTC), detail=detail)
    if outcome.verdict is Verdict.DELIVERED:  # a 2xx the entry does not count as success
        return Outcome(
            Verdict.REJECTED, f"http_{status}", f"{detail} (not in success_status_codes)"[:DETAIL_MAX_CHARS], status
        )
    return outcome
