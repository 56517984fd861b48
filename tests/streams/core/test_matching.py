"""contract §2, line by line: which entries of a campaign fire for a conversion, and with what payout."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson
import pytest

from schemas.errors import InvalidInput
from streams.core.batch import BatchResult
from streams.core.decimals import parse_decimal
from streams.core.fired_record import FiredRecord
from streams.core.matching import Fired, SkipReason, effective_status, evaluate_entries
from streams.core.postback_ids import postback_id
from streams.core.rules import CampaignRules, parse_campaign_rules, validate_campaign_rules
from tests import factories as f

ALL_KIND_ENTRIES = (f.s2s_entry, f.meta_entry, f.google_entry, f.tiktok_entry, f.microsoft_entry)


def decide(
    entry: dict[str, Any], conversion_type: str = "deposit", status: str = "approved", payout: Any = "10"
) -> str:
    """`fired` or the skip reason, for one entry and one conversion, with nothing fired before."""
    rules = f.compiled("camp-1", entry)
    (decision,) = evaluate_entries(rules, "cv-1", conversion_type, status, parse_decimal(payout), frozenset())
    return "fired" if isinstance(decision, Fired) else decision.reason


def messages(result: BatchResult, topic_prefix: str = "postbacks.") -> list[dict[str, Any]]:
    return [orjson.loads(m.value) for m in result.messages if m.topic.startswith(topic_prefix)]


def evaluations(result: BatchResult) -> list[dict[str, Any]]:
    return [orjson.loads(m.value) for m in result.messages if m.topic == "conversions.evaluated"]


def fired_entry_ids(result: BatchResult) -> list[str]:
    return [m["entry_id"] for m in messages(result)]


def run(rules: CampaignRules, *conversions: dict[str, Any], **processor_options: Any) -> BatchResult:
    return f.processor(rules, **processor_options).process(f.source_records(conversions))


# --- 2.1 An entry with enabled: false never fires -------------------------------------------------


@pytest.mark.parametrize("make_entry", ALL_KIND_ENTRIES, ids=lambda make: make.__name__)
@pytest.mark.parametrize(
    "entry_fields",
    [
        pytest.param({}, id="unconditional"),
        pytest.param({"conditional": f.conditional(types=["deposit"], statuses=["approved"])}, id="conditions-match"),
        pytest.param({"conditional": f.conditional(min_payout="0")}, id="min-payout-zero"),
        pytest.param({"conditional": {"enabled": False}}, id="conditional-disabled"),
    ],
)
def test_disabled_entry_never_fires(make_entry: Any, entry_fields: dict[str, Any]) -> None:
    assert decide(make_entry("e", enabled=False, **entry_fields)) == "disabled"
    assert decide(make_entry("e", enabled=True, **entry_fields)) == "fired"
    assert decide(make_entry("e", **entry_fields)) == "fired"  # enabled defaults to true


def test_disabled_entry_emits_nothing_and_is_counted() -> None:
    rules = f.compiled("camp-1", f.s2s_entry("off", enabled=False), f.meta_entry("on"))
    result = run(rules, f.conversion("cv-1"))
    assert fired_entry_ids(result) == ["on"]
    assert result.filtered == {"disabled": 1}
    (evaluation,) = evaluations(result)
    assert evaluation["skipped"] == [
        {"entry_id": "off", "kind": "s2s", "destination_id": rules.entries[0].destination_id, "reason": "disabled"}
    ]


# --- 2.2 Effective status and where it came from --------------------------------------------------


@pytest.mark.parametrize(
    ("event_status", "offer_source_default", "service_default", "expected"),
    [
        pytest.param("pending", "declined", "approved", ("pending", "event"), id="event-wins-over-offer-source"),
        pytest.param("declined", None, "approved", ("declined", "event"), id="event-without-offer-source"),
        pytest.param(None, "declined", "approved", ("declined", "offer_source"), id="offer-source-default"),
        pytest.param(None, "other", "pending", ("other", "offer_source"), id="offer-source-wins-over-service"),
        pytest.param(None, None, "approved", ("approved", "default"), id="service-default"),
        pytest.param(None, None, "pending", ("pending", "default"), id="configured-service-default"),
    ],
)
def test_effective_status(
    event_status: str | None, offer_source_default: str | None, service_default: str, expected: tuple[str, str]
) -> None:
    assert effective_status(event_status, offer_source_default, service_default) == expected


@pytest.mark.parametrize(
    ("conversion_fields", "service_default", "expected_status", "expected_source"),
    [
        pytest.param(
            {"status": "declined", "offer_source_id": "os-pending"},
            "approved",
            "declined",
            "event",
            id="event-status-wins",
        ),
        pytest.param(
            {"status": ..., "offer_source_id": "os-pending"},
            "approved",
            "pending",
            "offer_source",
            id="absent-status-offer-source-default",
        ),
        pytest.param(
            {"status": None, "offer_source_id": "os-pending"},
            "approved",
            "pending",
            "offer_source",
            id="null-status-offer-source-default",
        ),
        pytest.param(
            {"status": ..., "offer_source_id": "os-unknown"},
            "approved",
            "approved",
            "default",
            id="unknown-offer-source-service-default",
        ),
        pytest.param(
            {"status": ..., "offer_source_id": ...},
            "approved",
            "approved",
            "default",
            id="no-offer-source-service-default",
        ),
        pytest.param(
            {"status": ..., "offer_source_id": None}, "other", "other", "default", id="configured-service-default"
        ),
        pytest.param(
            {"status": ..., "offer_source_id": "os-unknown"},
            "declined",
            "declined",
            "default",
            id="unknown-offer-source-configured-default",
        ),
    ],
)
def test_effective_status_through_the_processor(
    conversion_fields: dict[str, Any], service_default: str, expected_status: str, expected_source: str
) -> None:
    rules = f.compiled("camp-1", f.s2s_entry("all"))
    result = run(
        rules,
        f.conversion("cv-1", **conversion_fields),
        offer_sources={"os-pending": "pending"},
        config=f.matcher_config(default_status=service_default),
    )
    (message,) = messages(result)
    assert (message["status"], message["status_source"]) == (expected_status, expected_source)
    assert message["url"].split("&status=")[1].startswith(expected_status + "&")
    assert message["postback_id"] == postback_id("cv-1", "all", expected_status, "deposit")
    (evaluation,) = evaluations(result)
    assert (evaluation["status"], evaluation["status_source"]) == (expected_status, expected_source)


# --- 2.3 No conditional, or conditional.enabled false: fires for every conversion ----------------

UNCONDITIONAL_ENTRIES = [
    pytest.param({}, id="conditional-absent"),
    pytest.param({"conditional": {"enabled": False}}, id="enabled-false"),
    pytest.param(
        {"conditional": {"enabled": False, "types": ["lead"], "statuses": ["declined"]}}, id="false-with-conds"
    ),
    pytest.param({"conditional": {"types": ["lead"], "min_payout": "1000"}}, id="enabled-absent-with-conds"),
]
EVERY_KIND_OF_CONVERSION = [
    ("deposit", "approved", "10"),
    ("lead", "pending", "0"),
    ("Deposit", "declined", "0.01"),
    ("custom-Event", "other", "999999"),
]


@pytest.mark.parametrize("entry_fields", UNCONDITIONAL_ENTRIES)
@pytest.mark.parametrize(("conversion_type", "status", "payout"), EVERY_KIND_OF_CONVERSION)
def test_entry_without_enabled_conditional_fires_for_every_conversion(
    entry_fields: dict[str, Any], conversion_type: str, status: str, payout: str
) -> None:
    assert decide(f.s2s_entry("e", **entry_fields), conversion_type, status, payout) == "fired"


# --- 2.4 An enabled conditional: every condition that is set must hold (AND) ----------------------


@pytest.mark.parametrize(
    ("conditions", "conversion_type", "status", "payout", "expected"),
    [
        # types alone: exact, case-sensitive
        pytest.param({"types": ["deposit"]}, "deposit", "approved", "10", "fired", id="type-in-list"),
        pytest.param({"types": ["deposit"]}, "lead", "approved", "10", "type", id="type-not-in-list"),
        pytest.param({"types": ["Deposit"]}, "deposit", "approved", "10", "type", id="type-case-Deposit-vs-deposit"),
        pytest.param({"types": ["deposit"]}, "Deposit", "approved", "10", "type", id="type-case-deposit-vs-Deposit"),
        pytest.param({"types": ["deposit"]}, "deposit ", "approved", "10", "type", id="type-no-trimming"),
        pytest.param({"types": ["lead", "purchase"]}, "purchase", "approved", "10", "fired", id="type-second-of-two"),
        pytest.param({"types": ["VIP_Signup"]}, "VIP_Signup", "pending", "0", "fired", id="type-custom"),
        pytest.param({"types": ["conversion"]}, "conversion", "approved", "0", "fired", id="type-default-name"),
        # statuses alone
        pytest.param({"statuses": ["approved"]}, "deposit", "approved", "10", "fired", id="status-in-list"),
        pytest.param({"statuses": ["approved"]}, "deposit", "pending", "10", "status", id="status-not-in-list"),
        pytest.param({"statuses": ["approved", "pending"]}, "lead", "pending", "0", "fired", id="status-second-of-two"),
        pytest.param({"statuses": ["approved", "pending"]}, "lead", "declined", "0", "status", id="status-declined"),
        pytest.param({"statuses": ["other"]}, "lead", "other", "0", "fired", id="status-other"),
        # min_payout alone: at least, exact decimals
        pytest.param({"min_payout": "10"}, "deposit", "approved", "10.00", "fired", id="payout-equal-fires"),
        pytest.param({"min_payout": "10"}, "deposit", "approved", "9.99", "payout", id="payout-one-cent-less"),
        pytest.param({"min_payout": "10.00"}, "deposit", "approved", "10.01", "fired", id="payout-one-cent-more"),
        pytest.param({"min_payout": 10}, "deposit", "approved", "10", "fired", id="payout-min-as-number"),
        pytest.param({"min_payout": 9.99}, "deposit", "approved", "9.99", "fired", id="payout-float-equal"),
        pytest.param({"min_payout": 9.99}, "deposit", "approved", 9.98, "payout", id="payout-float-cent-less"),
        pytest.param({"min_payout": "0.1"}, "deposit", "approved", 0.1, "fired", id="payout-float-0.1-equal"),
        pytest.param({"min_payout": "0"}, "deposit", "approved", "0", "fired", id="payout-zero-min-zero"),
        pytest.param({"min_payout": "0.01"}, "deposit", "approved", "0", "payout", id="payout-zero-below"),
        # combined: all must hold; the first failing one is named (types, statuses, min_payout)
        pytest.param(
            {"types": ["deposit"], "statuses": ["approved"]},
            "deposit",
            "approved",
            "1",
            "fired",
            id="types-and-statuses-hold",
        ),
        pytest.param(
            {"types": ["deposit"], "statuses": ["approved"]},
            "deposit",
            "pending",
            "1",
            "status",
            id="type-holds-status-fails",
        ),
        pytest.param(
            {"types": ["deposit"], "statuses": ["approved"]},
            "lead",
            "approved",
            "1",
            "type",
            id="type-fails-status-holds",
        ),
        pytest.param(
            {"types": ["deposit"], "statuses": ["approved"]},
            "lead",
            "pending",
            "1",
            "type",
            id="both-fail-type-named-first",
        ),
        pytest.param(
            {"types": ["deposit"], "min_payout": "5"}, "deposit", "pending", "5", "fired", id="type-and-payout-hold"
        ),
        pytest.param(
            {"types": ["deposit"], "min_payout": "5"},
            "deposit",
            "pending",
            "4.99",
            "payout",
            id="type-holds-payout-fails",
        ),
        pytest.param(
            {"statuses": ["approved"], "min_payout": "5"}, "lead", "approved", "7", "fired", id="status-and-payout-hold"
        ),
        pytest.param(
            {"statuses": ["approved"], "min_payout": "5"},
            "lead",
            "declined",
            "7",
            "status",
            id="status-fails-payout-holds",
        ),
        pytest.param(
            {"statuses": ["approved"], "min_payout": "5"},
            "lead",
            "approved",
            "1",
            "payout",
            id="status-holds-payout-fails",
        ),
        pytest.param(
            {"types": ["deposit"], "statuses": ["approved"], "min_payout": "50"},
            "deposit",
            "approved",
            "50",
            "fired",
            id="all-three-hold",
        ),
        pytest.param(
            {"types": ["deposit"], "statuses": ["approved"], "min_payout": "50"},
            "deposit",
            "approved",
            "49.99",
            "payout",
            id="all-three-payout-fails",
        ),
        pytest.param(
            {"types": ["deposit"], "statuses": ["approved"], "min_payout": "50"},
            "deposit",
            "declined",
            "100",
            "status",
            id="all-three-status-fails",
        ),
        pytest.param(
            {"types": ["deposit"], "statuses": ["approved"], "min_payout": "50"},
            "Deposit",
            "approved",
            "100",
            "type",
            id="all-three-type-case-fails",
        ),
    ],
)
def test_conditions_are_anded(
    conditions: dict[str, Any], conversion_type: str, status: str, payout: Any, expected: SkipReason | str
) -> None:
    entry = f.s2s_entry("e", conditional=f.conditional(**conditions))
    assert decide(entry, conversion_type, status, payout) == expected


@pytest.mark.parametrize(
    ("payout_percent", "min_payout", "payout", "expected"),
    [
        pytest.param(50, "10", "10", "fired", id="half-of-10-sent-but-10-compared"),
        pytest.param(200, "15", "10", "payout", id="double-of-10-sent-but-10-compared"),
        pytest.param(0, "1", "1", "fired", id="zero-percent-still-compares-payout"),
    ],
)
def test_min_payout_compares_the_payout_before_payout_percent(
    payout_percent: int, min_payout: str, payout: str, expected: str
) -> None:
    entry = f.s2s_entry("e", payout_percent=payout_percent, conditional=f.conditional(min_payout=min_payout))
    assert decide(entry, payout=payout) == expected


@pytest.mark.parametrize(
    ("offer_source_default", "service_default", "expected_ids"),
    [
        pytest.param("pending", "approved", ["pending-only"], id="offer-source-pending"),
        pytest.param(None, "approved", ["approved-only"], id="service-default-approved"),
        pytest.param(None, "pending", ["pending-only"], id="service-default-pending"),
        pytest.param("declined", "pending", [], id="offer-source-declined"),
    ],
)
def test_statuses_match_the_effective_status(
    offer_source_default: str | None, service_default: str, expected_ids: list[str]
) -> None:
    rules = f.compiled(
        "camp-1",
        f.s2s_entry("pending-only", conditional=f.conditional(statuses=["pending"])),
        f.meta_entry("approved-only", conditional=f.conditional(statuses=["approved"])),
    )
    offer_sources = {"os-1": offer_source_default} if offer_source_default else {}
    result = run(
        rules,
        f.conversion("cv-1", status=..., offer_source_id="os-1"),
        offer_sources=offer_sources,
        config=f.matcher_config(default_status=service_default),
    )
    assert fired_entry_ids(result) == expected_ids
    assert result.filtered["status"] == 2 - len(expected_ids)


def test_matching_results_are_counted_by_reason_in_a_processor_run() -> None:
    rules = f.compiled(
        "camp-1",
        f.s2s_entry("types", conditional=f.conditional(types=["lead"])),
        f.meta_entry("statuses", conditional=f.conditional(statuses=["pending"])),
        f.google_entry("payout", conditional=f.conditional(min_payout="100")),
        f.tiktok_entry("all"),
    )
    result = run(rules, f.conversion("cv-1", type="deposit", status="approved", payout="10"))
    assert fired_entry_ids(result) == ["all"]
    assert result.filtered == {"type": 1, "status": 1, "payout": 1}
    assert result.matched == {"tiktok": 1}
    (evaluation,) = evaluations(result)
    assert [(s["entry_id"], s["reason"]) for s in evaluation["skipped"]] == [
        ("types", "type"),
        ("statuses", "status"),
        ("payout", "payout"),
    ]


@pytest.mark.parametrize("make_entry", ALL_KIND_ENTRIES, ids=lambda make: make.__name__)
def test_enabled_conditional_without_a_condition_is_rejected(make_entry: Any) -> None:
    document = f.campaign("camp-1", f.s2s_entry("ok"), make_entry("empty", conditional={"enabled": True}))
    errors = validate_campaign_rules(document)
    assert [e.field for e in errors] == ["postbacks.1.conditional"]
    assert "no condition" in errors[0].message
    with pytest.raises(InvalidInput) as caught:
        parse_campaign_rules(b"camp-1", orjson.dumps(document))
    assert caught.value.reason == "invalid_rule"
    assert caught.value.field == "postbacks.1.conditional"
    assert "no condition" in caught.value.message


# --- 2.5 At most once per (conversion_id, entry id, effective status, type) ----------------------


class Worker:
    """The processor and its fired-state across batches, as the worker runs them."""

    def __init__(self, rules: CampaignRules, **processor_options: Any) -> None:
        self.fired_state = f.InMemoryFiredState()
        self.processor = f.processor(rules, fired_state=self.fired_state, **processor_options)
        self.offset = 0

    def batch(self, *conversions: dict[str, Any]) -> BatchResult:
        records = []
        for conversion in conversions:
            records.append(f.source_record(conversion, partition=3, offset=self.offset))
            self.offset += 1
        result = self.processor.process(records)
        self.fired_state.apply(result.fired_updates)  # after the produce acks, in the worker
        return result


def fired_tuples(result: BatchResult) -> list[tuple[str, str, str]]:
    return [(m["entry_id"], m["status"], m["type"]) for m in messages(result)]


def test_identical_redelivery_fires_nothing() -> None:
    worker = Worker(f.compiled("camp-1", f.s2s_entry("src"), f.meta_entry("fb")))
    first = worker.batch(f.conversion("cv-1"))
    assert fired_tuples(first) == [("src", "approved", "deposit"), ("fb", "approved", "deposit")]
    again = worker.batch(f.conversion("cv-1"))
    assert messages(again) == []
    assert again.filtered == {"duplicate": 2}
    assert again.fired_updates == {}
    (evaluation,) = evaluations(again)
    assert evaluation["outcome"] == "nothing_fired"
    assert {s["reason"] for s in evaluation["skipped"]} == {"duplicate"}
    assert worker.fired_state.reads[-1] == ("cv-1", 3)  # looked up on the record's partition


@pytest.mark.parametrize(
    ("sequence", "expected"),
    [
        pytest.param(
            [{"status": "pending"}, {"status": "approved"}],
            [[("all", "pending", "deposit")], [("all", "approved", "deposit"), ("paid", "approved", "deposit")]],
            id="pending-then-approved",
        ),
        pytest.param(
            [{"type": "lead"}, {"type": "purchase"}],
            [[("all", "approved", "lead")], [("all", "approved", "purchase"), ("paid", "approved", "purchase")]],
            id="lead-then-purchase",
        ),
        pytest.param(
            [{"status": "approved"}, {"status": "pending"}, {"status": "approved"}],
            [[("all", "approved", "deposit"), ("paid", "approved", "deposit")], [("all", "pending", "deposit")], []],
            id="approved-pending-approved",
        ),
        pytest.param(
            [{"status": "approved"}, {"status": "declined"}, {"status": "approved"}, {"status": "declined"}],
            [
                [("all", "approved", "deposit"), ("paid", "approved", "deposit")],
                [("all", "declined", "deposit")],
                [],
                [],
            ],
            id="flapping-fires-each-status-once",
        ),
        pytest.param(
            [{"status": ...}, {"status": "approved"}],
            [[("all", "approved", "deposit"), ("paid", "approved", "deposit")], []],
            id="default-status-then-same-status-from-event",
        ),
        pytest.param(
            [{"payout": "1"}, {"payout": "500"}],
            [[("all", "approved", "deposit"), ("paid", "approved", "deposit")], []],
            id="payout-change-alone-is-not-new",
        ),
    ],
)
def test_updates_fire_what_now_matches_and_has_not_fired(
    sequence: list[dict[str, Any]], expected: list[list[tuple[str, str, str]]]
) -> None:
    rules = f.compiled(
        "camp-1",
        f.s2s_entry("all"),
        f.meta_entry("paid", conditional=f.conditional(statuses=["approved"], types=["deposit", "purchase"])),
    )
    worker = Worker(rules)
    assert [fired_tuples(worker.batch(f.conversion("cv-1", **fields))) for fields in sequence] == expected


@pytest.mark.parametrize(
    ("sequence", "expected"),
    [
        pytest.param([{}, {}], [("all", "approved", "deposit")], id="identical-twice"),
        pytest.param([{}, {}, {}], [("all", "approved", "deposit")], id="identical-three-times"),
        pytest.param(
            [{"status": "pending"}, {"status": "approved"}],
            [("all", "pending", "deposit"), ("all", "approved", "deposit")],
            id="pending-then-approved",
        ),
        pytest.param(
            [{"status": "approved"}, {"status": "pending"}, {"status": "approved"}],
            [("all", "approved", "deposit"), ("all", "pending", "deposit")],
            id="approved-pending-approved",
        ),
        pytest.param(
            [{"type": "lead"}, {"type": "purchase"}, {"type": "lead"}],
            [("all", "approved", "lead"), ("all", "approved", "purchase")],
            id="lead-purchase-lead",
        ),
    ],
)
def test_redelivery_inside_one_batch(sequence: list[dict[str, Any]], expected: list[tuple[str, str, str]]) -> None:
    worker = Worker(f.compiled("camp-1", f.s2s_entry("all")))
    result = worker.batch(*(f.conversion("cv-1", **fields) for fields in sequence))
    assert fired_tuples(result) == expected
    assert result.fired_updates["cv-1"].postback_ids == {m["postback_id"] for m in messages(result)}
    assert worker.batch(*(f.conversion("cv-1", **fields) for fields in sequence)).filtered["duplicate"] == len(sequence)


def test_fired_state_accumulates_every_postback_id_of_a_conversion() -> None:
    worker = Worker(f.compiled("camp-1", f.s2s_entry("all")))
    worker.batch(f.conversion("cv-1", status="pending"))
    worker.batch(f.conversion("cv-1", status="approved"))
    record = worker.fired_state.records["cv-1"]
    assert record.partition == 3
    assert record.postback_ids == {
        postback_id("cv-1", "all", "pending", "deposit"),
        postback_id("cv-1", "all", "approved", "deposit"),
    }


def test_other_conversions_and_other_entries_are_independent() -> None:
    worker = Worker(f.compiled("camp-1", f.s2s_entry("a"), f.s2s_entry("b")))
    worker.batch(f.conversion("cv-1"))
    result = worker.batch(f.conversion("cv-2"), f.conversion("cv-1"))
    assert [(m["conversion_id"], m["entry_id"]) for m in messages(result)] == [("cv-2", "a"), ("cv-2", "b")]


def test_fired_state_older_than_the_retention_is_not_consulted() -> None:
    fired_state = f.InMemoryFiredState()
    stale_since = int(f.MATCHED_AT.timestamp()) - 90 * 86_400 - 1
    fired_state.records["cv-1"] = FiredRecord(
        stale_since, 0, frozenset({postback_id("cv-1", "all", "approved", "deposit")})
    )
    processor = f.processor(f.compiled("camp-1", f.s2s_entry("all")), fired_state=fired_state)
    assert len(messages(processor.process([f.source_record(f.conversion("cv-1"))]))) == 1


def test_a_failure_on_a_redelivery_keeps_the_fired_state_of_the_same_batch() -> None:
    rules = f.compiled("camp-1", f.s2s_entry("all"))
    calls: list[str] = []

    def rules_for(campaign_id: str) -> CampaignRules | None:
        calls.append(campaign_id)
        if len(calls) == 2:
            raise RuntimeError("table read failed")
        return rules

    records = f.source_records([f.conversion("cv-1"), f.conversion("cv-1", status="pending")])
    result = f.processor(rules_for=rules_for).process(records)
    (fired,) = messages(result)
    assert result.invalid == {"processing_error": 1}
    # the first record's postback was produced, so its id must be remembered
    assert result.fired_updates["cv-1"].postback_ids == {fired["postback_id"]}


# --- 2.6 payout_percent scales the payout that is sent ------------------------------------------


@pytest.mark.parametrize(
    ("payout", "payout_percent", "expected"),
    [
        pytest.param("10.00", None, "10", id="default-100"),
        pytest.param("10", 100, "10", id="explicit-100"),
        pytest.param("10", 50, "5", id="50"),
        pytest.param("10", "33.3", "3.33", id="33.3-string"),
        pytest.param("10", 33.3, "3.33", id="33.3-number"),
        pytest.param("10", 150, "15", id="150"),
        pytest.param("10", 1000, "100", id="1000-maximum"),
        pytest.param("10", 0, "0", id="0"),
        pytest.param("0.1", 100, "0.1", id="0.1-string"),
        pytest.param(0.1, None, "0.1", id="0.1-float-json-number"),
        pytest.param(0.1, 50, "0.05", id="0.1-float-at-50"),
        pytest.param(0.1, "33.3", "0.0333", id="0.1-float-at-33.3"),
        pytest.param(1.1, 300, "3.3", id="1.1-float-at-300-no-binary-error"),
        pytest.param(0.3, 10, "0.03", id="0.3-float-at-10"),
        pytest.param("12.345", None, "12.345", id="12.345"),
        pytest.param(12.345, "33.3", "4.110885", id="12.345-at-33.3"),
        pytest.param("12.340", None, "12.34", id="trailing-zero-dropped"),
        pytest.param(7, 100, "7", id="integer-json-number"),
        pytest.param(..., None, "0", id="payout-absent-defaults-to-0"),
        pytest.param(None, None, "0", id="payout-null-defaults-to-0"),
        pytest.param(1e20, None, "100000000000000000000", id="large-float-plain-notation"),
        pytest.param(
            "999999999999999999.999999999999", None, "999999999999999999.999999999999", id="30-digits-kept-exact"
        ),
        pytest.param(
            "999999999999999999.999999999999", 50, "499999999999999999.9999999999995", id="30-digits-at-50-exact"
        ),
    ],
)
def test_payout_percent(payout: Any, payout_percent: Any, expected: str) -> None:
    entry_fields = {} if payout_percent is None else {"payout_percent": payout_percent}
    rules = f.compiled(
        "camp-1",
        f.s2s_entry("src", url="https://t.example/pb?p={payout}", **entry_fields),
        f.meta_entry("fb", **entry_fields),
    )
    result = run(rules, f.conversion("cv-1", payout=payout))
    s2s, meta = result.messages[0], result.messages[1]
    for raw in (s2s.value, meta.value):
        # sent as a JSON string, never a number
        assert b'"payout":"' + expected.encode() + b'"' in raw
    assert orjson.loads(s2s.value)["url"] == f"https://t.example/pb?p={expected}"
    (evaluation,) = evaluations(result)
    assert [fired["payout"] for fired in evaluation["fired"]] == [expected, expected]


def test_conversion_payout_is_kept_beside_the_scaled_payout() -> None:
    result = run(f.compiled("camp-1", f.meta_entry("fb", payout_percent=50)), f.conversion("cv-1", payout=0.1))
    (message,) = messages(result)
    assert (message["payout"], message["conversion_payout"]) == ("0.05", "0.1")
    (evaluation,) = evaluations(result)
    assert evaluation["payout"] == "0.1"


def test_fired_decision_carries_exact_decimal_payout() -> None:
    rules = f.compiled("camp-1", f.s2s_entry("src", payout_percent="33.3"))
    (decision,) = evaluate_entries(rules, "cv-1", "deposit", "approved", Decimal("12.345"), frozenset())
    assert isinstance(decision, Fired)
    assert decision.payout == Decimal("4.110885")


# --- 2.7 No rules: nothing fired, counted no_rules ---------------------------------------------


def test_conversion_without_campaign_rules_fires_nothing_and_is_counted() -> None:
    rules = f.compiled("camp-1", f.s2s_entry("src"))
    result = run(rules, f.conversion("cv-1", campaign_id="camp-unknown"), f.conversion("cv-2", campaign_id="camp-x"))
    assert messages(result) == []
    assert result.filtered == {"no_rules": 2}
    assert result.matched == {}
    assert result.invalid == {}
    assert result.fired_updates == {}
    assert [(e["conversion_id"], e["outcome"], e["fired"], e["skipped"]) for e in evaluations(result)] == [
        ("cv-1", "no_rules", [], []),
        ("cv-2", "no_rules", [], []),
    ]


def test_campaign_with_an_empty_postbacks_list_has_rules_but_fires_nothing() -> None:
    # A published, empty list is a deliberate configuration, not a missing one: not counted as no_rules.
    result = run(f.compiled("camp-1"), f.conversion("cv-1"))
    assert messages(result) == []
    assert result.filtered == {}
    (evaluation,) = evaluations(result)
    assert evaluation["outcome"] == "nothing_fired"


def test_without_evaluations_topic_only_postbacks_are_emitted() -> None:
    rules = f.compiled("camp-1", f.s2s_entry("src"))
    result = run(
        rules,
        f.conversion("cv-1"),
        f.conversion("cv-2", campaign_id="none"),
        config=f.matcher_config(evaluations=False),
    )
    assert [m.topic for m in result.messages] == ["postbacks.s2s"]
    assert result.filtered == {"no_rules": 1}


def test_postbacks_are_keyed_by_conversion_id_and_routed_by_kind() -> None:
    rules = f.compiled(
        "camp-1", f.s2s_entry("a"), f.google_entry("b"), f.meta_entry("c"), f.tiktok_entry("d"), f.microsoft_entry("e")
    )
    result = run(rules, f.conversion("cv-1"), config=f.matcher_config(evaluations=False))
    assert [(m.topic, m.key) for m in result.messages] == [
        ("postbacks.s2s", b"cv-1"),
        ("postbacks.google_ads", b"cv-1"),
        ("postbacks.meta", b"cv-1"),
        ("postbacks.tiktok", b"cv-1"),
        ("postbacks.microsoft_ads", b"cv-1"),
    ]
    assert [m["destination_id"] for m in messages(result)] == [
        "s2s:tracker.example",
        "google_ads:1234567890",
        "meta:1234567890",
        "tiktok:CABC123",
        "microsoft_ads:2222222",
    ]
