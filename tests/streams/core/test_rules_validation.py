"""Campaign rules and offer sources are validated when published; every problem names its field."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson
import pytest

from schemas.errors import InvalidInput
from streams.core.offer_sources import MAX_OFFER_SOURCE_BYTES, OfferSource, parse_offer_source
from streams.core.rules import MAX_RULES_BYTES, parse_campaign_rules, validate_campaign_rules
from tests import factories as f

VALID_ENTRIES = [
    pytest.param(f.s2s_entry("e"), id="s2s-minimal"),
    pytest.param(
        f.s2s_entry(
            "e",
            method="POST",
            enabled=True,
            payout_percent="12.5",
            status_names={"approved": "sale", "pending": "hold"},
            type_names={"lead": "install"},
            success_status_codes=[200, 204],
            success_body_pattern="success=true",
            conditional=f.conditional(types=["deposit"], statuses=["approved"], min_payout="10.50"),
        ),
        id="s2s-every-field",
    ),
    pytest.param(f.google_entry("e"), id="google_ads"),
    pytest.param(f.google_entry("e", login_customer_id="987-654-3210"), id="google_ads-login-customer"),
    pytest.param(f.meta_entry("e"), id="meta"),
    pytest.param(f.meta_entry("e", action_source="website", test_event_code="TEST123"), id="meta-every-field"),
    pytest.param(f.tiktok_entry("e"), id="tiktok"),
    pytest.param(f.tiktok_entry("e", test_event_code="TEST1"), id="tiktok-test-code"),
    pytest.param(f.microsoft_entry("e"), id="microsoft_ads"),
    pytest.param(f.s2s_entry("e", enabled=False), id="disabled"),
    pytest.param(f.s2s_entry("e", conditional={"enabled": False}), id="conditional-disabled-without-conditions"),
    pytest.param(f.s2s_entry("e", conditional=f.conditional(min_payout=0)), id="min-payout-zero-is-set"),
    pytest.param(f.s2s_entry("e", payout_percent=0), id="payout-percent-0"),
    pytest.param(f.s2s_entry("e", payout_percent=1000), id="payout-percent-1000"),
    pytest.param(f.s2s_entry("e", payout_percent="1000.000"), id="payout-percent-1000-string"),
    pytest.param(f.s2s_entry("A_z.0:9-x" * 10), id="id-of-every-allowed-character"),
]


@pytest.mark.parametrize("entry", VALID_ENTRIES)
def test_valid_entry(entry: dict[str, Any]) -> None:
    document = f.campaign("camp-1", entry)
    assert validate_campaign_rules(document) == []
    rules = parse_campaign_rules(b"camp-1", orjson.dumps(document))
    assert rules.campaign_id == "camp-1"
    (compiled,) = rules.entries
    assert (compiled.id, compiled.kind) == (entry["id"], entry["kind"])
    assert compiled.spec == entry


def test_valid_campaign_with_every_kind_and_no_key() -> None:
    document = f.campaign(
        "camp-1", f.s2s_entry("a"), f.google_entry("b"), f.meta_entry("c"), f.tiktok_entry("d"), f.microsoft_entry("e")
    )
    # a record without a key never reaches the parser from the topic; the API validates documents alone
    rules = parse_campaign_rules(None, orjson.dumps(document))
    assert [e.kind for e in rules.entries] == ["s2s", "google_ads", "meta", "tiktok", "microsoft_ads"]


def test_campaign_without_entries_is_valid() -> None:
    assert parse_campaign_rules(b"camp-1", orjson.dumps(f.campaign("camp-1"))).entries == ()


@pytest.mark.parametrize(
    ("entry", "enabled", "has_condition", "payout_percent", "method"),
    [
        pytest.param(f.s2s_entry("e"), True, False, Decimal(100), "GET", id="defaults"),
        pytest.param(
            f.s2s_entry("e", enabled=False, method="POST"), False, False, Decimal(100), "POST", id="s2s-disabled-post"
        ),
        pytest.param(
            f.meta_entry("e", payout_percent=33.3), True, False, Decimal("33.3"), None, id="payout_percent-float"
        ),
        pytest.param(
            f.meta_entry("e", conditional=f.conditional(types=["x"])),
            True,
            True,
            Decimal(100),
            None,
            id="conditional-types",
        ),
        pytest.param(
            f.meta_entry("e", conditional={"enabled": False, "types": ["x"]}),
            True,
            False,
            100,
            None,
            id="conditional-disabled",
        ),
    ],
)
def test_compiled_entry(
    entry: dict[str, Any], enabled: bool, has_condition: bool, payout_percent: Decimal, method: str | None
) -> None:
    (compiled,) = f.compiled("camp-1", entry).entries
    assert compiled.enabled is enabled
    assert (compiled.condition is not None) is has_condition
    assert compiled.payout_percent == payout_percent
    assert compiled.method == method


def test_compiled_condition() -> None:
    entry = f.s2s_entry("e", conditional=f.conditional(types=["deposit"], statuses=["approved"], min_payout=9.99))
    (compiled,) = f.compiled("camp-1", entry).entries
    assert compiled.condition is not None
    assert compiled.condition.types == frozenset({"deposit"})
    assert compiled.condition.statuses == frozenset({"approved"})
    assert compiled.condition.min_payout == Decimal("9.99")


S2S = f.s2s_entry("e")


def without(entry: dict[str, Any], name: str) -> dict[str, Any]:
    return {k: v for k, v in entry.items() if k != name}


def offer_source(**fields: Any) -> dict[str, Any]:
    return {
        k: v for k, v in {"offer_source_id": "os-1", "default_status": "approved", **fields}.items() if v is not ...
    }


INVALID_DOCUMENTS = [
    # per-kind required fields
    pytest.param(f.campaign("c", {"id": "e", "kind": "s2s"}), ["postbacks.0.url"], id="s2s-without-url"),
    pytest.param(
        f.campaign("c", {"id": "e", "kind": "google_ads"}),
        ["postbacks.0.customer_id", "postbacks.0.conversion_action", "postbacks.0.credentials"],
        id="google_ads-without-required",
    ),
    pytest.param(
        f.campaign("c", {"id": "e", "kind": "meta"}),
        ["postbacks.0.pixel_id", "postbacks.0.credentials"],
        id="meta-without-required",
    ),
    pytest.param(
        f.campaign("c", {"id": "e", "kind": "tiktok"}),
        ["postbacks.0.pixel_code", "postbacks.0.credentials"],
        id="tiktok-without-required",
    ),
    pytest.param(
        f.campaign("c", {"id": "e", "kind": "microsoft_ads"}),
        ["postbacks.0.customer_id", "postbacks.0.account_id", "postbacks.0.conversion_name", "postbacks.0.credentials"],
        id="microsoft_ads-without-required",
    ),
    pytest.param(
        f.campaign("c", without(f.google_entry("e"), "credentials")), ["postbacks.0.credentials"], id="google-no-creds"
    ),
    pytest.param(f.campaign("c", {"kind": "s2s", "url": S2S["url"]}), ["postbacks.0.id"], id="entry-without-id"),
    pytest.param(f.campaign("c", {"id": "e", "url": S2S["url"]}), ["postbacks.0.kind"], id="entry-without-kind"),
    # ids
    pytest.param(f.campaign("c", f.s2s_entry("a"), f.meta_entry("a")), ["postbacks.1.id"], id="duplicate-entry-id"),
    pytest.param(
        f.campaign("c", f.s2s_entry("a"), f.s2s_entry("b"), f.s2s_entry("a"), f.s2s_entry("b")),
        ["postbacks.2.id", "postbacks.3.id"],
        id="two-duplicate-entry-ids",
    ),
    pytest.param(f.campaign("c", f.s2s_entry("has space")), ["postbacks.0.id"], id="id-with-space"),
    pytest.param(f.campaign("c", f.s2s_entry("")), ["postbacks.0.id"], id="id-empty"),
    # fields that do not apply to the kind
    pytest.param(f.campaign("c", f.s2s_entry("e", pixel_id="1")), ["postbacks.0"], id="s2s-with-pixel_id"),
    pytest.param(f.campaign("c", f.meta_entry("e", url=S2S["url"])), ["postbacks.0"], id="meta-with-url"),
    pytest.param(f.campaign("c", f.meta_entry("e", method="POST")), ["postbacks.0"], id="meta-with-method"),
    pytest.param(f.campaign("c", f.google_entry("e", event_names={"a": "b"})), ["postbacks.0"], id="google-events"),
    pytest.param(f.campaign("c", f.tiktok_entry("e", action_source="website")), ["postbacks.0"], id="tiktok-action"),
    pytest.param(f.campaign("c", f.microsoft_entry("e", pixel_code="X")), ["postbacks.0"], id="microsoft-pixel"),
    pytest.param(f.campaign("c", f.s2s_entry("e", secret="x")), ["postbacks.0"], id="unknown-field"),
    # kind
    pytest.param(f.campaign("c", f.s2s_entry("e", kind="fax")), ["postbacks.0.kind"], id="bad-kind"),
    pytest.param(f.campaign("c", f.s2s_entry("e", kind="S2S")), ["postbacks.0.kind"], id="kind-case"),
    # conditional
    pytest.param(
        f.campaign("c", f.s2s_entry("e", conditional={"enabled": True})),
        ["postbacks.0.conditional"],
        id="conditional-no-condition",
    ),
    pytest.param(
        f.campaign("c", f.meta_entry("e", conditional={"enabled": True, "type": ["lead"]})),
        ["postbacks.0.conditional"],
        id="conditional-misspelt-types",
    ),
    pytest.param(
        f.campaign("c", f.s2s_entry("e", conditional=f.conditional(statuses=["paid"]))),
        ["postbacks.0.conditional.statuses.0"],
        id="status-not-in-enum",
    ),
    pytest.param(
        f.campaign("c", f.s2s_entry("e", conditional=f.conditional(statuses=["approved", "Pending"]))),
        ["postbacks.0.conditional.statuses.1"],
        id="status-case",
    ),
    pytest.param(
        f.campaign("c", f.s2s_entry("e", conditional=f.conditional(statuses=[]))),
        ["postbacks.0.conditional.statuses"],
        id="statuses-empty",
    ),
    pytest.param(
        f.campaign("c", f.s2s_entry("e", conditional=f.conditional(types=[]))),
        ["postbacks.0.conditional.types"],
        id="types-empty",
    ),
    pytest.param(
        f.campaign("c", f.s2s_entry("e", conditional=f.conditional(types="deposit"))),
        ["postbacks.0.conditional.types"],
        id="types-not-a-list",
    ),
    pytest.param(
        f.campaign("c", f.s2s_entry("e", conditional=f.conditional(min_payout=-1))),
        ["postbacks.0.conditional.min_payout"],
        id="min-payout-negative",
    ),
    pytest.param(
        f.campaign("c", f.s2s_entry("e", conditional=f.conditional(min_payout="ten"))),
        ["postbacks.0.conditional.min_payout"],
        id="min-payout-not-a-number",
    ),
    pytest.param(
        f.campaign("c", f.s2s_entry("e", conditional={"enabled": "yes", "types": ["x"]})),
        ["postbacks.0.conditional.enabled"],
        id="conditional-enabled-not-bool",
    ),
    # payout_percent
    pytest.param(
        f.campaign("c", f.s2s_entry("e", payout_percent=-1)),
        ["postbacks.0.payout_percent"],
        id="payout_percent-negative",
    ),
    pytest.param(
        f.campaign("c", f.s2s_entry("e", payout_percent="-1")),
        ["postbacks.0.payout_percent"],
        id="payout_percent-negative-string",
    ),
    pytest.param(
        f.campaign("c", f.s2s_entry("e", payout_percent=1000.01)),
        ["postbacks.0.payout_percent"],
        id="payout_percent-over-1000",
    ),
    pytest.param(
        f.campaign("c", f.s2s_entry("e", payout_percent="1001")),
        ["postbacks.0.payout_percent"],
        id="payout_percent-over-1000-string",
    ),
    pytest.param(
        f.campaign("c", f.s2s_entry("e", payout_percent="50%")),
        ["postbacks.0.payout_percent"],
        id="payout_percent-with-sign",
    ),
    pytest.param(
        f.campaign("c", f.s2s_entry("e", payout_percent=None)), ["postbacks.0.payout_percent"], id="payout_percent-null"
    ),
    # url
    pytest.param(f.campaign("c", f.s2s_entry("e", url="ftp://t.example/x")), ["postbacks.0.url"], id="url-ftp"),
    pytest.param(f.campaign("c", f.s2s_entry("e", url="https://t.example/{x}")), ["postbacks.0.url"], id="url-macro"),
    pytest.param(f.campaign("c", f.s2s_entry("e", url="http://")), ["postbacks.0.url"], id="url-too-short"),
    pytest.param(f.campaign("c", f.s2s_entry("e", url=5)), ["postbacks.0.url"], id="url-not-a-string"),
    # other entry fields
    pytest.param(f.campaign("c", f.s2s_entry("e", method="PUT")), ["postbacks.0.method"], id="method-put"),
    pytest.param(f.campaign("c", f.s2s_entry("e", enabled="no")), ["postbacks.0.enabled"], id="enabled-not-bool"),
    pytest.param(
        f.campaign("c", f.s2s_entry("e", success_body_pattern="(")),
        ["postbacks.0.success_body_pattern"],
        id="success_body_pattern-not-a-regex",
    ),
    pytest.param(
        f.campaign("c", f.s2s_entry("e", success_status_codes=[99])),
        ["postbacks.0.success_status_codes.0"],
        id="success-status-code-99",
    ),
    pytest.param(
        f.campaign("c", f.meta_entry("e", credentials="EAAB-raw-token!")),
        ["postbacks.0.credentials"],
        id="credentials-looks-like-a-secret",
    ),
    pytest.param(
        f.campaign("c", f.meta_entry("e", pixel_id="px-1")), ["postbacks.0.pixel_id"], id="pixel_id-not-digits"
    ),
    pytest.param(
        f.campaign("c", f.google_entry("e", conversion_action="42")),
        ["postbacks.0.conversion_action"],
        id="conversion_action-not-a-resource",
    ),
    pytest.param(
        f.campaign("c", f.s2s_entry("e", status_names={"paid": "x"})),
        ["postbacks.0.status_names"],
        id="status_names-unknown-status",
    ),
    # the document
    pytest.param({"postbacks": []}, ["campaign_id"], id="without-campaign_id"),
    pytest.param({"campaign_id": "c"}, ["postbacks"], id="without-postbacks"),
    pytest.param({"campaign_id": "", "postbacks": []}, ["campaign_id"], id="campaign_id-empty"),
    pytest.param({"campaign_id": 5, "postbacks": []}, ["campaign_id"], id="campaign_id-number"),
    pytest.param({"campaign_id": "c", "postbacks": {}}, ["postbacks"], id="postbacks-object"),
    pytest.param({"campaign_id": "c", "postbacks": [], "owner": "x"}, ["(record)"], id="unknown-top-level"),
    pytest.param({"campaign_id": "c", "postbacks": ["s2s"]}, ["postbacks.0"], id="entry-not-an-object"),
    pytest.param(f.campaign("c", *(f.s2s_entry(f"e{i}") for i in range(101))), ["postbacks"], id="over-100-entries"),
    pytest.param([], ["(record)"], id="not-an-object"),
    pytest.param(None, ["(record)"], id="null"),
    # several problems: all of them, each at its place
    pytest.param(
        f.campaign(
            "c",
            f.s2s_entry("a", url="https://t.example/{nope}"),
            f.meta_entry("b", conditional={"enabled": True}),
            f.s2s_entry("a", payout_percent=5000),
        ),
        ["postbacks.0.url", "postbacks.1.conditional", "postbacks.2.id", "postbacks.2.payout_percent"],
        id="several-problems",
    ),
]


@pytest.mark.parametrize(("document", "fields"), INVALID_DOCUMENTS)
def test_invalid_document_names_its_fields(document: Any, fields: list[str]) -> None:
    errors = validate_campaign_rules(document)
    assert [e.field for e in errors] == fields
    assert all(e.message for e in errors)
    with pytest.raises(InvalidInput) as caught:
        parse_campaign_rules(None, orjson.dumps(document))
    assert caught.value.reason == "invalid_rule"
    assert caught.value.field == fields[0]
    assert caught.value.errors == errors
    assert fields[0] in caught.value.message


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        pytest.param(f.s2s_entry("e", pixel_id="1", credentials="X"), ["credentials", "pixel_id", "s2s"], id="s2s"),
        pytest.param(f.meta_entry("e", url="https://t.example/"), ["url", "meta"], id="meta"),
        pytest.param(f.s2s_entry("e", conditional={"enabled": True}), ["no condition"], id="conditional"),
        pytest.param(f.s2s_entry("e", payout_percent=1001), ["1000"], id="payout_percent"),
        pytest.param(f.s2s_entry("e", payout_percent=-1), ["non-negative"], id="payout_percent-negative"),
        pytest.param(f.s2s_entry("e", url="https://t.example/{nope}"), ["unknown macro {nope}"], id="url"),
    ],
)
def test_messages_say_what_is_wrong(entry: dict[str, Any], words: list[str]) -> None:
    (error,) = validate_campaign_rules(f.campaign("c", entry))
    for word in words:
        assert word in error.message


@pytest.mark.parametrize(
    ("key", "value", "reason", "field"),
    [
        pytest.param(
            b"other", orjson.dumps(f.campaign("camp-1", S2S)), "invalid_rule", "campaign_id", id="key-differs"
        ),
        pytest.param(b"CAMP-1", orjson.dumps(f.campaign("camp-1", S2S)), "invalid_rule", "campaign_id", id="key-case"),
        pytest.param(b"camp-1", b"\xff\xfe", "not_utf8", None, id="not-utf8"),
        pytest.param(b"camp-1", b"{nope", "not_json", None, id="not-json"),
        pytest.param(b"camp-1", b"[]", "invalid_rule", "(record)", id="json-array"),
        pytest.param(b"camp-1", b"x" * (MAX_RULES_BYTES + 1), "oversized", None, id="oversized"),
    ],
)
def test_rules_record_refused(key: bytes | None, value: bytes, reason: str, field: str | None) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_campaign_rules(key, value)
    assert (caught.value.reason, caught.value.field) == (reason, field)


def test_key_is_checked_only_once_the_document_is_valid() -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_campaign_rules(b"other", orjson.dumps(f.campaign("camp-1", {"id": "e", "kind": "s2s"})))
    assert [e.field for e in caught.value.errors] == ["postbacks.0.url"]


# --- offer sources ------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["approved", "pending", "declined", "other"])
def test_valid_offer_source(status: str) -> None:
    value = orjson.dumps({"offer_source_id": "os-1", "default_status": status, "name": "Network A"})
    assert parse_offer_source(b"os-1", value) == OfferSource("os-1", status)


@pytest.mark.parametrize(
    ("region", "parsed"),
    [
        pytest.param("GB", "GB", id="upper-case"),
        pytest.param("us", "US", id="any-case-upper-cased"),
        pytest.param(None, None, id="null"),
        pytest.param(..., None, id="absent"),
    ],
)
def test_offer_source_default_region(region: Any, parsed: str | None) -> None:
    value = orjson.dumps(offer_source(default_region=region))
    assert parse_offer_source(b"os-1", value) == OfferSource("os-1", "approved", parsed)


@pytest.mark.parametrize(
    ("key", "value", "reason", "fields"),
    [
        pytest.param(b"os-2", offer_source(), "invalid_rule", ["offer_source_id"], id="key-differs"),
        pytest.param(b"os-1", offer_source(default_status="maybe"), "invalid_rule", ["default_status"], id="bad"),
        pytest.param(b"os-1", offer_source(default_status="Pending"), "invalid_rule", ["default_status"], id="case"),
        pytest.param(b"os-1", offer_source(default_status=None), "invalid_rule", ["default_status"], id="null"),
        pytest.param(b"os-1", offer_source(default_status=...), "invalid_rule", ["default_status"], id="no-status"),
        pytest.param(b"os-1", offer_source(offer_source_id=...), "invalid_rule", ["offer_source_id"], id="no-id"),
        pytest.param(b"os-1", offer_source(offer_source_id=""), "invalid_rule", ["offer_source_id"], id="empty-id"),
        pytest.param(b"os-1", offer_source(x=1), "invalid_rule", ["(record)"], id="unknown-field"),
        pytest.param(b"os-1", offer_source(default_region="GBR"), "invalid_rule", ["default_region"], id="alpha-3"),
        pytest.param(b"os-1", offer_source(default_region="4"), "invalid_rule", ["default_region"], id="not-a-code"),
        pytest.param(b"os-1", offer_source(default_region=44), "invalid_rule", ["default_region"], id="number"),
        pytest.param(b"os-1", offer_source(default_region="UK"), "invalid_rule", ["default_region"], id="UK-is-GB"),
        pytest.param(b"os-1", offer_source(default_region="XX"), "invalid_rule", ["default_region"], id="no-plan"),
        pytest.param(b"os-1", ["os-1"], "invalid_rule", ["(record)"], id="not-an-object"),
        pytest.param(b"os-1", b"{nope", "not_json", [], id="not-json"),
        pytest.param(b"os-1", b"\xff", "not_utf8", [], id="not-utf8"),
        pytest.param(b"os-1", b" " * (MAX_OFFER_SOURCE_BYTES + 1), "oversized", [], id="oversized"),
    ],
)
def test_invalid_offer_source(key: bytes, value: Any, reason: str, fields: list[str]) -> None:
    raw = value if isinstance(value, bytes) else orjson.dumps(value)
    with pytest.raises(InvalidInput) as caught:
        parse_offer_source(key, raw)
    assert caught.value.reason == reason
    assert [e.field for e in caught.value.errors] == fields
    assert caught.value.field == (fields[0] if fields else None)
