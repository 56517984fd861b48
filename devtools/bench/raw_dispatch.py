"""The S2S dispatcher's baseline: a plain aiohttp loop, run as its own process by `dispatch_s2s` and `latency`.

getmany → orjson → one GET per postback to its URL, at most `--concurrency` at once per destination host
(DESTINATION_CONCURRENCY, 8) over one session of `--connection-limit` connections (the dispatcher's
aiohttp transport: 512), every answer of the batch awaited → one results record per postback sent unawaited,
one flush → commit. No retries, breakers, rate limits, dedupe state or SSRF checks: what the dispatcher adds.
Consumer and producer settings are the service's. `BENCH-PROGRESS <n>` lines on stdout count the answers.

    python -m devtools.bench.raw_dispatch --bootstrap HOST:PORT --topic T --group G --results-topic R
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time
from collections import defaultdict
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from devtools.bench.common import HEARTBEAT_INTERVAL_MS, SESSION_TIMEOUT_MS, report_progress

BATCH_MAX_SIZE = 1000
PROGRESS_EVERY = 0.1


async def deliver(session: aiohttp.ClientSession, limit: asyncio.Semaphore, url: str, timeout: float) -> int:
    async with limit:
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout), allow_redirects=False) as answer:
                await answer.read()
                return answer.status
        except (aiohttp.ClientError, TimeoutError):
            return 0


async def run(
    bootstrap: str, topic: str, group: str, results_topic: str, concurrency: int, connections: int, timeout: float
) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    limits: defaultdict[str, asyncio.Semaphore] = defaultdict(lambda: asyncio.Semaphore(concurrency))
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
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=connections), cookie_jar=aiohttp.DummyCookieJar(), trust_env=False
    )
    await producer.start()
    await consumer.start()
    done, shown, reported = 0, 0, 0.0
    try:
        while not stopping.is_set():
            batches = await consumer.getmany(timeout_ms=200, max_records=BATCH_MAX_SIZE)
            if not batches:
                if done != shown:
                    report_progress(done)
                    shown = done
                continue
            postbacks = [orjson.loads(r.value) for records in batches.values() for r in records]
            statuses = await asyncio.gather(
                *(deliver(session, limits[urlsplit(p["url"]).hostname or ""], p["url"], timeout) for p in postbacks)
            )
            pending: list[Any] = []
            for postback, status in zip(postbacks, statuses, strict=True):
                result = {"postback_id": postback.get("postback_id"), "status": status}
                key = str(postback.get("postback_id") or postback["conversion_id"]).encode()
                pending.append(await producer.send(results_topic, orjson.dumps(result), key=key))
            await asyncio.gather(*pending)
            await consumer.commit()
            done += len(postbacks)
            if time.monotonic() - reported >= PROGRESS_EVERY:
                report_progress(done)
                shown, reported = done, time.monotonic()
    finally:
        report_progress(done)
        await session.close()
        await consumer.stop()
        await producer.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--results-topic", required=True)
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight per destination host")
    parser.add_argument("--connection-limit", type=int, default=512)
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args()
    asyncio.run(
        run(
            args.bootstrap,
            args.topic,
            args.group,
            args.results_topic,
            args.concurrency,
            args.connection_limit,
            args.timeout,
        )
    )


if __name__ == "__main__":
    main()
