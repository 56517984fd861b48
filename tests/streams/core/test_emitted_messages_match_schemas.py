"""Everything the matcher emits validates against its JSON Schema in `schemas/` (contract §3: the contract)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import orjson
import pytest

from schemas import SCHEMA_NAMES, load_schema
from streams.core.batch import BatchResult, OutgoingMessage, SourceRecord
from streams.core.rules import CampaignRules
from tests import factories as f

FULL_USER = {
    "email": " Someone@Example.com",
    "phone": "+44 20 7946 0958",
    "ip": "198.51.100.23",
    "user_agent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X)",
    "external_id": "U-1",
}
ALL_CLICK_IDS = {
    "external_id": "src-click-9",
    "gclid": "Cj0KCQ",
    "gbraid": "0AAAA",
    "wbraid": "1BBBB",
    "fbc": "fb.1.1700000000.AbC",
    "fbp": "fb.1.1700000000.123",
    "ttclid": "E.C.P.tt",
    "msclkid": "ms-1",
}
ALL_SUBS = {**{f"sub{n}": f"value {n}&x={n}" for n in range(1, 21)}, "aff_id": "A/1", "utm.source": "ü"}
S2S_URL = (
    "https://sink.example/pb?cid={clickid}&cv={conversion_id}&c={campaign_id}&ext={external_id}&t={type}"
    "&s={status}&p={payout}&cur={currency}&tx={transaction_id}&ts={timestamp}&s1={sub1}&s20={sub20}"
    "&aff={subs.aff_id}&u={subs.utm.source}"
)


def rules_tables() -> dict[str, CampaignRules]:
    return {
        "camp-all": f.compiled(
            "camp-all",
            f.s2s_entry("src", url=S2S_URL, method="POST", status_names={"approved": "sale"}, type_names={"lead": "i"}),
            f.google_entry("gads", payout_percent="33.3"),
            f.meta_entry("fb", action_source="website"),
            f.tiktok_entry("tt", payout_percent=150),
            f.microsoft_entry("ms"),
            f.s2s_entry("off", enabled=False),
            f.meta_entry("paid", conditional=f.conditional(statuses=["approved"], types=["deposit"], min_payout="5")),
        ),
        "camp-leads": f.compiled("camp-leads", f.s2s_entry("leads", conditional=f.conditional(types=["lead"]))),
        "camp-big": f.compiled("camp-big", f.google_entry("g", conversion_action="customers/1/conversionActions/2")),
        "camp-empty": f.compiled("camp-empty"),
    }


def raw(value: dict[str, Any]) -> bytes:
    return orjson.dumps(value)


def varied_batch() -> list[SourceRecord]:
    full = f.conversion(
        "cv-full",
        campaign_id="camp-all",
        transaction_id="tx-1",
        click_ids=ALL_CLICK_IDS,
        user=FULL_USER,
        subs=ALL_SUBS,
        payout=0.1,
        offer_source_id="os-1",
    )
    values: list[tuple[bytes | None, bytes | None]] = [
        (b"cv-full", raw(full)),
        (b"cv-full", raw(full)),  # re-delivery in the same batch
        (b"cv-full", raw({**full, "status": "pending"})),  # update
        (b"cv-os", raw(f.conversion("cv-os", campaign_id="camp-all", status=..., offer_source_id="os-1"))),
        (b"cv-def", raw(f.conversion("cv-def", campaign_id="camp-all", status=None, type="lead", payout=...))),
        (b"cv-lead", raw(f.conversion("cv-lead", campaign_id="camp-leads", type="lead", currency="EUR"))),
        (b"cv-nolead", raw(f.conversion("cv-nolead", campaign_id="camp-leads"))),
        (b"cv-norules", raw(f.conversion("cv-norules", campaign_id="camp-unknown"))),
        (b"cv-empty", raw(f.conversion("cv-empty", campaign_id="camp-empty"))),
        (b"cv-big", raw(f.conversion("cv-big", campaign_id="camp-big", payout="999999999999999999.999999999999"))),
        (b"cv-tz", raw(f.conversion("cv-tz", campaign_id="camp-all", occurred_at="2026-11-20T12:00:00.5+02:00"))),
        (
            b"cv-min",
            raw(
                {
                    "conversion_id": "cv-min",
                    "click_id": "c",
                    "campaign_id": "camp-all",
                    "occurred_at": "2026-01-01T00:00:00Z",
                }
            ),
        ),
        (b"cv-boom", raw(f.conversion("cv-boom", campaign_id="camp-boom"))),  # processing_error
        # invalid input, one of each reason a conversion can have
        (b"bad-1", b"\xff\xfe\xfd"),
        (b"bad-2", b"{not json"),
        (b"bad-3", b"[1, 2, 3]"),
        (None, None),
        (b"bad-5", raw({"conversion_id": "bad-5"})),
        (b"bad-6", raw(f.conversion("bad-6", payout=True, user={"email": "x@y.co"}))),
        (b"bad-7", raw(f.conversion("bad-7", status="paid"))),
        (b"bad-8", raw(f.conversion("bad-8", subs={"pad": "x" * 2000}))),
        (b"not-bad-9", raw(f.conversion("bad-9"))),
        (b"\xc3\x28", raw(f.conversion("bad-10", occurred_at="2026-11-20T10:00:00"))),
    ]
    timestamps = [None if i == 3 else 1_795_168_801_000 + i for i in range(len(values))]
    return [
        SourceRecord("conversions", i % 3, 500 + i, timestamps[i], key, value) for i, (key, value) in enumerate(values)
    ]


def run_batches() -> list[OutgoingMessage]:
    tables = rules_tables()

    def rules_for(campaign_id: str) -> CampaignRules | None:
        if campaign_id == "camp-boom":
            raise RuntimeError("injected failure")
        return tables.get(campaign_id)

    fired_state = f.InMemoryFiredState()
    processor = f.processor(
        rules_for=rules_for,
        offer_sources={"os-1": "pending"},
        fired_state=fired_state,
        config=f.matcher_config(max_conversion_bytes=2048),
    )
    out: list[OutgoingMessage] = []
    first: BatchResult = processor.process(varied_batch())
    fired_state.apply(first.fired_updates)
    second = processor.process(varied_batch())  # everything again: duplicates
    out.extend(first.messages)
    out.extend(second.messages)
    return out


SCHEMA_FOR_TOPIC = {
    **{topic: "matched-postback" for topic in f.POSTBACK_TOPICS.values()},
    "conversions.invalid": "invalid-record",
    "conversions.evaluated": "evaluation",
}


@pytest.fixture(scope="module")
def emitted() -> list[OutgoingMessage]:
    return run_batches()


def by_schema(emitted: list[OutgoingMessage], schema: str) -> list[dict[str, Any]]:
    return [orjson.loads(m.value) for m in emitted if SCHEMA_FOR_TOPIC[m.topic] == schema]


@pytest.mark.parametrize("schema_name", SCHEMA_NAMES)
def test_schemas_are_valid_draft_2020_12(schema_name: str) -> None:
    schema = load_schema(schema_name)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    f.schema_validator(schema_name)  # check_schema raises on an invalid schema


def test_every_message_goes_to_a_known_topic(emitted: list[OutgoingMessage]) -> None:
    assert {m.topic for m in emitted} == set(SCHEMA_FOR_TOPIC)


@pytest.mark.parametrize("schema_name", ["matched-postback", "invalid-record", "evaluation"])
def test_every_emitted_message_validates(emitted: list[OutgoingMessage], schema_name: str) -> None:
    messages = by_schema(emitted, schema_name)
    assert messages
    failures = {i: errors for i, m in enumerate(messages) if (errors := f.schema_errors(schema_name, m))}
    assert failures == {}


def test_the_batch_covers_every_kind_outcome_reason_and_status_source(emitted: list[OutgoingMessage]) -> None:
    postbacks = by_schema(emitted, "matched-postback")
    evaluations = by_schema(emitted, "evaluation")
    invalid = by_schema(emitted, "invalid-record")
    assert {p["kind"] for p in postbacks} == set(f.KINDS)
    assert {p["status_source"] for p in postbacks} == {"event", "offer_source", "default"}
    assert {e["outcome"] for e in evaluations} == {"fired", "nothing_fired", "no_rules"}
    assert {s["reason"] for e in evaluations for s in e["skipped"]} == {
        "disabled",
        "type",
        "status",
        "payout",
        "duplicate",
    }
    # each batch: two records are not objects (a JSON array, a null value), two have invalid values
    assert Counter(r["error"]["reason"] for r in invalid) == {
        "not_utf8": 2,
        "not_json": 2,
        "not_object": 4,
        "missing_field": 2,
        "wrong_type": 2,
        "invalid_value": 4,
        "oversized": 2,
        "key_mismatch": 2,
        "processing_error": 2,
    }
    assert None in {p["received_at"] for p in postbacks}
    assert {r["key_encoding"] for r in invalid if r["key"] is not None} == {"text", "base64"}
    assert {r["value_encoding"] for r in invalid} == {"text", "base64", "null"}


def test_s2s_postback_renders_every_macro(emitted: list[OutgoingMessage]) -> None:
    (full,) = [
        p
        for p in by_schema(emitted, "matched-postback")
        if p["conversion_id"] == "cv-full" and p["status"] == "approved"
        if p["kind"] == "s2s"
    ]
    assert full["url"] == (
        "https://sink.example/pb?cid=click-cv-full&cv=cv-full&c=camp-all&ext=src-click-9&t=deposit&s=sale&p=0.1"
        f"&cur=USD&tx=tx-1&ts={f.OCCURRED_AT_UNIX}&s1=value%201%26x%3D1&s20=value%2020%26x%3D20&aff=A%2F1"
        "&u=%C3%BC"
    )
    assert full["method"] == "POST"


def test_message_keys(emitted: list[OutgoingMessage]) -> None:
    for message in emitted:
        body = orjson.loads(message.value)
        if message.topic == "conversions.invalid":
            expected = None if body["key"] is None else message.key
            assert message.key == expected
        else:
            assert message.key == body["conversion_id"].encode()


@pytest.mark.parametrize(
    ("field", "bad_value"),
    [
        pytest.param("matched_at", "2026-11-20 10:00", id="date-time-format"),
        pytest.param("occurred_at", "2026-11-20T10:00:00", id="date-time-without-zone"),
        pytest.param("postback_id", "not-a-uuid", id="uuid"),
        pytest.param("payout", 0.1, id="payout-as-number"),
        pytest.param("payout", "1e-1", id="payout-exponent"),
        pytest.param("status", "paid", id="status-enum"),
        pytest.param("user", {"email": "a@b.co"}, id="raw-email"),
        pytest.param("unexpected", 1, id="additional-property"),
    ],
)
def test_the_validator_rejects_what_the_contract_forbids(
    emitted: list[OutgoingMessage], field: str, bad_value: Any
) -> None:
    message = dict(by_schema(emitted, "matched-postback")[0])
    message[field] = bad_value
    assert f.schema_errors("matched-postback", message) != []
