"""Who may call the api: a bearer token for management, an optional shared secret for intake. Pure.

Both comparisons are constant-time over SHA-256 digests: equal lengths, so neither the content
nor the length of the secret leaks through response times.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from enum import Enum

SECRET_HEADER = "X-Postback-Secret"
SECRET_FIELD = "secret"


class Verdict(Enum):
    ALLOWED = "allowed"
    MISSING = "missing"  # 401: say how to authenticate
    WRONG = "wrong"  # 401 for a token, 403 for the intake secret (the caller is known to be a network)


def same_secret(given: str, expected: str) -> bool:
    digest_given = hashlib.sha256(given.encode("utf-8", "surrogatepass")).digest()
    digest_expected = hashlib.sha256(expected.encode("utf-8")).digest()
    return hmac.compare_digest(digest_given, digest_expected)


def check_bearer(authorization: str | None, token: str) -> Verdict:
    """`Authorization: Bearer <token>` (the scheme is case-insensitive, RFC 7235)."""
    if not authorization:
        return Verdict.MISSING
    scheme, _, given = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return Verdict.MISSING
    return Verdict.ALLOWED if same_secret(given.strip(), token) else Verdict.WRONG


def check_intake_secret(headers: Mapping[str, str], fields: Mapping[str, str], secret: str | None) -> Verdict:
    """The `X-Postback-Secret` header, else the `secret` field; anyone may post when no secret is set.

    The field exists because many networks can only configure a URL, not headers.
    """
    if secret is None:
        return Verdict.ALLOWED
    given = headers.get(SECRET_HEADER) or fields.get(SECRET_FIELD)
    if not given:
        return Verdict.MISSING
    return Verdict.ALLOWED if same_secret(given, secret) else Verdict.WRONG
