"""Personal data: normalised and SHA-256 hashed before anything is written (contract §3)."""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Any, get_args

import orjson
import pytest
from prometheus_client import CollectorRegistry

from service.settings import load_settings
from streams.core.batch import BatchResult
from streams.core.offer_sources import OfferSource
from streams.core.pii import (
    HashedUser,
    PhoneUnusableReason,
    hashed_user_identifiers,
    normalize_email,
    normalize_external_id,
    normalize_phone_e164,
    phone_e164,
    phone_region,
    sha256_hex,
)
from streams.worker import MatchingWorker
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


UK_MOBILE = "+447911123456"
US_NUMBER = "+14155552671"


@pytest.mark.parametrize(
    ("phone", "region", "e164"),
    [
        # national formats: only their region's rules make them E.164
        pytest.param("07911 123456", "GB", UK_MOBILE, id="uk-national-in-gb"),
        pytest.param("07911 123456", "gb", UK_MOBILE, id="region-any-case"),
        pytest.param("(415) 555-2671", "US", US_NUMBER, id="us-national-in-us"),
        pytest.param("14155552671", "US", US_NUMBER, id="us-trunk-1-in-us"),
        pytest.param("011 44 7911 123456", "US", UK_MOBILE, id="us-international-prefix-011"),
        pytest.param("0011 44 7911 123456", "AU", UK_MOBILE, id="au-international-prefix-0011"),
        pytest.param("٤١٥٥٥٥٢٦٧١", "US", US_NUMBER, id="arabic-indic-digits"),
        # with their country code: no region needed, and a region does not override it
        pytest.param("+44 7911 123456", None, UK_MOBILE, id="plus-country-code"),
        pytest.param("0044 7911 123456", None, UK_MOBILE, id="00-international-prefix"),
        pytest.param("0044 7911 123456", "US", UK_MOBILE, id="00-prefix-where-the-region-dials-011"),
        pytest.param("(00 44) 7911 123456", None, UK_MOBILE, id="00-prefix-in-brackets"),
        pytest.param("+1 (415) 555-2671", "GB", US_NUMBER, id="country-code-beats-region"),
        pytest.param("+44 20 7946 0958", None, "+442079460958", id="uk-landline"),
        pytest.param("+49-30-901820", None, "+4930901820", id="dashes"),
        pytest.param(" +1.415.555.2671 ", None, US_NUMBER, id="dots-and-spaces"),
        pytest.param("tel:+1-415-555-2671", None, US_NUMBER, id="tel-uri"),
        pytest.param("+44 7911 123456", "UK", UK_MOBILE, id="unknown-region-unused-with-country-code"),
    ],
)
def test_phone_to_e164(phone: str, region: str | None, e164: str) -> None:
    assert phone_e164(phone, region) == (e164, None)
    assert normalize_phone_e164(phone, region) == e164


@pytest.mark.parametrize(
    ("phone", "region", "reason"),
    [
        pytest.param("07911 123456", None, "no_region", id="national-without-region"),
        pytest.param("(415) 555-2671", None, "no_region", id="us-national-without-region"),
        pytest.param("14155552671", None, "no_region", id="digits-without-plus-are-not-guessed"),
        pytest.param("07911 123456", "UK", "unknown_region", id="region-libphonenumber-does-not-know"),
        pytest.param("07911 123456", "US", "invalid_number", id="national-read-in-another-region"),
        pytest.param("12345", "US", "invalid_number", id="too-short"),
        pytest.param("+44 7911 12345", None, "invalid_number", id="too-short-for-its-country"),
        pytest.param("+1234567", None, "invalid_number", id="unassigned-range"),
        pytest.param("+1234567890123456", None, "invalid_number", id="sixteen-digits-too-long"),
        pytest.param("+999 1234567", None, "invalid_number", id="no-such-country-code"),
        pytest.param("0044 123", None, "invalid_number", id="00-prefix-too-short"),
        pytest.param("n/a", "GB", "unparseable", id="no-digits"),
        pytest.param("garbage", None, "unparseable", id="garbage"),
        pytest.param("+", None, "unparseable", id="plus-alone"),
    ],
)
def test_unusable_phone_is_not_normalised_and_says_why(phone: str, region: str | None, reason: str) -> None:
    assert reason in get_args(PhoneUnusableReason)
    assert phone_e164(phone, region) == (None, reason)
    assert normalize_phone_e164(phone, region) is None


