"""The trace index at a million retained conversions: lookup latency and process memory.

Run on its own (not part of `make test` or `make bench`):

    .venv/bin/python -m devtools.bench.trace_index [--conversions 1000000] [--lookups 10000] [--dir DIR]

Fills a fresh TraceStore (postback_router/api/trace_index.py, the api's own code) with `--conversions`
conversions, each one evaluated version (four entries, one to three of them fired) and a results
record for every fired postback (about one in ten of them also dead-lettered), through `apply` in
batches as the api's consumer hands them over; then times `lookup` (the range scan and the document
GET /v1/conversions/{id} answers) of `--lookups` random conversions and prints p50/p99/max, and the
process RSS before the fill, after it and after the lookups. A flat RSS is the point: the rows live
in RocksDB on disk, not in Python objects.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from postback_router.api.trace_index import FETCH_MAX_RECORDS, IndexedRecord, TraceStore, TraceTopics

TOPICS = TraceTopics("conversions.evaluated", "postbacks.results", "postbacks.dead-letter")
ENTRIES = (("src", "s2s"), ("fb", "meta"), ("gads", "google_ads"), ("aff", "s2s"))
REASONS = ("type", "status", "payout", "disabled")


def rss_mib() -> float:
    """The process's resident set size now (VmRSS), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def conversion_id(index: int) -> str:
    return f"cv-{index:09d}"


def records(conversions: int, now_ms: int, seed: int = 7) -> Iterator[IndexedRecord]:
    """One evaluation per conversion and one result per fired postback, times spread over the last 10 days."""
    rng = random.Random(seed)
    offsets = {TOPICS.evaluations: 0, TOPICS.results: 0, TOPICS.dead_letter: 0}

    def record(topic: str, value: dict[str, Any], at_ms: int) -> IndexedRecord:
        offset = offsets[topic]
        offsets[topic] = offset + 1
        return IndexedRecord(topic, offset % 8, offset // 8, at_ms, orjson.dumps(value))

    for index in range(conversions):
        cid = conversion_id(index)
        at_ms = now_ms - rng.randrange(10 * 86_400_000)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(at_ms / 1000))
        fired_count = rng.randint(1, 3)
        fired = [
            {
                "entry_id": entry_id,
                "kind": kind,
                "postback_id": str(uuid.UUID(int=rng.getrandbits(128))),
                "destination_id": f"dest-{entry_id}",
                "payout": "12.5",
                "topic": f"postbacks.{kind}",
            }
            for entry_id, kind in ENTRIES[:fired_count]
        ]
        skipped = [
            {"entry_id": entry_id, "kind": kind, "destination_id": f"dest-{entry_id}", "reason": rng.choice(REASONS)}
            for entry_id, kind in ENTRIES[fired_count:]
        ]
        yield record(
            TOPICS.evaluations,
            {
                "schema_version": 1,
                "conversion_id": cid,
                "campaign_id": f"camp-{index % 10_000}",
                "type": "deposit",
                "status": "approved",
                "status_source": "event",
                "payout": "25",
                "occurred_at": stamp,
                "outcome": "fired",
                "fired": fired,
                "skipped": skipped,
                "evaluated_at": stamp,
                "source": {"topic": "conversions", "partition": index % 8, "offset": index // 8},
            },
            at_ms,
        )
        for postback in fired:
            dead = rng.random() < 0.1
            yield record(
                TOPICS.results,
                {
                    "schema_version": 1,
                    "postback_id": postback["postback_id"],
                    "kind": postback["kind"],
                    "destination_id": postback["destination_id"],
                    "conversion_id": cid,
                    "campaign_id": f"camp-{index % 10_000}",
                    "entry_id": postback["entry_id"],
                    "result": "rejected" if dead else "delivered",
                    "attempts": 1,
                    "last_http_status": 400 if dead else 200,
                    "last_reason": "http_400" if dead else "http_200",
                    "latency_seconds": 0.042,
                    "first_attempt_at": stamp,
                    "finished_at": stamp,
                },
                at_ms + 50,
            )
            if dead:
                yield record(
                    TOPICS.dead_letter,
                    {
                        "schema_version": 1,
                        "postback_id": postback["postback_id"],
                        "result": "rejected",
                        "reason": "http_400",
                        "detail": "the destination refused the postback",
                        "last_http_status": 400,
                        "attempts": 1,
                        "dead_lettered_at": stamp,
                        "postback": None,
                    },
                    at_ms + 60,
                )


def percentile(sorted_values: list[float], share: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(share * len(sorted_values)))]


def run(conversions: int, lookups: int, directory: Path) -> dict[str, float]:
    rss_start = rss_mib()
    store = TraceStore(directory / "trace-index", TOPICS, retention_seconds=30 * 86400)
    now_ms = int(time.time() * 1000)
    started = time.perf_counter()
    batch: list[IndexedRecord] = []
    rows = 0
    rss_during: dict[str, float] = {}
    checkpoints = {conversions * share // 10 for share in (1, 2, 5)}
    for item in records(conversions, now_ms):
        batch.append(item)
        if len(batch) >= FETCH_MAX_RECORDS:  # as the api's consumer hands them over
            rows += store.apply(batch, now_ms)
            batch.clear()
        if item.topic == TOPICS.evaluations and item.offset * 8 + item.partition + 1 in checkpoints:
            rss_during[f"rss_at_{item.offset * 8 + item.partition + 1}_conversions_mib"] = round(rss_mib(), 1)
    rows += store.apply(batch, now_ms)
    fill_seconds = time.perf_counter() - started
    rss_filled = rss_mib()
    rng = random.Random(11)
    latencies: list[float] = []
    for _ in range(lookups):
        cid = conversion_id(rng.randrange(conversions))
        begun = time.perf_counter()
        trace = store.lookup(cid)
        latencies.append((time.perf_counter() - begun) * 1000)
        assert trace is not None and trace["versions"], cid
    latencies.sort()
    rss_end = rss_mib()
    store.close()
    return {
        "conversions": conversions,
        "rows": rows,
        "fill_seconds": round(fill_seconds, 1),
        "lookups": lookups,
        "lookup_p50_ms": round(statistics.median(latencies), 3),
        "lookup_p99_ms": round(percentile(latencies, 0.99), 3),
        "lookup_max_ms": round(latencies[-1], 3),
        "rss_start_mib": round(rss_start, 1),
        **rss_during,
        "rss_after_fill_mib": round(rss_filled, 1),
        "rss_after_lookups_mib": round(rss_end, 1),
        "disk_mib": round(sum(p.stat().st_size for p in (directory / "trace-index").rglob("*")) / 2**20, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversions", type=int, default=1_000_000)
    parser.add_argument("--lookups", type=int, default=10_000)
    parser.add_argument("--dir", type=Path, default=None, help="where to build the index (default: a temporary dir)")
    args = parser.parse_args()
    if args.dir is not None:
        print(orjson.dumps(run(args.conversions, args.lookups, args.dir), option=orjson.OPT_INDENT_2).decode())
        return
    with tempfile.TemporaryDirectory(prefix="trace-index-bench-") as directory:
        print(orjson.dumps(run(args.conversions, args.lookups, Path(directory)), option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
