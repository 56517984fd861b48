"""The pure parts of `make chaos`: its reference model, its leak scan and its accounting must be right,
or a passing chaos run proves nothing."""

from __future__ import annotations

import base64
import hashlib
import random
from decimal import Decimal

from devtools.chaos import leaks
from devtools.chaos.faults import Ledger
from devtools.chaos.model import (
    S2S_TOKEN,
    Entry,
    Plan,
    effective_status,
    expectations,
    fired_by,
    hostile_record,
    make_plan,
    personal_data,
)
from devtools.chaos.report import after_ack_repeats, drain_seconds, targets
from schemas.redaction import scrub
from streams.core.postback_ids import postback_id


def version(**fields: object) -> dict[str, object]:
    return {"conversion_id": "cv-1", "campaign_id": "camp-0", "type": "deposit", "payout": "7", **fields}


# --- the reference model -------------------------------------------------------------------------------


def test_the_model_applies_every_condition_of_a_conditional_entry() -> None:
    entry = Entry("e", "s2s", True, True, types=("deposit",), statuses=("approved",), min_payout=Decimal("5"))
    assert entry.fires("approved", "deposit", Decimal("5"))
    assert not entry.fires("pending", "deposit", Decimal("5"))
    assert not entry.fires("approved", "lead", Decimal("5"))
    assert not entry.fires("approved", "deposit", Decimal("4.99"))
    assert not Entry("off", "s2s", False, False).fires("approved", "deposit", Decimal("5"))
    assert Entry("all", "s2s", True, False).fires("declined", "lead", Decimal("0"))


def test_the_status_falls_back_to_the_offer_source_then_the_service_default() -> None:
    assert effective_status(version(status="declined", offer_source_id="os-approved")) == "declined"
    assert effective_status(version(offer_source_id="os-pending")) == "pending"
    assert effective_status(version()) == "approved"


def test_postbacks_are_identified_by_conversion_entry_status_and_type() -> None:
    fired = fired_by(version(status="pending"), [Entry("e", "s2s", True, False)])
    assert fired == {postback_id("cv-1", "e", "pending", "deposit"): ("cv-1", "e", "pending", "deposit")}


def test_around_a_rules_change_only_what_both_rule_sets_fire_must_arrive() -> None:
    old = [Entry("kept", "s2s", True, False), Entry("dropped", "s2s", True, False)]
    new = [Entry("kept", "s2s", True, False), Entry("added", "s2s", True, False)]
    plan = Plan(
        records=[("cv-1", {}), ("cv-2", {})],
        versions=[version(status="approved"), version(conversion_id="cv-2", status="approved")],
        campaigns={"camp-0": old},
        changed={"camp-0": new},
        conversions=2,
        invalid=0,
    )
    expect = expectations(plan, sent_at=[100.0, 120.0], changed_at=105.0, settle=10.0)
    pid = postback_id
    assert set(expect.must) == {
        pid("cv-1", "kept", "approved", "deposit"),  # sent before the change: both rule sets fire it
        pid("cv-2", "kept", "approved", "deposit"),  # sent after the change settled: the new rules
        pid("cv-2", "added", "approved", "deposit"),
    }
    assert pid("cv-1", "dropped", "approved", "deposit") in expect.allowed  # either way, before
    assert pid("cv-1", "added", "approved", "deposit") in expect.allowed
    assert pid("cv-2", "dropped", "approved", "deposit") not in expect.allowed  # never, after


def test_a_plan_has_every_hostile_kind_and_counts_what_must_be_refused() -> None:
    plan = make_plan(random.Random(3), conversions=400, campaigns=10, hostile_share=0.05, change_share=0.2)
    assert sum(plan.hostile.values()) == len([v for v in plan.versions if v is None])
    assert 0.03 < sum(plan.hostile.values()) / len(plan.records) < 0.07
    assert plan.invalid == sum(n for kind, n in plan.hostile.items() if kind != "unknown_campaign")
    assert {e.kind for entries in plan.campaigns.values() for e in entries} == {
        "s2s",
        "meta",
        "google_ads",
        "tiktok",
        "microsoft_ads",
    }
    # the oversized record is about 200 KB on the wire: past what its escaped copy could take whole
    oversized = [
        value
        for n in range(400)
        for _, value, _, kind in [hostile_record(random.Random(n), n, "c")]
        if kind == "oversized"
    ]
    assert oversized and all(200_000 < len(value) < 210_000 for value in oversized)


