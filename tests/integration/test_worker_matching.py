"""The worker through a real broker: rules and conversions in, exactly the expected postbacks out."""

from __future__ import annotations

import pytest

from tests import factories as f
from tests.integration.kafka_helpers import Deployment, Record, count_at_least

pytestmark = pytest.mark.integration


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