@pytest.mark.parametrize(
    ("country", "offer_source_region", "default", "region"),
    [
        pytest.param("fr", "DE", "GB", "FR", id="conversion-country-first"),
        pytest.param(None, "de", "GB", "DE", id="then-offer-source-default-region"),
        pytest.param(None, None, "GB", "GB", id="then-DEFAULT_PHONE_REGION"),
        pytest.param("", "", "", None, id="empty-counts-as-absent"),
        pytest.param(None, None, None, None, id="none"),
        pytest.param("UK", "GB", "GB", "UK", id="an-unknown-country-is-kept-not-skipped"),
    ],
)
def test_phone_region_precedence(
    country: str | None, offer_source_region: str | None, default: str | None, region: str | None
) -> None:
    assert phone_region(country, offer_source_region, default) == region


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
    ("user", "region", "expected", "unusable"),
    [
        pytest.param(
            {"email": " Test@Example.com "}, None, {"email_sha256": SHA256_TEST_AT_EXAMPLE_COM}, {}, id="email-vector"
        ),
        pytest.param(
            {"phone": "+1 (415) 555-2671"},
            None,
            {"phone_sha256": sha("+14155552671"), "phone_digits_sha256": sha("14155552671")},
            {},
            id="phone-both-hashes",
        ),
        pytest.param(
            {"phone": "07911 123456"},
            "GB",
            {"phone_sha256": sha(UK_MOBILE), "phone_digits_sha256": sha("447911123456")},
            {},
            id="phone-national-with-region",
        ),
        pytest.param(
            {"phone": "0044 20 7946 0958"},
            None,
            {"phone_sha256": sha("+442079460958"), "phone_digits_sha256": sha("442079460958")},
            {},
            id="phone-00-prefix",
        ),
        pytest.param({"phone": "07911 123456"}, None, {}, {"phone": "no_region"}, id="phone-without-region-left-out"),
        pytest.param({"phone": "12345"}, "US", {}, {"phone": "invalid_number"}, id="phone-invalid-left-out"),
        pytest.param(
            {"phone": "call me", "email": "a@b.co"},
            "GB",
            {"email_sha256": sha("a@b.co")},
            {"phone": "unparseable"},
            id="garbage-phone-left-out-email-kept",
        ),
        pytest.param({"external_id": " User-42 "}, None, {"external_id_sha256": sha("user-42")}, {}, id="external-id"),
        pytest.param({"email": "  ", "external_id": "", "phone": " "}, "GB", {}, {}, id="blank-values-left-out"),
        pytest.param({"ip": "203.0.113.7", "user_agent": "Mozilla/5.0"}, None, {}, {}, id="ip-and-ua-not-hashed-here"),
        pytest.param({}, None, {}, {}, id="empty-user"),
        pytest.param(
            {"email": "a@b.co", "phone": "+14155552671", "external_id": "X"},
            None,
            {
                "email_sha256": sha("a@b.co"),
                "phone_sha256": sha("+14155552671"),
                "phone_digits_sha256": sha("14155552671"),
                "external_id_sha256": sha("x"),
            },
            {},
            id="all",
        ),
    ],
)
def test_hashed_user_identifiers(
    user: dict[str, str], region: str | None, expected: dict[str, str], unusable: dict[str, str]
) -> None:
    assert hashed_user_identifiers(user, region) == HashedUser(expected, unusable)


def test_hashed_user_identifiers_of_no_user() -> None:
    assert hashed_user_identifiers(None, "GB") == HashedUser({}, {})


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


# --- the region a conversion's phone is read in, and phones left out ------------------------------------

UK_NATIONAL = "07911 123456"


