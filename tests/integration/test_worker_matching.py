"""The worker through a real broker: rules and conversions in, exactly the expected postbacks out."""

from __future__ import annotations

import pytest

from tests import factories as f
from tests.integration.kafka_helpers import Deployment, Record, count_at_least

pytestmark = [pytest.mark.integration, pytest.mark.time_dependent]


def by_conversion(records: list[Record]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for record in records:
        message = record.json()
        out.setdefault(message["conversion_id"], []).append(message)
    return out


async def test_rules_then_conversions_emit_exactly_the_expected_postbacks(deployment: Deployment) -> None:
    await deployment.produce(
        "campaign-rules",
        [
            (
                "camp-1",
                f.campaign(
                    "camp-1",
                    f.s2s_entry("paid-deposits", conditional=f.conditional(types=["deposit"], statuses=["approved"])),
                    f.meta_entry("fb-all", payout_percent=50),
                    f.google_entry("gads-off", enabled=False),
                ),
            )
        ],
    )
    deployment.start_worker()
    await deployment.produce(
        "conversions",
        [
            ("a", f.conversion("a", payout="12.50")),  # s2s + meta
            ("b", f.conversion("b", status="pending")),  # meta only
            ("c", f.conversion("c", type="lead")),  # meta only
            ("d", f.conversion("d", campaign_id="camp-unknown")),  # nothing: no rules
        ],
    )
    evaluations = await deployment.wait_for("conversions.evaluated", count_at_least(4), "4 evaluations")
    s2s = by_conversion(await deployment.read("postbacks.s2s"))
    meta = by_conversion(await deployment.read("postbacks.meta"))
    assert set(s2s) == {"a"}
    assert set(meta) == {"a", "b", "c"}
    assert await deployment.read("postbacks.google_ads") == []
    (s2s_a,) = s2s["a"]
    assert s2s_a["url"] == "https://tracker.example/postback?cid=click-a&status=approved&payout=12.5&type=deposit"
    assert s2s_a["payout"] == "12.5"
    assert meta["a"][0]["payout"] == "6.25"  # payout_percent 50
    outcomes = {r.json()["conversion_id"]: r.json()["outcome"] for r in evaluations}
    assert outcomes == {"a": "fired", "b": "fired", "c": "fired", "d": "no_rules"}


def evaluations_for(records: list[Record]) -> dict[str, list[dict]]:
    return by_conversion(records)


def outcome_count(n: int):  # type: ignore[no-untyped-def]
    return count_at_least(n)


async def test_every_emitted_message_validates_against_its_schema(deployment: Deployment) -> None:
    from streams.core.schema_checks import full_validator

    await deployment.produce(
        "campaign-rules",
        [("camp-1", f.campaign("camp-1", f.s2s_entry("src"), f.meta_entry("fb"), f.google_entry("g")))],
    )
    deployment.start_worker()
    await deployment.produce(
        "conversions",
        [
            (
                "v1",
                f.conversion(
                    "v1",
                    user={"email": " Ann@Example.com ", "phone": "+1 415 555 2671", "ip": "203.0.113.9"},
                    click_ids={"gclid": "g-1", "fbc": "fb.1.1.abc"},
                    subs={"sub1": "x y", "geo": "DE"},
                ),
            ),
            ("v2", f.conversion("v2", status=None)),
            ("bad", b"{not json"),
        ],
    )
    await deployment.wait_for("conversions.evaluated", count_at_least(2), "2 evaluations")
    await deployment.wait_for("conversions.invalid", count_at_least(1), "1 invalid")
    checks = {
        "postbacks.s2s": "matched-postback",
        "postbacks.meta": "matched-postback",
        "postbacks.google_ads": "matched-postback",
        "conversions.invalid": "invalid-record",
        "conversions.evaluated": "evaluation",
    }
    seen = 0
    for topic, schema in checks.items():
        for record in await deployment.read(topic):
            errors = [e.message for e in full_validator(schema).iter_errors(record.json())]
            assert errors == [], f"{topic}: {errors}"
            seen += 1
    assert seen == 3 * 2 + 1 + 2
    raw = b"".join([r.value or b"" for t in checks for r in await deployment.read(t)])
    assert b"Ann@Example.com" not in raw and b"ann@example.com" not in raw and b"555 2671" not in raw


async def test_a_rule_update_takes_effect_for_later_conversions(deployment: Deployment) -> None:
    deployment.start_worker()
    only_deposits = f.campaign("camp-1", f.s2s_entry("src", conditional=f.conditional(types=["deposit"])))
    only_leads = f.campaign("camp-1", f.s2s_entry("src", conditional=f.conditional(types=["lead"])))
    await deployment.produce("campaign-rules", [("camp-1", only_deposits)])
    await deployment.produce(
        "conversions", [("d1", f.conversion("d1", type="deposit")), ("l1", f.conversion("l1", type="lead"))]
    )
    await deployment.wait_for("conversions.evaluated", count_at_least(2), "first 2 evaluations")
    await deployment.produce("campaign-rules", [("camp-1", only_leads)])
    await deployment.produce(
        "conversions", [("d2", f.conversion("d2", type="deposit")), ("l2", f.conversion("l2", type="lead"))]
    )
    await deployment.wait_for("conversions.evaluated", count_at_least(4), "4 evaluations")
    assert set(by_conversion(await deployment.read("postbacks.s2s"))) == {"d1", "l2"}


async def test_a_tombstone_removes_the_campaign(deployment: Deployment) -> None:
    deployment.start_worker()
    await deployment.produce("campaign-rules", [("camp-1", f.campaign("camp-1", f.s2s_entry("src")))])
    await deployment.produce("conversions", [("before", f.conversion("before"))])
    await deployment.wait_for("postbacks.s2s", count_at_least(1), "postback before the tombstone")
    await deployment.produce("campaign-rules", [("camp-1", None)])
    await deployment.produce("conversions", [("after", f.conversion("after"))])
    evaluations = await deployment.wait_for("conversions.evaluated", count_at_least(2), "2 evaluations")
    outcomes = {r.json()["conversion_id"]: r.json()["outcome"] for r in evaluations}
    assert outcomes == {"before": "fired", "after": "no_rules"}
    assert set(by_conversion(await deployment.read("postbacks.s2s"))) == {"before"}


async def test_offer_source_default_status_applies_to_conversions_without_status(deployment: Deployment) -> None:
    await deployment.produce(
        "offer-sources", [("net-pending", {"offer_source_id": "net-pending", "default_status": "pending"})]
    )
    await deployment.produce(
        "campaign-rules",
        [
            (
                "camp-1",
                f.campaign(
                    "camp-1",
                    f.s2s_entry("approved-only", conditional=f.conditional(statuses=["approved"])),
                    f.meta_entry("all"),
                ),
            )
        ],
    )
    deployment.start_worker()
    await deployment.produce(
        "conversions",
        [
            ("from-source", f.conversion("from-source", status=..., offer_source_id="net-pending")),
            ("from-default", f.conversion("from-default", status=..., offer_source_id="unknown-net")),
            ("from-event", f.conversion("from-event", status="approved", offer_source_id="net-pending")),
        ],
    )
    await deployment.wait_for("conversions.evaluated", count_at_least(3), "3 evaluations")
    meta = {cid: msgs[0] for cid, msgs in by_conversion(await deployment.read("postbacks.meta")).items()}
    assert {cid: (m["status"], m["status_source"]) for cid, m in meta.items()} == {
        "from-source": ("pending", "offer_source"),
        "from-default": ("approved", "default"),
        "from-event": ("approved", "event"),
    }
    assert set(by_conversion(await deployment.read("postbacks.s2s"))) == {"from-default", "from-event"}


async def test_update_fires_once_more_and_identical_redelivery_fires_nothing(deployment: Deployment) -> None:
    await deployment.produce("campaign-rules", [("camp-1", f.campaign("camp-1", f.s2s_entry("src")))])
    deployment.start_worker()
    pending = f.conversion("c1", status="pending")
    approved = f.conversion("c1", status="approved")
    await deployment.produce("conversions", [("c1", pending), ("c1", pending)])
    await deployment.wait_for("conversions.evaluated", count_at_least(2), "2 evaluations")
    await deployment.produce("conversions", [("c1", approved), ("c1", approved), ("c1", pending)])
    evaluations = await deployment.wait_for("conversions.evaluated", count_at_least(5), "5 evaluations")
    postbacks = [r.json() for r in await deployment.read("postbacks.s2s")]
    assert [p["status"] for p in postbacks] == ["pending", "approved"]
    assert len({p["postback_id"] for p in postbacks}) == 2
    skipped = [e.json()["skipped"] for e in evaluations]
    assert [s[0]["reason"] if s else None for s in skipped] == [None, "duplicate", None, "duplicate", "duplicate"]


async def test_invalid_conversions_are_kept_with_their_reason_and_processing_goes_on(deployment: Deployment) -> None:
    await deployment.produce("campaign-rules", [("camp-1", f.campaign("camp-1", f.s2s_entry("src")))])
    deployment.extra_env["MAX_CONVERSION_BYTES"] = "4096"
    deployment.start_worker()
    bad = [
        ("n1", b"\xff\xfe not utf-8", "not_utf8"),
        ("n2", b"{'single': 'quotes'}", "not_json"),
        ("n3", b"[1, 2, 3]", "not_object"),
        ("n4", {k: v for k, v in f.conversion("n4").items() if k != "click_id"}, "missing_field"),
        ("n5", f.conversion("n5", payout=[1]), "wrong_type"),
        ("n6", f.conversion("n6", status="paid"), "invalid_value"),
        ("n7", f.conversion("n7", payout="-5"), "invalid_value"),
        ("n8", f.conversion("n8", subs={f"k{i}": "y" * 1000 for i in range(5)}), "oversized"),
        ("other-key", f.conversion("n9"), "key_mismatch"),
    ]
    await deployment.produce("conversions", [(key, value) for key, value, _ in bad])
    await deployment.produce("conversions", [("ok", f.conversion("ok"))])
    invalid = await deployment.wait_for("conversions.invalid", count_at_least(len(bad)), f"{len(bad)} invalid")
    await deployment.wait_for("postbacks.s2s", count_at_least(1), "the valid conversion's postback")
    reasons = {r.key.decode(): r.json()["error"]["reason"] for r in invalid if r.key}
    assert reasons == {key: reason for key, _, reason in bad}
    for record in invalid:
        body = record.json()
        assert body["source"]["topic"] == deployment.topic("conversions")
        assert isinstance(body["source"]["offset"], int)
    not_utf8 = next(r.json() for r in invalid if r.key == b"n1")
    assert not_utf8["value_encoding"] == "base64"
    assert [r.json()["conversion_id"] for r in await deployment.read("postbacks.s2s")] == ["ok"]


async def test_an_invalid_rule_leaves_the_previous_one_in_force(deployment: Deployment) -> None:
    deployment.start_worker()
    good = f.campaign("camp-1", f.s2s_entry("src"))
    broken = f.campaign("camp-1", f.s2s_entry("src", url="https://t.example/?c={no_such_macro}"))
    await deployment.produce("campaign-rules", [("camp-1", good), ("camp-1", broken)])
    invalid = await deployment.wait_for("campaign-rules.invalid", count_at_least(1), "invalid rule recorded")
    error = invalid[0].json()["error"]
    assert error["reason"] == "invalid_rule"
    assert "no_such_macro" in error["message"] and error["field"] == "postbacks.0.url"
    await deployment.produce("conversions", [("c1", f.conversion("c1"))])
    postbacks = await deployment.wait_for("postbacks.s2s", count_at_least(1), "postback under the previous rule")
    assert postbacks[0].json()["url"].startswith("https://tracker.example/postback?cid=click-c1")
    assert len(await deployment.read("campaign-rules.invalid")) == 1
