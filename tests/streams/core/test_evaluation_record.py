"""The evaluation record (conversions.evaluated) as the trace index reads it: complete and impersonal."""

from __future__ import annotations

from typing import Any

import orjson

from streams.core.batch import BatchResult
from tests import factories as f


def evaluations(result: BatchResult) -> list[dict[str, Any]]:
    return [orjson.loads(m.value) for m in result.messages if m.topic == "conversions.evaluated" and m.value]


def test_every_entry_is_named_with_its_destination_and_the_conversion_with_its_time() -> None:
    rules = f.compiled(
        "camp-1",
        f.s2s_entry("src"),
        f.meta_entry("fb", conditional=f.conditional(types=["purchase"])),
        f.google_entry("g", enabled=False),
    )
    conversion = f.conversion("cv-1", type="deposit", payout="12.5")
    result = f.processor(rules).process(f.source_records([conversion]))
    (evaluation,) = evaluations(result)
    assert f.schema_errors("evaluation", evaluation) == []
    assert evaluation["occurred_at"] == conversion["occurred_at"]
    destinations = {e.id: e.destination_id for e in rules.entries}
    assert [(e["entry_id"], e["destination_id"]) for e in evaluation["fired"]] == [("src", destinations["src"])]
    assert [(e["entry_id"], e["destination_id"], e["reason"]) for e in evaluation["skipped"]] == [
        ("fb", destinations["fb"], "type"),
        ("g", destinations["g"], "disabled"),
    ]


def test_no_personal_data_and_no_click_ids_reach_the_record() -> None:
    rules = f.compiled("camp-1", f.s2s_entry("src"), f.meta_entry("fb"))
    conversion = f.conversion("cv-1")
    result = f.processor(rules).process(f.source_records([conversion]))
    (evaluation,) = evaluations(result)
    assert not {"user", "click_ids", "subs", "click_id"} & set(evaluation)
    for entry in [*evaluation["fired"], *evaluation["skipped"]]:
        assert not {"user", "click_ids", "subs"} & set(entry)


def test_a_repeated_version_is_evaluated_again_and_says_duplicate() -> None:
    rules = f.compiled("camp-1", f.s2s_entry("src"))
    conversion = f.conversion("cv-1")
    result = f.processor(rules).process(f.source_records([conversion, conversion]))
    first, second = evaluations(result)
    assert first["outcome"] == "fired" and second["outcome"] == "nothing_fired"
    assert [s["reason"] for s in second["skipped"]] == ["duplicate"]
