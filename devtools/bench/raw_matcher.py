"""The matcher's baseline: a plain aiokafka loop, run as its own process by the `matcher` and `latency` sections.

getmany → orjson → the minimal evaluation of the same rules (minimal_rules.py) → one unawaited send per
postback → one flush (every acknowledgement awaited) → commit, per batch. Producer and consumer settings
are the worker's (service/group_member.py: acks=all, linger 1 ms, read_committed, manual commits, batches of
BATCH_MAX_SIZE=1000); `BENCH-PROGRESS <n>` lines on stdout count the conversions done.

    python -m devtools.bench.raw_matcher --bootstrap HOST:PORT --topic T --group G --rules rules.json
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from devtools.bench.common import HEARTBEAT_INTERVAL_MS, SESSION_TIMEOUT_MS, report_progress
from devtools.bench.minimal_rules import evaluate, read_rules_file

BATCH_MAX_SIZE = 1000
PROGRESS_EVERY = 0.1


def progress(count: int) -> None:
    report_progress(count)


async def run(bootstrap: str, topic: str, group: str, rules_path: str) -> None:
    rules, topics = read_rules_file(rules_path)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=1)
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=SESSION_TIMEOUT_MS,
        heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
        isolation_level="read_committed",
    )
    await producer.start()
    await consumer.start()
    done, shown, reported = 0, 0, 0.0
    try:
        while not stopping.is_set():
            batches = await consumer.getmany(timeout_ms=200, max_records=BATCH_MAX_SIZE)
            if not batches:
                if done != shown:  # idle: the last count goes out at once
                    progress(done)
                    shown = done
                continue
            pending: list[Any] = []
            for records in batches.values():
                for record in records:
                    conversion = orjson.loads(record.value)
                    for kind, message in evaluate(rules, conversion):
                        pending.append(await producer.send(topics[kind], message, key=record.key))
                done += len(records)
            await asyncio.gather(*pending)
            await consumer.commit()
            if time.monotonic() - reported >= PROGRESS_EVERY:
                progress(done)
                shown, reported = done, time.monotonic()
    finally:
        progress(done)
        await consumer.stop()
        await producer.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--rules", required=True, help="the rules file the harness wrote (minimal_rules.py)")
    args = parser.parse_args()
    asyncio.run(run(args.bootstrap, args.topic, args.group, args.rules))


if __name__ == "__main__":
    main()
