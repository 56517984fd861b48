"""The matcher's Faust baselines, run as their own process by the `matcher` section (`bench` extra only).

Two faust-streaming agents doing the same minimal evaluation as the raw loop (minimal_rules.py) on the same
topics, with the worker's producer settings (acks=all, linger 1 ms):

- `batch`: `stream.take_events(1000, within=0.1)`, one send per postback without awaiting its
  acknowledgement, then every acknowledgement of the batch awaited at once: Faust at its best;
- `naive`: `async for event in stream.events()`, one send per postback awaited until Kafka acknowledged it
  (`await (await topic.send(...))`): a per-event agent that goes on only once its output is safe. (A bare
  `await topic.send(...)` only buffers the message; measured that way the agent runs about as fast as
  `batch`.)

faust is imported here only, inside `build_app`, so that nothing else needs the extra. `BENCH-PROGRESS <n>`
lines on stdout count the conversions done.

    python -m devtools.bench.faust_matcher --mode batch --bootstrap HOST:PORT --topic T --app-id A --rules rules.json
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
from typing import Any

import orjson

from devtools.bench.common import HEARTBEAT_INTERVAL_MS, PARTITIONS, SESSION_TIMEOUT_MS, report_progress
from devtools.bench.minimal_rules import evaluate, read_rules_file

BATCH_MAX_SIZE = 1000
TAKE_WITHIN_SECONDS = 0.1
PROGRESS_EVERY = 0.1


def progress(count: int) -> None:
    report_progress(count)


def build_app(mode: str, bootstrap: str, topic: str, app_id: str, rules_path: str, datadir: str) -> Any:
    import faust  # the `bench` extra; see pyproject.toml

    rules, topics = read_rules_file(rules_path)
    app: Any = faust.App(
        app_id,
        broker=f"kafka://{bootstrap}",
        datadir=datadir,
        store="memory://",
        web_enabled=False,
        # no leader topic, and no topic creation: the harness created every topic, as for the worker
        topic_disable_leader=True,
        topic_allow_declare=False,
        topic_partitions=PARTITIONS,
        producer_acks=-1,
        producer_linger=0.001,
        broker_session_timeout=SESSION_TIMEOUT_MS / 1000,
        broker_heartbeat_interval=HEARTBEAT_INTERVAL_MS / 1000,
        broker_max_poll_records=BATCH_MAX_SIZE,
        consumer_auto_offset_reset="earliest",
        key_serializer="raw",
        value_serializer="raw",
    )
    source = app.topic(topic, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    outputs = {kind: app.topic(name, key_serializer="raw", value_serializer="raw") for kind, name in topics.items()}
    done = [0]

    async def batch_agent(stream: Any) -> None:
        async for events in stream.take_events(BATCH_MAX_SIZE, within=TAKE_WITHIN_SECONDS):
            pending: list[Any] = []
            for event in events:
                for kind, message in evaluate(rules, orjson.loads(event.value)):
                    pending.append(await outputs[kind].send(key=event.key, value=message))
            await asyncio.gather(*pending)
            done[0] += len(events)

    async def naive_agent(stream: Any) -> None:
        async for event in stream.events():
            for kind, message in evaluate(rules, orjson.loads(event.value)):
                await (await outputs[kind].send(key=event.key, value=message))
            done[0] += 1

    app.agent(source, name=f"bench-{mode}")(batch_agent if mode == "batch" else naive_agent)

    async def report() -> None:
        progress(done[0])

    app.timer(PROGRESS_EVERY)(report)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("batch", "naive"), required=True)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--app-id", required=True)
    parser.add_argument("--rules", required=True, help="the rules file the harness wrote (minimal_rules.py)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench-faust-") as datadir:
        app = build_app(args.mode, args.bootstrap, args.topic, args.app_id, args.rules, datadir)
        sys.argv = [sys.argv[0], "worker", "--loglevel", "warn", "--without-web"]
        app.main()


if __name__ == "__main__":
    main()