@pytest.mark.parametrize(
    ("country", "offer_source", "default_region", "e164", "unusable"),
    [
        # the conversion's country wins, even where a lower-ranked region would have made the number valid
        pytest.param("GB", "US", "US", UK_MOBILE, None, id="country-over-offer-source-and-default"),
        pytest.param("gb", None, None, UK_MOBILE, None, id="country-any-case"),
        pytest.param("US", "GB", "GB", None, "invalid_number", id="country-US-is-used-not-skipped"),
        pytest.param(None, "GB", "US", UK_MOBILE, None, id="offer-source-over-default"),
        pytest.param(None, "US", "GB", None, "invalid_number", id="offer-source-US-is-used-not-skipped"),
        pytest.param(None, "", "GB", UK_MOBILE, None, id="offer-source-without-region-then-default"),
        pytest.param(None, ..., "GB", UK_MOBILE, None, id="no-offer-source-then-default"),
        pytest.param(None, None, None, None, "no_region", id="no-region-anywhere"),
        pytest.param("UK", "GB", "GB", None, "unknown_region", id="unknown-country-no-fallback"),
    ],
)
def test_phone_region_precedence_in_the_matcher(
    country: str | None, offer_source: Any, default_region: str | None, e164: str | None, unusable: str | None
) -> None:
    """conversion `country` > offer source `default_region` > DEFAULT_PHONE_REGION, through the matcher."""
    sources = {} if offer_source is ... else {"os-1": OfferSource("os-1", "approved", offer_source or None)}
    event = f.conversion(
        "cv-1", offer_source_id="os-1", country=country, user={"phone": UK_NATIONAL, "email": "a@b.co"}
    )
    processor = f.processor(
        f.compiled("camp-1", f.google_entry("gads"), f.meta_entry("fb")),
        offer_sources=sources,
        config=f.matcher_config(default_phone_region=default_region),
    )
    result = processor.process([f.source_record(event)])
    postbacks = [orjson.loads(m.value) for m in result.messages if m.topic.startswith("postbacks.")]
    assert len(postbacks) == 2
    for postback in postbacks:
        assert f.schema_errors("matched-postback", postback) == []
        user = postback["user"]
        assert user["email_sha256"] == sha("a@b.co")
        if e164 is None:
            assert "phone_sha256" not in user
            assert "phone_digits_sha256" not in user
        else:
            assert user["phone_sha256"] == sha(e164)
            assert user["phone_digits_sha256"] == sha(e164.removeprefix("+"))
    # counted once per conversion, however many postbacks it fired
    assert result.pii_unusable == (Counter({("phone", unusable): 1}) if unusable else Counter())


def test_an_unusable_phone_reaches_no_message_in_any_form() -> None:
    rules = f.compiled("camp-1", *ALL_KINDS)
    event = f.conversion("cv-1", user={"phone": UK_NATIONAL, "email": RAW_EMAIL})  # no region anywhere
    result = f.processor(rules).process([f.source_record(event)])
    assert result.pii_unusable == Counter({("phone", "no_region"): 1})
    assert len(result.messages) == 6  # five postbacks and the evaluation
    for message in result.messages:
        assert message.value is not None
        for form in (UK_NATIONAL, "07911123456", "7911123456", "7911 123456", "447911123456"):
            assert form.encode() not in message.value


def test_the_worker_counts_unusable_personal_fields_by_field_and_reason() -> None:
    registry = CollectorRegistry()
    worker = MatchingWorker(
        load_settings({"KAFKA_BOOTSTRAP_SERVERS": "kafka:9092", "STATE_STORE": "memory://"}), registry
    )
    result = BatchResult(pii_unusable=Counter({("phone", "no_region"): 2, ("phone", "invalid_number"): 1}))
    worker._count(result, batch_size=3, seconds=0.01)
    for reason, count in (("no_region", 2), ("invalid_number", 1), ("unparseable", None)):
        labels = {"field": "phone", "reason": reason}
        assert registry.get_sample_value("postback_pii_unusable_total", labels) == count
