"""Who may call the api (postback_router/api/auth.py)."""

from __future__ import annotations

import pytest

from postback_router.api.auth import Verdict, check_bearer, check_intake_secret, same_secret

TOKEN = "0123456789abcdef-token"
SECRET = "network-shared-secret-1"


@pytest.mark.parametrize(
    ("header", "verdict"),
    [
        (f"Bearer {TOKEN}", Verdict.ALLOWED),
        (f"bearer {TOKEN}", Verdict.ALLOWED),  # the scheme is case-insensitive
        (f"  Bearer   {TOKEN}  ", Verdict.ALLOWED),
        (None, Verdict.MISSING),
        ("", Verdict.MISSING),
        ("Bearer", Verdict.MISSING),
        ("Bearer ", Verdict.MISSING),
        (f"Basic {TOKEN}", Verdict.MISSING),
        (TOKEN, Verdict.MISSING),
        (f"Bearer {TOKEN}x", Verdict.WRONG),
        (f"Bearer {TOKEN[:-1]}", Verdict.WRONG),
        ("Bearer tökén", Verdict.WRONG),  # non-ASCII: compared as bytes, no TypeError
        ("Bearer \udcff", Verdict.WRONG),  # a lone surrogate (an undecodable header byte)
    ],
)
def test_bearer(header: str | None, verdict: Verdict) -> None:
    assert check_bearer(header, TOKEN) is verdict


def test_same_secret() -> None:
    assert same_secret(TOKEN, TOKEN)
    assert not same_secret("", TOKEN)
    assert not same_secret(TOKEN.upper(), TOKEN)


def test_intake_is_open_without_a_configured_secret() -> None:
    assert check_intake_secret({}, {}, None) is Verdict.ALLOWED
    assert check_intake_secret({"X-Postback-Secret": "anything"}, {}, None) is Verdict.ALLOWED


@pytest.mark.parametrize(
    ("headers", "fields", "verdict"),
    [
        ({"X-Postback-Secret": SECRET}, {}, Verdict.ALLOWED),
        ({}, {"secret": SECRET}, Verdict.ALLOWED),
        ({"X-Postback-Secret": SECRET}, {"secret": "wrong"}, Verdict.ALLOWED),  # the header is asked first
        ({}, {}, Verdict.MISSING),
        ({"X-Postback-Secret": ""}, {"secret": ""}, Verdict.MISSING),
        ({"X-Postback-Secret": "wrong"}, {}, Verdict.WRONG),
        ({}, {"secret": SECRET + " "}, Verdict.WRONG),
    ],
)
def test_intake_secret(headers: dict[str, str], fields: dict[str, str], verdict: Verdict) -> None:
    assert check_intake_secret(headers, fields, SECRET) is verdict
