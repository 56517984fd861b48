"""`latency`: conversion produced → request received by the S2S sink, at `Sizes.latency_rate` conversions/s
offered for `latency_seconds`, through the service (one `worker` and one `dispatch --kind s2s`) and through a
raw two-hop pipeline (raw_matcher.py then raw_dispatch.py) on the same broker, in the same run.

Each pipeline gets topics of its own and campaigns with one unconditional S2S entry (every conversion is one
request, to one of `s2s_destinations` hosts). A warm-up of a few conversions goes through first (group joins,
connections), then the offering starts; after it, the pipeline gets `latency_drain_seconds` to deliver the
rest. A conversion still undelivered then counts with the time it had waited (a lower bound, so a pipeline
that falls behind cannot look faster than it is). `achieved_per_s` is what reached the sink over the last
80 % of the offering, against what was offered over the same seconds (`achieved_ratio`).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
from aiokafka import AIOKafkaProducer

from devtools.bench.common import (
    Child,
    Context,
    HarnessError,
    SectionResult,
    create_topics,
    rotated,
    say,
    service_env,
    start_child,
    start_service,
    wait_ready,
    write_records,
)
from devtools.bench.minimal_rules import write_rules_file
from devtools.bench.report import pairwise_ratios, per_second, percentile, ratio, summarize
from devtools.bench.sink import BenchSink
from devtools.bench.workload import OFFER_SOURCES, conversion_document, single_s2s_campaigns
from postback_router.embedded_broker import kafka_for_local_use

PIPELINES = ("service", "raw")
CAMPAIGNS = 1000
WARM_UP = 20
WARM_UP_TIMEOUT_SECONDS = 90.0
STEADY_FROM = 0.2  # the achieved rate is taken over the offering after its first 20 %
PROGRESS_EVERY = 5.0


@dataclass
class PipelineRun:
    offered: int
    delivered: int
    latencies_ms: list[float]  # every conversion's; the undelivered ones as long as they had waited
    delivered_ms: list[float]  # the delivered ones only (the plot)
    offered_per_s: float
    achieved_per_s: float
    offered_series: list[int] = field(default_factory=list)  # per second from the start of the offering
    delivered_series: list[int] = field(default_factory=list)

    @property
    def p50_ms(self) -> float:
        return percentile(self.latencies_ms, 50)

    @property
    def p99_ms(self) -> float:
        return percentile(self.latencies_ms, 99)

    @property
    def max_ms(self) -> float:
        return max(self.latencies_ms) if self.latencies_ms else float("nan")


async def run(ctx: Context) -> SectionResult:
    sink = BenchSink(ctx.sizes.s2s_destinations)
    await sink.start()
    runs: dict[str, list[PipelineRun]] = {p: [] for p in PIPELINES}
    try:
        with kafka_for_local_use() as bootstrap:
            async with aiohttp.ClientSession() as session:
                for repeat in range(ctx.repeats):
                    for pipeline in rotated(PIPELINES, repeat):
                        measured = await _run_pipeline(ctx, session, sink, pipeline, repeat, bootstrap)
                        runs[pipeline].append(measured)
                        say(
                            f"latency: repeat {repeat + 1}/{ctx.repeats} {pipeline:<7} p50 {measured.p50_ms:7.0f} ms  "
                            f"p99 {measured.p99_ms:7.0f} ms  max {measured.max_ms:7.0f} ms  "
                            f"achieved {measured.achieved_per_s:6.0f}/s of {measured.offered_per_s:.0f}/s offered"
                        )
    finally:
        await sink.stop()
    service, raw = runs["service"], runs["raw"]
    result = SectionResult()
    figures = result.figures
    figures["offered_per_s"] = summarize(r.offered_per_s for r in service)
    figures["achieved_per_s"] = summarize(r.achieved_per_s for r in service)
    figures["achieved_ratio"] = summarize(ratio(r.achieved_per_s, r.offered_per_s) for r in service)
    figures["p50_ms"] = summarize(r.p50_ms for r in service)
    figures["p99_ms"] = summarize(r.p99_ms for r in service)
    figures["max_ms"] = summarize(r.max_ms for r in service)
    figures["raw_achieved_per_s"] = summarize(r.achieved_per_s for r in raw)
    figures["raw_p50_ms"] = summarize(r.p50_ms for r in raw)
    figures["raw_p99_ms"] = summarize(r.p99_ms for r in raw)
    figures["raw_max_ms"] = summarize(r.max_ms for r in raw)
    figures["p99_ratio_vs_raw"] = pairwise_ratios([r.p99_ms for r in service], [r.p99_ms for r in raw])
    sizes = ctx.sizes
    result.details = {
        "rate": sizes.latency_rate,
        "seconds": sizes.latency_seconds,
        "drain_seconds": sizes.latency_drain_seconds,
        "destinations": sizes.s2s_destinations,
        "runs": {
            name: [
                {
                    "offered": r.offered,
                    "delivered": r.delivered,
                    "offered_per_s": round(r.offered_per_s, 1),
                    "achieved_per_s": round(r.achieved_per_s, 1),
                    "p50_ms": round(r.p50_ms, 1),
                    "p99_ms": round(r.p99_ms, 1),
                    "max_ms": round(r.max_ms, 1),
                    "offered_series": r.offered_series,
                    "delivered_series": r.delivered_series,
                }
                for r in pipeline_runs
            ]
            for name, pipeline_runs in runs.items()
        },
        # for the plot only (not written to the JSON): the last repeat of each pipeline
        "plot": {
            "rate": sizes.latency_rate,
            "seconds": sizes.latency_seconds,
            "pipelines": {
                name: {
                    "latencies_ms": pipeline_runs[-1].delivered_ms,
                    "offered_series": pipeline_runs[-1].offered_series,
                    "delivered_series": pipeline_runs[-1].delivered_series,
                    "p50_ms": pipeline_runs[-1].p50_ms,
                    "p99_ms": pipeline_runs[-1].p99_ms,
                }
                for name, pipeline_runs in runs.items()
                if pipeline_runs
            },
        },
    }
    return result


async def _run_pipeline(
    ctx: Context, session: aiohttp.ClientSession, sink: BenchSink, pipeline: str, repeat: int, bootstrap: str
) -> PipelineRun:
    prefix = f"bench-latency-{pipeline}-{repeat}."
    app_id = f"bench-latency-{pipeline}-{repeat}"
    settings = await create_topics(bootstrap, prefix, app_id)
    topics = settings.topics
    campaigns = single_s2s_campaigns(CAMPAIGNS, lambda c: f"{sink.base_url(c)}/pb/{c}?cid={{conversion_id}}")
    await write_records(
        bootstrap, ((topics.offer_sources, d["offer_source_id"].encode(), orjson.dumps(d), None) for d in OFFER_SOURCES)
    )
    await write_records(
        bootstrap, ((topics.campaign_rules, d["campaign_id"].encode(), orjson.dumps(d), None) for d in campaigns)
    )
    children: list[Child] = []
    try:
        if pipeline == "service":
            env = service_env(
                bootstrap, prefix, app_id, os.path.join(ctx.workdir, "state", app_id), STATE_STORE="rocksdb://"
            )
            children.append(await start_service(f"{app_id}-worker", ["worker"], env, ctx.workdir))
            children.append(
                await start_service(f"{app_id}-dispatcher", ["dispatch", "--kind", "s2s"], env, ctx.workdir)
            )
            for child in children:
                await wait_ready(session, child)
        else:
            rules_path = os.path.join(ctx.workdir, f"{app_id}-rules.json")
            write_rules_file(rules_path, campaigns, OFFER_SOURCES, topics.postbacks)
            matcher = ["-m", "devtools.bench.raw_matcher", "--bootstrap", bootstrap, "--topic", topics.conversions]
            matcher += ["--group", f"{app_id}-matcher", "--rules", rules_path]
            dispatcher = [
                "-m",
                "devtools.bench.raw_dispatch",
                "--bootstrap",
                bootstrap,
                "--topic",
                topics.postbacks["s2s"],
            ]
            dispatcher += ["--group", f"{app_id}-dispatcher", "--results-topic", topics.results]
            children.append(await start_child(f"{app_id}-matcher", matcher, os.environ, ctx.workdir))
            children.append(await start_child(f"{app_id}-dispatcher", dispatcher, os.environ, ctx.workdir))
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=1)
        await producer.start()
        try:
            await _warm_up(producer, topics.conversions, sink, children, app_id)
            return await _offer(ctx, producer, topics.conversions, sink, children, pipeline)
        finally:
            await producer.stop()
    finally:
        for child in children:
            await child.stop()


async def _send(producer: AIOKafkaProducer, topic: str, document: dict[str, Any]) -> asyncio.Future[Any]:
    future: asyncio.Future[Any] = await producer.send(
        topic, orjson.dumps(document), key=document["conversion_id"].encode()
    )
    return future


async def _warm_up(producer: AIOKafkaProducer, topic: str, sink: BenchSink, children: list[Child], tag: str) -> None:
    """A few conversions through the pipeline before measuring: group joins and connections are done."""
    sink.reset()
    rng, now = random.Random(1), datetime.now(UTC)
    await asyncio.gather(
        *[
            await _send(producer, topic, conversion_document(i, CAMPAIGNS, rng, f"warm-{tag}", now))
            for i in range(WARM_UP)
        ]
    )
    deadline = time.monotonic() + WARM_UP_TIMEOUT_SECONDS
    while len(sink.first_seen) < WARM_UP:
        for child in children:
            child.check_alive()
        if time.monotonic() > deadline:
            raise HarnessError(
                f"{tag}: {len(sink.first_seen)} of {WARM_UP} warm-up conversions went through "
                f"in {WARM_UP_TIMEOUT_SECONDS:.0f}s"
            )
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)
    sink.reset()


async def _offer(
    ctx: Context, producer: AIOKafkaProducer, topic: str, sink: BenchSink, children: list[Child], pipeline: str
) -> PipelineRun:
    sizes = ctx.sizes
    rate, seconds = sizes.latency_rate, sizes.latency_seconds
    total = rate * seconds
    rng, now = random.Random(7), datetime.now(UTC)
    produced: dict[str, float] = {}
    acks: list[asyncio.Future[Any]] = []
    started = time.monotonic()
    next_progress = started + PROGRESS_EVERY
    sent = 0
    while sent < total:
        due = min(total, int((time.monotonic() - started) * rate) + 1)
        while sent < due:
            document = conversion_document(sent, CAMPAIGNS, rng, f"lat-{pipeline}", now)
            produced[document["conversion_id"]] = time.monotonic()
            acks.append(await _send(producer, topic, document))
            sent += 1
        if time.monotonic() >= next_progress:
            next_progress += PROGRESS_EVERY
            for child in children:
                child.check_alive()
            say(
                f"latency: {pipeline:<7} {time.monotonic() - started:4.0f}s  offered {sent:,}  "
                f"delivered {len(sink.first_seen):,}"
            )
        await asyncio.sleep(0.002)
    await asyncio.gather(*acks)
    offered_until = started + seconds
    deadline = time.monotonic() + sizes.latency_drain_seconds
    while len(sink.first_seen) < total and time.monotonic() < deadline:
        for child in children:
            child.check_alive()
        await asyncio.sleep(0.1)
    ended = time.monotonic()
    delivered_ms = [(sink.first_seen[cid] - at) * 1000 for cid, at in produced.items() if cid in sink.first_seen]
    waiting_ms = [(ended - at) * 1000 for cid, at in produced.items() if cid not in sink.first_seen]
    steady_from = started + seconds * STEADY_FROM
    steady_seconds = offered_until - steady_from
    span = int(ended - started) + 1
    return PipelineRun(
        offered=total,
        delivered=len(delivered_ms),
        latencies_ms=delivered_ms + waiting_ms,
        delivered_ms=delivered_ms,
        offered_per_s=sum(1 for at in produced.values() if steady_from <= at < offered_until) / steady_seconds,
        achieved_per_s=sum(1 for at in sink.arrivals if steady_from <= at < offered_until) / steady_seconds,
        offered_series=per_second(produced.values(), started, span),
        delivered_series=per_second(sink.first_seen.values(), started, span),
    )
