"""Personal data: normalised and SHA-256 hashed before anything is written (SPEC 3)."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
import pytest

from streams.pii import (
    hashed_user_identifiers,
    normalize_email,
    normalize_external_id,
    normalize_phone_e164,
    sha256_hex,
)
from tests import factories as f


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# Literal, independently known digests: a change of encoding or algorithm cannot pass unnoticed.
SHA256_TEST_AT_EXAMPLE_COM = "973dfe463ec85785f5f95af5ba3906eedb2d931c24e69824a89ea65dba4e813b"
SHA256_EMPTY = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
SHA256_ABC = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


@pytest.mark.parametrize(
    ("text", "digest"),
    [
        pytest.param("test@example.com", SHA256_TEST_AT_EXAMPLE_COM, id="test@example.com"),
        pytest.param("", SHA256_EMPTY, id="empty"),
        pytest.param("abc", SHA256_ABC, id="abc-fips-180-2"),
        pytest.param("josé@exämple.com", sha("josé@exämple.com"), id="utf-8-encoded"),
    ],
)
def test_sha256_hex(text: str, digest: str) -> None:
    assert sha256_hex(text) == digest


@pytest.mark.parametrize(
    ("email", "normalized"),
    [
        pytest.param("test@example.com", "test@example.com", id="already-normal"),
        pytest.param("  Test@Example.COM \n", "test@example.com", id="trimmed-and-lowercased"),
        pytest.param("\tJOHN.DOE+tag@Mail.Example.org", "john.doe+tag@mail.example.org", id="plus-tag-kept"),
        pytest.param("   ", None, id="blank"),
        pytest.param("", None, id="empty"),
    ],
)
def test_normalize_email(email: str, normalized: str | None) -> None:
    assert normalize_email(email) == normalized


@pytest.mark.parametrize(
    ("phone", "e164"),
    [
        pytest.param("+1 (415) 555-2671", "+14155552671", id="us-formatted"),
        pytest.param("0044 20 7946 0958", "+442079460958", id="00-international-prefix"),
        pytest.param("+44 20 7946 0958", "+442079460958", id="uk-plus"),
        pytest.param("+49-30-901820", "+4930901820", id="dashes"),
        pytest.param("14155552671", "+14155552671", id="digits-with-country-code"),
        pytest.param(" +1.415.555.2671 ", "+14155552671", id="dots-and-spaces"),
        pytest.param("tel:+1-415-555-2671", "+14155552671", id="tel-uri"),
        pytest.param("+1234567", "+1234567", id="seven-digits-minimum"),
        pytest.param("+123456789012345", "+123456789012345", id="fifteen-digits-maximum"),
        pytest.param("12345", None, id="too-short"),
        pytest.param("+123456", None, id="six-digits"),
        pytest.param("+1234567890123456", None, id="sixteen-digits-too-long"),
        pytest.param("", None, id="empty"),
        pytest.param("n/a", None, id="no-digits"),
        pytest.param("٤١٥٥٥٥٢٦٧١٢", None, id="non-ascii-digits-ignored"),
    ],
)
def test_normalize_phone_e164(phone: str, e164: str | None) -> None:
    assert normalize_phone_e164(phone) == e164


@pytest.mark.parametrize(
    ("external_id", "normalized"),
    [
        pytest.param("User-42", "user-42", id="lowercased"),
        pytest.param("  ABC123 ", "abc123", id="trimmed"),
        pytest.param(" ", None, id="blank"),
    ],
)
def test_normalize_external_id(external_id: str, normalized: str | None) -> None:
    assert normalize_external_id(external_id) == normalized


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        pytest.param(
            {"email": " Test@Example.com "},
            {"email_sha256": SHA256_TEST_AT_EXAMPLE_COM},
            id="email-literal-vector",
        ),
        pytest.param(
            {"phone": "+1 (415) 555-2671"},
            {"phone_sha256": sha("+14155552671"), "phone_digits_sha256": sha("14155552671")},
            id="phone-both-hashes",
        ),
        pytest.param(
            {"phone": "0044 20 7946 0958"},
            {"phone_sha256": sha("+442079460958"), "phone_digits_sha256": sha("442079460958")},
            id="phone-00-prefix",
        ),
        pytest.param({"phone": "12345"}, {}, id="phone-too-short-left-out"),
        pytest.param({"external_id": " User-42 "}, {"external_id_sha256": sha("user-42")}, id="external-id"),
        pytest.param({"email": "  ", "external_id": ""}, {}, id="blank-values-left-out"),
        pytest.param({"ip": "203.0.113.7", "user_agent": "Mozilla/5.0"}, {}, id="ip-and-ua-are-not-hashed-here"),
        pytest.param({}, {}, id="empty-user"),
        pytest.param(
            {"email": "a@b.co", "phone": "+14155552671", "external_id": "X"},
            {
                "email_sha256": sha("a@b.co"),
                "phone_sha256": sha("+14155552671"),
                "phone_digits_sha256": sha("14155552671"),
                "external_id_sha256": sha("x"),
            },
            id="all",
        ),
    ],
)
def test_hashed_user_identifiers(user: dict[str, str], expected: dict[str, str]) -> None:
    assert hashed_user_identifiers(user) == expected


def test_hashed_user_identifiers_of_no_user() -> None:
    assert hashed_user_identifiers(None) == {}


# --- no raw PII in what the processor emits ------------------------------------------------------------

RAW_EMAIL = "Jane.Doe+vip@Example.com"
RAW_PHONE = "+1 (415) 555-2671"
RAW_EXTERNAL_ID = "CRM-Customer-99172"
RAW_IP = "203.0.113.77"
RAW_USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64) UniqueAgent/9.9"

PERSONAL_USER = {
    "email": RAW_EMAIL,
    "phone": RAW_PHONE,
    "external_id": RAW_EXTERNAL_ID,
    "ip": RAW_IP,
    "user_agent": RAW_USER_AGENT,
}


def forms_of(raw: str) -> list[str]:
    """The raw value and its normalised forms: none of them may appear in clear."""
    forms = {raw, raw.lower(), raw.strip().lower()}
    if raw == RAW_PHONE:
        forms |= {"+14155552671", "14155552671", "4155552671"}
    return sorted(forms)


def emitted(entries: list[dict[str, Any]], **conversion_fields: Any) -> dict[str, list[bytes]]:
    rules = f.compiled("camp-1", *entries)
    event = f.conversion("cv-1", user=PERSONAL_USER, **conversion_fields)
    result = f.processor(rules).process([f.source_record(event)])
    by_topic: dict[str, list[bytes]] = {}
    for message in result.messages:
        by_topic.setdefault(message.topic, []).append(message.value)
    return by_topic


ALL_KINDS = [
    f.s2s_entry("src", url="https://t.example/pb?c={clickid}&e={external_id}&s1={sub1}&t={transaction_id}"),
    f.google_entry("gads"),
    f.meta_entry("fb"),
    f.tiktok_entry("tt"),
    f.microsoft_entry("ms"),
]


@pytest.mark.parametrize("raw", [RAW_EMAIL, RAW_PHONE, RAW_EXTERNAL_ID], ids=["email", "phone", "external_id"])
def test_no_raw_email_phone_or_external_id_in_any_postback(raw: str) -> None:
    by_topic = emitted(ALL_KINDS)
    postbacks = [value for topic, values in by_topic.items() if topic.startswith("postbacks.") for value in values]
    assert len(postbacks) == 5
    for value in [*postbacks, *by_topic["conversions.evaluated"]]:
        text = value.decode("utf-8")
        for form in forms_of(raw):
            assert form not in text, f"{form!r} leaked into {text}"
            assert form not in orjson.loads(value).get("url", "")


@pytest.mark.parametrize("kind", ["s2s", "google_ads", "meta", "tiktok", "microsoft_ads"])
def test_every_postback_carries_the_hashes(kind: str) -> None:
    (value,) = emitted(ALL_KINDS)[f"postbacks.{kind}"]
    user = orjson.loads(value)["user"]
    assert user["email_sha256"] == sha("jane.doe+vip@example.com")
    assert user["phone_sha256"] == sha("+14155552671")
    assert user["phone_digits_sha256"] == sha("14155552671")
    assert user["external_id_sha256"] == sha("crm-customer-99172")


@pytest.mark.parametrize(
    ("kind", "client_context"),
    [("s2s", False), ("google_ads", False), ("microsoft_ads", False), ("meta", True), ("tiktok", True)],
)
def test_ip_and_user_agent_only_on_meta_and_tiktok(kind: str, client_context: bool) -> None:
    by_topic = emitted(ALL_KINDS)
    (value,) = by_topic[f"postbacks.{kind}"]
    text = value.decode("utf-8")
    user = orjson.loads(value)["user"]
    if client_context:
        assert (user["ip"], user["user_agent"]) == (RAW_IP, RAW_USER_AGENT)
    else:
        assert "ip" not in user
        assert "user_agent" not in user
        assert RAW_IP not in text
        assert RAW_USER_AGENT not in text
    for evaluation in by_topic["conversions.evaluated"]:
        assert RAW_IP.encode() not in evaluation
        assert RAW_USER_AGENT.encode() not in evaluation


def test_a_user_without_personal_fields_gets_an_empty_user() -> None:
    rules = f.compiled("camp-1", f.google_entry("gads"))
    result = f.processor(rules).process([f.source_record(f.conversion("cv-1", user={"email": None, "phone": ""}))])
    assert orjson.loads(result.messages[0].value)["user"] == {}
