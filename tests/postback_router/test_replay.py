"""The pure parts of `postback-router replay` (postback_router/replay.py): times, filters, which postbacks are
replayable and where their bodies come from."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from postback_router.cli import main
from postback_router.replay import (
    BadTime,
    Replayable,
    ReplayFilter,
    attach_bodies,
    last_results,
    parse_moment,
    plan,
)
from postback_router.replay_command import replay_line
from service.kafka_io import Record

NOW = datetime.now(UTC)


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def result(pid: str, outcome: str, ago: timedelta, **extra: Any) -> dict[str, Any]:
    return {
        "postback_id": pid,
        "kind": "s2s",
        "destination_id": "s2s:tracker.example",
        "result": outcome,
        "last_reason": "http_400" if outcome != "delivered" else "http_200",
        "finished_at": iso(NOW - ago),
        **extra,
    }


def records(topic: str, values: list[dict[str, Any] | bytes]) -> list[Record]:
    return [
        Record(topic, 0, offset, None, value if isinstance(value, bytes) else orjson.dumps(value))
        for offset, value in enumerate(values)
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("24h", NOW - timedelta(hours=24)),
        ("30m", NOW - timedelta(minutes=30)),
        ("7d", NOW - timedelta(days=7)),
        ("90s", NOW - timedelta(seconds=90)),
        (iso(NOW - timedelta(days=2)), (NOW - timedelta(days=2)).replace(microsecond=(NOW.microsecond // 1000) * 1000)),
    ],
)
def test_a_moment_is_a_duration_back_from_now_or_an_rfc_3339_time(text: str, expected: datetime) -> None:
    assert parse_moment(text, NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "24", "-1h", "2026-01-31T12:00:00"])
def test_a_moment_that_is_neither_is_refused(text: str) -> None:
    with pytest.raises(BadTime):
        parse_moment(text, NOW)


def test_only_the_last_results_record_of_a_postback_counts_and_delivered_ones_are_dropped() -> None:
    last = last_results(
        records(
            "postbacks.results",
            [
                result("a", "rejected", timedelta(hours=3)),
                result("b", "dead_lettered", timedelta(hours=3)),
                result("a", "delivered", timedelta(hours=1), replay=1),  # delivered by a replay: done
                result("b", "rejected", timedelta(hours=1), replay=1),  # failed again: still replayable
                b"not json",
            ],
        )
    )
    # a delivered postback is done for good (never replayed): not even kept
    assert {pid: (r.result, r.replay) for pid, r in last.items()} == {"b": ("rejected", 1)}


def test_filters_match_destination_kind_reason_and_a_half_open_time_range() -> None:
    (last,) = last_results(records("r", [result("a", "rejected", timedelta(hours=2))])).values()
    assert ReplayFilter().matches(last)
    assert ReplayFilter(destination="s2s:tracker.example", kind="s2s", reason="http_400").matches(last)
    assert not ReplayFilter(destination="s2s:other.example").matches(last)
    assert not ReplayFilter(kind="meta").matches(last)
    assert not ReplayFilter(reason="timeout").matches(last)
    assert ReplayFilter(since=NOW - timedelta(hours=3), until=NOW - timedelta(hours=1)).matches(last)
    assert not ReplayFilter(since=NOW - timedelta(hours=1)).matches(last)
    assert not ReplayFilter(until=last.finished_at).matches(last), "until is exclusive"
    assert ReplayFilter(since=last.finished_at).matches(last), "since is inclusive"


def test_the_body_is_the_latest_whole_postback_in_dead_letter_and_one_without_is_listed_apart() -> None:
    last = last_results(
        records("r", [result("a", "rejected", timedelta(hours=2)), result("big", "rejected", timedelta(hours=1))])
    )
    candidates = {pid: Replayable(r) for pid, r in last.items()}
    attach_bodies(
        candidates,
        records(
            "postbacks.dead-letter",
            [
                {"postback_id": "a", "postback": {"postback_id": "a", "v": 1}},
                {"postback_id": "a", "postback": {"postback_id": "a", "v": 2}},
                {"postback_id": "big", "postback": None, "original_value": "{...", "original_truncated": True},
                {"postback_id": "other", "postback": {"postback_id": "other"}},
            ],
        ),
    )
    found = plan(list(candidates.values()))
    assert [(c.last.postback_id, c.postback) for c in found.to_replay] == [("a", {"postback_id": "a", "v": 2})]
    assert [c.last.postback_id for c in found.without_body] == ["big"]
    assert replay_line(found.to_replay[0]).startswith("a s2s s2s:tracker.example rejected http_400 ")


def test_the_command_refuses_a_time_it_cannot_read_before_reading_anything() -> None:
    env = {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}  # never reached: the option is refused first
    answer = CliRunner().invoke(main, ["replay", "--since", "yesterday", "--dry-run"], env=env)
    assert answer.exit_code == 2
    assert "neither a duration" in answer.output
