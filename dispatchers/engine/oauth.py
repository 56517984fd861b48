"""OAuth 2.0 access tokens from a refresh token (Google Ads, Microsoft Advertising), cached and shared.

One refresh serves every concurrent caller (single-flight), and the token is reused until shortly
before it expires. After a 401 the caller invalidates the token it used and asks again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlencode

from dispatchers.core.http import HttpRequest, Transport, TransportError, redact_url
from dispatchers.core.outcome import Outcome, Verdict
from dispatchers.core.secret import Secret

# Refresh this long before the token expires, so a request is never sent with a token that expires on
# the way (Google's tokens live 3600 s; a minute covers clock skew plus a slow request).
SAFETY_MARGIN_SECONDS = 60.0
# When the token endpoint omits expires_in, assume a short life rather than the usual hour.
DEFAULT_EXPIRES_IN_SECONDS = 300.0
# Token endpoints answer in well under a second; this bounds a refresh that every caller waits on.
TOKEN_REQUEST_TIMEOUT_SECONDS = 10.0
# OAuth error codes (RFC 6749 5.2) that retrying will not fix: the credentials must change.
PERMANENT_ERRORS = frozenset({"invalid_grant", "invalid_client", "unauthorized_client", "invalid_request"})


class OAuthError(Exception):
    """A token refresh failed. `permanent` means the credentials are wrong (dead-letter); else retry."""

    def __init__(
        self, message: str, *, permanent: bool, error_code: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent
        self.error_code = error_code
        self.retry_after = retry_after

    def to_outcome(self) -> Outcome:
        if self.permanent:
            return Outcome(Verdict.REJECTED, f"oauth_{self.error_code or 'error'}", self.message[:300])
        return Outcome(Verdict.RETRY, "oauth_unavailable", self.message[:300], retry_after_seconds=self.retry_after)


@dataclass(frozen=True, slots=True)
class TokenKey:
    """Identifies a cached token without holding the refresh token itself."""

    token_url: str
    client_id: str
    refresh_token_sha256: str


@dataclass(slots=True)
class _Token:
    value: str = field(repr=False)
    expires_at: float  # monotonic


def _reveal(value: str | Secret[str]) -> str:
    return value.reveal() if isinstance(value, Secret) else value


class OAuthTokenCache:
    def __init__(
        self,
        transport: Transport,
        *,
        clock: Callable[[], float] = time.monotonic,
        safety_margin_seconds: float = SAFETY_MARGIN_SECONDS,
        timeout_seconds: float = TOKEN_REQUEST_TIMEOUT_SECONDS,
    ) -> None:
        self._transport = transport
        self._clock = clock
        self._margin = safety_margin_seconds
        self._timeout = timeout_seconds
        self._tokens: dict[TokenKey, _Token] = {}
        self._inflight: dict[TokenKey, asyncio.Task[_Token]] = {}

    @staticmethod
    def key_for(token_url: str, client_id: str, refresh_token: str | Secret[str]) -> TokenKey:
        digest = hashlib.sha256(_reveal(refresh_token).encode("utf-8")).hexdigest()
        return TokenKey(token_url, client_id, digest)

    async def access_token(
        self,
        token_url: str,
        client_id: str,
        client_secret: str | Secret[str],
        refresh_token: str | Secret[str],
        *,
        scope: str | None = None,
    ) -> str:
        """A valid access token, refreshing it (once for all concurrent callers) when needed."""
        key = self.key_for(token_url, client_id, refresh_token)
        cached = self._tokens.get(key)
        if cached is not None and self._clock() < cached.expires_at:
            return cached.value
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.create_task(
                self._refresh(token_url, client_id, _reveal(client_secret), _reveal(refresh_token), scope)
            )
            self._inflight[key] = task
            task.add_done_callback(lambda done: self._finished(key, done))
        # shield: a caller that is cancelled must not cancel the refresh the others are waiting on
        token = await asyncio.shield(task)
        return token.value

    def invalidate(self, key: TokenKey, token: str | None = None) -> None:
        """Forget the cached token (after a 401). With `token`, only if it is still the cached one,
        so a late 401 for an old token does not throw away the fresh one."""
        cached = self._tokens.get(key)
        if cached is not None and (token is None or cached.value == token):
            del self._tokens[key]

    def _finished(self, key: TokenKey, task: asyncio.Task[_Token]) -> None:
        self._inflight.pop(key, None)
        if task.cancelled():
            return
        error = task.exception()  # retrieved here, so a refresh nobody awaited any more is not logged as lost
        if error is None:
            self._tokens[key] = task.result()

    async def _refresh(
        self, token_url: str, client_id: str, client_secret: str, refresh_token: str, scope: str | None
    ) -> _Token:
        form = {
            "grant_type": "refresh_token",
            "client_id": client_id,
            "client_secret": client_secret,
            "refresh_token": refresh_token,
        }
        if scope:
            form["scope"] = scope
        request = HttpRequest(
            "POST",
            token_url,
            {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"},
            urlencode(form).encode("ascii"),
            self._timeout,
        )
        where = redact_url(token_url)
        try:
            response = await self._transport.send(request)
        except TransportError as err:
            raise OAuthError(f"token refresh at {where} failed: {err.kind}", permanent=False) from None
        payload: object = None
        with contextlib.suppress(ValueError):
            payload = json.loads(response.body)
        body = payload if isinstance(payload, dict) else {}
        if response.status != 200:
            code = body.get("error") if isinstance(body.get("error"), str) else None
            retryable = response.status in (408, 429) or response.status >= 500
            permanent = not retryable and (code in PERMANENT_ERRORS or 400 <= response.status < 500)
            description = body.get("error_description")
            text = f": {description[:150]}" if isinstance(description, str) else ""
            raise OAuthError(
                f"token refresh at {where} failed: HTTP {response.status} {code or ''}{text}".strip(),
                permanent=permanent,
                error_code=code,
            )
        value = body.get("access_token")
        if not isinstance(value, str) or not value:
            raise OAuthError(f"token refresh at {where} answered 200 without an access_token", permanent=False)
        expires_in = body.get("expires_in", DEFAULT_EXPIRES_IN_SECONDS)
        try:
            lifetime = float(expires_in)
        except (TypeError, ValueError):
            lifetime = DEFAULT_EXPIRES_IN_SECONDS
        # Never let the margin eat more than half a short-lived token's life.
        margin = min(self._margin, lifetime / 2)
        return _Token(value, self._clock() + lifetime - margin)
