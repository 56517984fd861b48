"""The pure parts of `make bench` (devtools/bench): no broker, no processes, milliseconds."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from itertools import islice

import orjson
import pytest

from devtools.bench.__main__ import parse_sections
from devtools.bench.common import metric_total, rotated
from devtools.bench.memory import LogProgress, parse_log_lines
from devtools.bench.minimal_rules import compile_rules, evaluate
from devtools.bench.report import (
    FAIL,
    NOT_AT_SIZE,
    NOT_MEASURED,
    PASS,
    TARGETS,
    Sample,
    Target,
    busy_window,
    number,
    pairwise_ratios,
    per_second,
    percentile,
    ratio,
    render_table,
    rows_for,
    summarize,
    target_for,
    verdict_counts,
)
from devtools.bench.workload import campaign_documents, conversions, fired_share


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([4, 1, 3, 2], 50) == 2.5
    assert percentile([4, 1, 3, 2], 0) == 1
    assert percentile([4, 1, 3, 2], 100) == 4
    assert percentile(list(range(101)), 99) == 99
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile([1], 101)


def test_ratio_is_nan_without_a_measured_denominator() -> None:
    assert ratio(3, 4) == 0.75
    assert math.isnan(ratio(3, 0))
    assert math.isnan(ratio(math.nan, 4))
    assert math.isnan(ratio(3, math.nan))


def test_busy_window_leaves_out_start_up_and_the_idle_tail() -> None:
    samples = [
        Sample(0.0, 0.5, 0),  # starting: not counted
        Sample(1.0, 1.0, 100),
        Sample(2.0, 1.5, 1100),
        Sample(3.0, 2.0, 2100),
        Sample(4.0, 2.2, 3000),  # finished somewhere before this look: not counted
        Sample(5.0, 2.3, 3000),
    ]
    window = busy_window(samples, total=3000)
    assert window is not None
    assert (window.events, window.seconds, window.cpu_seconds) == (2000, 2.0, 1.0)
    assert window.per_s == 1000
    assert window.cpu_us_per_event == 500


def test_busy_window_falls_back_to_the_last_sample_and_needs_two() -> None:
    quick = [Sample(0.0, 0.0, 0), Sample(1.0, 0.1, 10), Sample(2.0, 0.3, 50)]
    window = busy_window(quick, total=50)
    assert window is not None and window.events == 40
    assert busy_window([Sample(0.0, 0.0, 0), Sample(1.0, 0.1, 50)], total=50) is None
    assert busy_window([Sample(0.0, 0.0, 0)], total=50) is None
    capped = busy_window([Sample(0.0, 0.0, 5), Sample(2.0, 1.0, 25)])  # no total: stopped by time
    assert capped is not None and capped.per_s == 10


def test_per_second_buckets() -> None:
    assert per_second([10.1, 10.5, 11.0, 12.9, 13.0, 9.9], start=10.0, seconds=3) == [2, 1, 1]


def test_summary_min_median_over_measured_values() -> None:
    summary = summarize([3.0, math.nan, 1.0, 2.0])
    assert (summary.min, summary.median, summary.max) == (1.0, 2.0, 3.0)
    assert summary.as_json() == {"min": 1.0, "median": 2.0, "max": 3.0, "values": [3.0, None, 1.0, 2.0]}
    empty = summarize([math.nan])
    assert math.isnan(empty.median)
    assert empty.as_json()["median"] is None


def test_pairwise_ratios_pair_the_runs_of_each_repeat() -> None:
    ratios = pairwise_ratios([3000.0, 3600.0], [10000.0, 9000.0])
    assert ratios.values == (0.3, 0.4)
    assert ratios.median == pytest.approx(0.35)
    with pytest.raises(ValueError):
        pairwise_ratios([1.0], [1.0, 2.0])


def test_target_verdicts() -> None:
    at_most = Target("matcher", "cpu_us_per_event", "<=", 60)
    assert at_most.verdict(60) == PASS
    assert at_most.verdict(60.1) == FAIL
    assert at_most.verdict(math.nan) == NOT_MEASURED
    assert at_most.verdict(None) == NOT_MEASURED
    at_least = Target("matcher", "ratio_vs_raw", ">=", 0.6)
    assert at_least.verdict(0.6) == PASS
    assert at_least.verdict(0.29) == FAIL
    assert at_least.text == ">= 0.6"


def test_the_issue_targets_are_all_there() -> None:
    wanted = {
        ("matcher", "cpu_us_per_event"): ("<=", 60),
        ("matcher", "ratio_vs_raw"): (">=", 0.6),
        ("matcher", "ratio_vs_faust_batch"): (">=", 3),
        ("matcher", "ratio_vs_faust_naive"): (">=", 10),
        ("dispatch_s2s", "ratio"): (">=", 0.8),
        ("dispatch_s2s", "cpu_us_per_postback"): ("<=", 300),
        ("latency", "p99_ratio_vs_raw"): ("<=", 1.5),
        ("memory", "peak_rss_mb_memory_store"): ("<=", 400),
        ("memory", "peak_rss_mb_rocksdb"): ("<=", 400),
        ("memory", "recovery_s"): ("<=", 5),
    }
    for (section, figure), (comparison, bound) in wanted.items():
        target = target_for(section, figure)
        assert target is not None, (section, figure)
        assert (target.comparison, target.bound) == (comparison, bound)
    assert len({(t.section, t.figure) for t in TARGETS}) == len(TARGETS)


def test_rows_and_table_judge_the_median() -> None:
    sections = {
        "matcher": {
            "events_per_s": summarize([3100.0, 3500.0]),
            "cpu_us_per_event": summarize([50.0, 70.0, 80.0]),  # median 70: FAIL although min passes
            "ratio_vs_raw": summarize([0.7, 0.9]),
        },
        "memory": {"recovery_s": summarize([math.nan])},
    }
    rows = rows_for(sections)
    verdicts = {row.figure: row.verdict for row in rows}
    assert verdicts == {"events_per_s": "", "cpu_us_per_event": FAIL, "ratio_vs_raw": PASS, "recovery_s": NOT_MEASURED}
    assert verdict_counts(rows) == {PASS: 1, FAIL: 1, NOT_MEASURED: 1, NOT_AT_SIZE: 0}
    quick = {row.figure: row.verdict for row in rows_for(sections, quick=True)}
    assert quick["recovery_s"] == NOT_AT_SIZE  # set for 100k campaigns: not judged on a --quick run
    assert quick["cpu_us_per_event"] == FAIL
    table = render_table(rows)
    lines = table.splitlines()
    assert lines[0].split() == ["section", "figure", "min", "median", "target", "verdict"]
    assert any(line.split()[:4] == ["matcher", "events_per_s", "3,100", "3,300"] for line in lines)
    assert any(line.endswith("<= 60   FAIL") for line in lines)
    markdown = render_table(rows, markdown=True)
    assert "| matcher | cpu_us_per_event | 50.0 | 70.0 | <= 60 | FAIL |" in markdown


def test_number_formats() -> None:
    assert [number(v) for v in (12345.6, 187.4, 52.25, 2.345, 0.2912, math.nan)] == [
        "12,346",
        "187",
        "52.2",
        "2.35",
        "0.291",
        "-",
    ]


def test_parse_sections_keeps_the_usual_order() -> None:
    assert parse_sections("memory,matcher") == ["matcher", "memory"]
    with pytest.raises(Exception, match="unknown section"):
        parse_sections("matcher,speed")


def test_rotated_interleaves() -> None:
    variants = ("worker", "raw", "faust")
    assert [rotated(variants, r)[0] for r in range(4)] == ["worker", "raw", "faust", "worker"]


def test_metric_total_sums_every_series() -> None:
    text = (
        "# HELP postback_conversions_consumed_total x\n"
        "postback_conversions_consumed_total 1200.0\n"
        'postback_matched_total{kind="s2s"} 30.0\n'
        'postback_matched_total{kind="meta"} 12.0\n'
        "postback_matched_total_created 1.7e9\n"
    )
    assert metric_total(text, "postback_conversions_consumed_total") == 1200
    assert metric_total(text, "postback_matched_total") == 42
    assert metric_total(text, "absent") == 0


def test_log_progress_from_the_workers_json_lines() -> None:
    def line(ts: str, message: str) -> str:
        return orjson.dumps({"ts": ts, "level": "INFO", "message": message}).decode()

    lines = [
        "not json",
        line("2026-01-01T00:00:01.000Z", "rules and offer sources recovered (100 campaigns, 2 offer sources)"),
        line("2026-01-01T00:00:02.000Z", "x-changelog restored for partitions [0, 1] (600 changelog records replayed)"),
        line("2026-01-01T00:00:03.500Z", "x-changelog restored for partitions [2] (400 changelog records replayed)"),
    ]
    progress = LogProgress(keys=1000)
    progress.feed(parse_log_lines(lines[:3]))
    assert progress.recovered_at is not None and not progress.done
    progress.feed(parse_log_lines(lines[3:]))
    assert progress.done and progress.replayed == 1000
    assert progress.restored_at is not None and progress.restored_at - progress.recovered_at == pytest.approx(2.5)


def test_minimal_evaluation_follows_the_conditions() -> None:
    rules = compile_rules(
        [
            {
                "campaign_id": "c1",
                "postbacks": [
                    {"id": "all", "kind": "s2s", "url": "https://t.example/p?c={clickid}&s={status}&z={sub1}"},
                    {"id": "off", "kind": "s2s", "url": "https://t.example/o", "enabled": False},
                    {
                        "id": "deposits",
                        "kind": "meta",
                        "conditional": {"enabled": True, "types": ["deposit"], "statuses": ["pending"]},
                    },
                    {"id": "big", "kind": "google_ads", "conditional": {"enabled": True, "min_payout": "50"}},
                ],
            }
        ],
        [{"offer_source_id": "os-p", "default_status": "pending"}],
    )
    conversion = {
        "conversion_id": "cv-1",
        "click_id": "a b&c",
        "campaign_id": "c1",
        "occurred_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "type": "deposit",
        "offer_source_id": "os-p",
        "payout": "20",
        "subs": {"sub1": "zone/7"},
    }
    fired = evaluate(rules, conversion)
    assert [kind for kind, _ in fired] == ["s2s", "meta"]
    s2s = orjson.loads(fired[0][1])
    assert s2s["status"] == "pending"
    assert s2s["url"] == "https://t.example/p?c=a%20b%26c&s=pending&z=zone%2F7"
    assert [kind for kind, _ in evaluate(rules, {**conversion, "payout": 50, "status": "approved"})] == [
        "s2s",
        "google_ads",
    ]
    assert evaluate(rules, {**conversion, "campaign_id": "unknown"}) == []


def test_the_workload_fires_about_a_third_of_the_entries_with_realistic_conversions() -> None:
    docs = campaign_documents(200)
    share, size = fired_share(docs, (value for _, value in islice(conversions(2000, 200, 1, "t"), 2000)))
    assert 0.25 <= share <= 0.35
    assert 500 <= size <= 620
