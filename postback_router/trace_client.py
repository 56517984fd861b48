"""`postback-router trace`'s HTTP side: GET /v1/conversions/{id} from a running api.

The command asks the api rather than reading the topics itself: the api's index already holds every
version and outcome, a terminal rarely reaches the cluster, and the bearer token is the one access
control the service has.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

TIMEOUT_SECONDS = 10.0


class TraceNotFound(Exception):
    """The api has no trace of the conversion (404)."""


class TraceRequestFailed(Exception):
    """The api could not be asked, or answered something other than the trace."""


def fetch_trace(api_url: str, token: str, conversion_id: str) -> tuple[dict[str, Any], str]:
    """(the trace document, its JSON text) from the api at `api_url`."""
    url = f"{api_url.rstrip('/')}/v1/conversions/{urllib.parse.quote(conversion_id, safe='')}"
    if not url.startswith(("http://", "https://")):
        raise TraceRequestFailed(f"API_URL={api_url!r}: expected an http:// or https:// address")
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}", "Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:  # the scheme is checked above
            raw = response.read().decode("utf-8")
    except urllib.error.HTTPError as exc:
        message = _error_message(exc)
        if exc.code == 404:
            raise TraceNotFound(f"no trace of conversion {conversion_id!r}: {message}") from None
        raise TraceRequestFailed(f"the api at {api_url} answered {exc.code}: {message}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TraceRequestFailed(f"cannot reach the api at {api_url} (API_URL): {reason}") from None
    document: dict[str, Any] = json.loads(raw)
    return document, raw


def _error_message(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read().decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return exc.reason if isinstance(exc.reason, str) else "no readable answer"
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, str) else "no readable answer"
