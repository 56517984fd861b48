"""`make demo`: the service's main job end to end, and a readable account of what happened.

On the embedded broker (or KAFKA_BOOTSTRAP_SERVERS, under topics of its own that it deletes at the
end): starts a real `postback-router worker`, publishes offer sources, campaign rules and a stream of
conversions (updates, missing statuses, re-deliveries, invalid ones), then prints each conversion
with the postbacks it fired and, for the entries that did not fire, why.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient

from postback_router.demo_data import CAMPAIGNS, CONVERSIONS, OFFER_SOURCES
from postback_router.embedded_broker import kafka_for_local_use
from postback_router.kafka_io import produce, read_topic
from postback_router.settings import load_settings
from postback_router.topics import ensure_topics

# The demo must finish on its own: a worker that has not produced every evaluation by then is stuck,
# and the demo says so instead of waiting forever.
DEADLINE_SECONDS = 90.0
BURST_SIZE = 20_000
WIDTH = 100


def say(text: str = "") -> None:
    print(text, flush=True)


def heading(text: str) -> None:
    say()
    say(f"== {text} " + "=" * max(0, WIDTH - len(text) - 4))


async def wait_until(check: Any, what: str, worker: subprocess.Popen[bytes], log_path: str) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not await check():
        if worker.poll() is not None:
            raise SystemExit(f"the worker exited ({worker.returncode}) while waiting for {what}; log: {log_path}")
        if time.monotonic() > deadline:
            raise SystemExit(f"gave up after {DEADLINE_SECONDS:.0f}s waiting for {what}; worker log: {log_path}")
        await asyncio.sleep(0.2)


def describe_fired(fired: dict[str, Any], postback: dict[str, Any] | None) -> str:
    text = f"FIRED   {fired['entry_id']:<26} -> {fired['topic']:<28} payout {fired['payout']}"
    if postback and postback.get("url"):
        text += f"\n          {postback['method']} {postback['url']}"
    elif postback and postback["kind"] != "s2s":
        text += f"  ({postback['destination_id']})"
    return text


REASONS = {
    "disabled": "entry disabled",
    "type": "type not in the entry's types",
    "status": "status not in the entry's statuses",
    "payout": "payout below the entry's min_payout",
    "duplicate": "already fired for this conversion, status and type",
}


async def run_demo() -> None:
    started = time.monotonic()
    with kafka_for_local_use() as bootstrap:
        embedded = not os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        prefix = f"demo-{uuid.uuid4().hex[:6]}."
        workdir = tempfile.mkdtemp(prefix="postback-router-demo-")
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "TOPIC_PREFIX": prefix,
            "APP_ID": prefix + "router",
            "STATE_STORE": "memory://",
            "STATE_DIR": workdir,
            "EMIT_EVALUATIONS": "true",
            "TOPIC_PARTITIONS": "4",
            "KAFKA_SESSION_TIMEOUT": "6s",
            "KAFKA_HEARTBEAT_INTERVAL": "1s",
        }
        settings = load_settings(env)
        topics = settings.topics
        say(f"Kafka: {bootstrap} ({'embedded Tansu broker, in memory' if embedded else 'KAFKA_BOOTSTRAP_SERVERS'})")
        say(f"Topics under the prefix {prefix!r}")
        await ensure_topics(settings)
        log_path = os.path.join(workdir, "worker.log")
        with open(log_path, "wb") as log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "postback_router.cli", "worker"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        try:
            await publish_and_report(bootstrap, topics, worker, log_path)
        finally:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
                try:
                    worker.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    worker.kill()
            if not embedded:
                await delete_topics(bootstrap, prefix)
            shutil.rmtree(workdir, ignore_errors=True)
    say()
    cleaned = "broker stopped" if embedded else "demo topics deleted"
    say(f"Done in {time.monotonic() - started:.1f}s; worker stopped, {cleaned}.")


async def publish_and_report(bootstrap: str, topics: Any, worker: subprocess.Popen[bytes], log_path: str) -> None:
    heading("Published")
    await produce(bootstrap, topics.offer_sources, [(o["offer_source_id"], o) for o in OFFER_SOURCES])
    for source in OFFER_SOURCES:
        say(f"offer source {source['offer_source_id']:<12} default_status={source['default_status']}")
    await produce(bootstrap, topics.campaign_rules, [(c["campaign_id"], c) for c in CAMPAIGNS])
    for campaign in CAMPAIGNS:
        entries = ", ".join(
            f"{e['id']} ({e['kind']}{', conditional' if e.get('conditional', {}).get('enabled') else ''}"
            f"{', disabled' if e.get('enabled') is False else ''})"
            for e in campaign["postbacks"]
        )
        say(f"campaign {campaign['campaign_id']:<10} {entries}")
    sent_at = time.monotonic()
    await produce(bootstrap, topics.conversions, [(key, value) for _, key, value in CONVERSIONS])
    say(f"{len(CONVERSIONS)} conversion records, in this order:")
    for description, key, _ in CONVERSIONS:
        say(f"  {key:<9} {description}")

    valid = sum(1 for _, _, value in CONVERSIONS if isinstance(value, dict) and not _expected_invalid(value))
    invalid = len(CONVERSIONS) - valid

    async def all_accounted_for() -> bool:
        evaluations = await read_topic(bootstrap, topics.evaluations)
        rejected = await read_topic(bootstrap, topics.invalid(topics.conversions))
        return len(evaluations) >= valid and len(rejected) >= invalid

    say("waiting for the worker (group join and table recovery take a few seconds)...")
    await wait_until(all_accounted_for, "every conversion to be evaluated", worker, log_path)
    elapsed = time.monotonic() - sent_at
    evaluations = [r.json() for r in await read_topic(bootstrap, topics.evaluations)]
    rejected = [r.json() for r in await read_topic(bootstrap, topics.invalid(topics.conversions))]
    postbacks: dict[str, dict[str, Any]] = {}
    per_topic: Counter[str] = Counter()
    for topic in topics.postbacks.values():
        for record in await read_topic(bootstrap, topic):
            message = record.json()
            postbacks[message["postback_id"]] = message
            per_topic[topic] += 1
    report(evaluations, rejected, postbacks)
    heading("Summary")
    for topic, count in sorted(per_topic.items()):
        say(f"{topic:<40} {count} postbacks")
    say(f"{topics.invalid(topics.conversions):<40} {len(rejected)} invalid records")
    say(f"{topics.evaluations:<40} {len(evaluations)} evaluations")
    say(f"all {len(CONVERSIONS)} records accounted for {elapsed:.1f}s after they were sent (worker start included)")
    say(
        "no raw email reached a postback topic: "
        + str(not any("@players.example" in str(p) for p in postbacks.values()))
    )
    await measure_throughput(bootstrap, topics, worker, log_path)


async def measure_throughput(bootstrap: str, topics: Any, worker: subprocess.Popen[bytes], log_path: str) -> None:
    heading(f"Throughput: a burst of {BURST_SIZE:,} conversions")
    campaigns = [c["campaign_id"] for c in CAMPAIGNS]
    burst = [
        (
            f"burst-{i}",
            {
                "conversion_id": f"burst-{i}",
                "click_id": f"rt-burst-{i}",
                "campaign_id": campaigns[i % len(campaigns)],
                "type": "deposit" if i % 2 else "lead",
                "status": "approved" if i % 3 else "pending",
                "payout": f"{i % 50}.{i % 100:02d}",
                "occurred_at": "2026-11-22T10:00:00Z",
                "click_ids": {"external_id": f"src-burst-{i}"},
            },
        )
        for i in range(BURST_SIZE)
    ]
    before = len(await read_topic(bootstrap, topics.evaluations))
    started = time.monotonic()
    await produce(bootstrap, topics.conversions, burst)
    say(f"sent in {time.monotonic() - started:.1f}s; the worker matches while they arrive")
    deadline = started + DEADLINE_SECONDS
    done = 0
    while done < BURST_SIZE:
        if worker.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the burst was not matched in time ({done:,}/{BURST_SIZE:,}); worker log: {log_path}")
        await asyncio.sleep(0.5)
        done = len(await read_topic(bootstrap, topics.evaluations)) - before
        say(f"  {done:>7,} / {BURST_SIZE:,} evaluated ({time.monotonic() - started:5.1f}s)")
    elapsed = time.monotonic() - started
    fired = sum([len(await read_topic(bootstrap, t)) for t in topics.postbacks.values()])
    say(
        f"{BURST_SIZE:,} conversions matched in {elapsed:.1f}s = {BURST_SIZE / elapsed:,.0f} conversions/s "
        f"(one worker, evaluation records on, produce time included); {fired:,} postbacks on the topics in all"
    )


def _expected_invalid(value: dict[str, Any]) -> bool:
    return str(value.get("conversion_id", "")).startswith("cv-bad")


def report(
    evaluations: list[dict[str, Any]], rejected: list[dict[str, Any]], postbacks: dict[str, dict[str, Any]]
) -> None:
    heading("What happened to each conversion")
    by_key: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for evaluation in sorted(evaluations, key=lambda e: (e["source"]["partition"], e["source"]["offset"])):
        by_key[evaluation["conversion_id"]].append(evaluation)
    invalid_by_key = {r["key"]: r for r in rejected}
    seen: Counter[str] = Counter()
    for description, key, _ in CONVERSIONS:
        say()
        if key in invalid_by_key:
            error = invalid_by_key[key]["error"]
            say(f"{key}  {description}")
            say(f"  REJECTED -> conversions.invalid: {error['reason']}: {error['message']}")
            continue
        evaluation = by_key[key][seen[key]]
        seen[key] += 1
        say(
            f"{key}  {description}: campaign {evaluation['campaign_id']}, type {evaluation['type']}, "
            f"status {evaluation['status']} (from {evaluation['status_source']}), payout {evaluation['payout']}"
        )
        if evaluation["outcome"] == "no_rules":
            say("  nothing fired: the campaign has no rules (counted as no_rules)")
        for fired in evaluation["fired"]:
            say("  " + describe_fired(fired, postbacks.get(fired["postback_id"])))
        for skipped in evaluation["skipped"]:
            say(f"  skipped {skipped['entry_id']:<26} {REASONS[skipped['reason']]}")


async def delete_topics(bootstrap: str, prefix: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        mine = [t for t in await admin.list_topics() if t.startswith(prefix)]
        if mine:
            await admin.delete_topics(mine)
    finally:
        await admin.close()


def main() -> None:
    try:
        asyncio.run(run_demo())
    except KeyboardInterrupt:
        say("interrupted")


if __name__ == "__main__":
    main()