# --- the leak scan -------------------------------------------------------------------------------------


def scan(data: bytes, **allowed: bool) -> dict[str, int]:
    return dict(leaks.findings(leaks.Scanned("topic", data, **allowed), secrets=["meta-access-token-xyz"]))


def test_the_scan_finds_personal_data_in_every_form_a_reader_would_try() -> None:
    person = personal_data(42)
    email = person["email"].encode()
    assert scan(b'{"x": "' + email + b'"}') == {"email": 1}
    assert scan(email.replace(b"@", b"%40")) == {"email": 1}
    for pad in (b"", b"a", b"ab"):  # wherever the address sits in what was encoded
        assert scan(b"blob " + base64.b64encode(pad + b"mail=" + email + b"; ") + b" end") == {"email": 1}
    assert scan(person["phone"].encode()) == {"phone": 1}
    assert scan(b"+447911000042") == {"phone": 1}
    assert scan(person["ip"].encode()) == {"ip": 1}
    assert scan(person["external_id"].encode()) == {"external_id": 1}
    assert scan(b"token meta-access-token-xyz") == {"secret:meta…": 1}
    assert scan(b"url?token=" + S2S_TOKEN.encode()) == {"s2s_token": 1}


def test_the_scan_allows_what_travels_by_design_and_ignores_hashes() -> None:
    assert scan(b"203.0.113.9", may_carry_ip=True) == {}
    assert scan(S2S_TOKEN.encode(), may_carry_s2s_token=True) == {}
    digest = hashlib.sha256(personal_data(42)["email"].encode()).hexdigest().encode()
    assert scan(b'{"email_sha256": "' + digest + b'"}') == {}


def test_what_the_service_redacts_passes_the_scan() -> None:
    person = personal_data(7)
    text = f"email={person['email']} phone={person['phone']} ip={person['ip']}"
    assert scan(text.encode()) == {"email": 1, "phone": 1, "ip": 1}
    assert scan(scrub(text).encode()) == {}


# --- the accounting ------------------------------------------------------------------------------------


def test_a_repeat_counts_as_after_ack_unless_a_dispatcher_died_around_the_earlier_answer() -> None:
    accepted = {"a": [10.0, 30.0], "b": [50.0, 60.0], "c": [70.0], "d": [80.0, 85.0, 90.0]}
    kills = [51.0, 79.5]
    # a: no kill near 10 -> after ack; b: kill 1 s after the answer -> in flight; d: 80 in flight, 85 not
    assert after_ack_repeats(accepted, kills) == 2
    assert after_ack_repeats({"x": [10.0, 20.0]}, [14.0]) == 1  # 4 s later: the answer had been recorded


def test_the_drain_is_measured_from_the_end_of_the_outage_for_what_was_pending() -> None:
    plan = Plan([("cv-1", {})], [version(status="approved")], {"camp-0": [Entry("e", "meta", True, False)]}, {}, 1, 0)
    expect = expectations(plan, [10.0], float("inf"), 10.0)
    pid = next(iter(expect.must))
    ledger = Ledger()
    ledger.accept("meta", pid, 95.0)
    assert drain_seconds(expect, ledger, {pid: 10.0}, outage_until=50.0)["meta"] == 45.0
    assert drain_seconds(expect, ledger, {pid: 60.0}, outage_until=50.0)["meta"] == 0.0  # sent after it


def test_targets_fail_on_any_loss_duplicate_after_ack_or_leak() -> None:
    good = {
        "lost": 0,
        "unexpected_postbacks": 0,
        "postbacks_with_two_results": 0,
        "invalid_sent": 5,
        "invalid_captured": 5,
        "duplicates_unkeyed": 3,
        "kills": 10,
        "duplicates_after_ack": 0,
        "pii_or_secret_leaks": 0,
        "max_drain_after_outage_s": 100.0,
        "unexpected_exits": 0,
        "completed_before_deadline": True,
    }
    assert all(ok for _, ok in targets(good, min_kills=10).values())
    for name, bad in [
        ("lost", 1),
        ("postbacks_with_two_results", 1),
        ("invalid_captured", 4),
        ("duplicates_unkeyed", 11),
        ("duplicates_after_ack", 1),
        ("pii_or_secret_leaks", 1),
        ("max_drain_after_outage_s", 121.0),
        ("kills", 9),
    ]:
        assert not targets({**good, name: bad}, min_kills=10)[name][1], name
