"""The canonical host rule itself (schemas/hosts.py); the places that apply it are tested beside them."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from schemas.hosts import host_problem
from tests.schemas.host_cases import CANONICAL_URLS, NON_CANONICAL_URLS


def authority(url: str) -> str:
    return url.split("://", 1)[1].split("/", 1)[0]


@pytest.mark.parametrize(("url", "why"), NON_CANONICAL_URLS)
def test_non_canonical_authorities_are_refused_with_their_reason(url: str, why: str) -> None:
    problem = host_problem(authority(url))
    assert problem is not None
    assert why in problem


@pytest.mark.parametrize(("url", "host"), CANONICAL_URLS)
def test_canonical_authorities_pass(url: str, host: str) -> None:
    assert host_problem(authority(url)) is None
    assert urlsplit(url).hostname == host


@pytest.mark.parametrize(
    "authority_text",
    [
        pytest.param("[1.2.3.4]", id="ipv4-in-brackets"),
        pytest.param("[::1", id="unclosed-bracket"),
        pytest.param("[]", id="empty-brackets"),
        pytest.param("a]b", id="closing-bracket-alone"),
        pytest.param("::1", id="ipv6-without-brackets"),
        pytest.param("1:2:3:4:5:6:7:8", id="full-ipv6-without-brackets"),
        pytest.param("tracker.example:80:90", id="two-ports"),
        pytest.param("tracker.example:99999", id="port-over-65535"),
        pytest.param("tracker.example:+80", id="signed-port"),
        pytest.param("tracker.example:\u0668\u0660", id="non-ascii-digits-port"),
        pytest.param("tracker.example\x00", id="nul"),
        pytest.param("tracker.example{sub1}", id="macro"),
    ],
)
def test_other_spellings_are_refused(authority_text: str) -> None:
    assert host_problem(authority_text) is not None


def test_a_reason_never_repeats_the_authority() -> None:
    problem = host_problem("admin:hunter2@tracker.example")
    assert problem is not None and "hunter2" not in problem
