"""`matcher`: the worker against a plain aiokafka loop and two Faust agents, on the same topics and rules.

One conversions topic is filled once (`Sizes.matcher_conversions` realistic conversions over
`matcher_campaigns` campaigns of three entries, about 30 % of the entries firing); then, every repeat, each
variant consumes it from the beginning as a new consumer group, in a rotated order:

- `worker`: the real `postback-router worker` (RocksDB fired-state, the default), its progress from its
  own `postback_conversions_consumed_total`;
- `raw`: raw_matcher.py (getmany → orjson → minimal evaluation → unawaited sends → one flush);
- `faust_batch`, `faust_naive`: faust_matcher.py (needs the `bench` extra; skipped without it).

A run is measured over its busy window (report.busy_window) and stopped once everything is consumed or it
has been busy `run_seconds` (`faust_naive_run_seconds` for the naive agent, which is slow).
"""

from __future__ import annotations

import importlib.util
import os

import aiohttp
import orjson

from devtools.bench.common import (
    METRICS_SAMPLE_SECONDS,
    SAMPLE_SECONDS,
    Context,
    SectionResult,
    create_topics,
    http_get,
    metric_total,
    rotated,
    sample_until,
    say,
    service_env,
    start_child,
    start_service,
    write_records,
)
from devtools.bench.minimal_rules import write_rules_file
from devtools.bench.report import Throughput, busy_window, describe, pairwise_ratios, runs_detail, summarize
from devtools.bench.workload import OFFER_SOURCES, campaign_documents, conversions, fired_share
from postback_router.embedded_broker import kafka_for_local_use

VARIANTS = ("worker", "raw", "faust_batch", "faust_naive")
PREFIX = "bench-matcher."
SEED = 13


def faust_available() -> bool:
    return importlib.util.find_spec("faust") is not None


async def run(ctx: Context) -> SectionResult:
    sizes = ctx.sizes
    total = sizes.matcher_conversions
    result = SectionResult()
    variants = VARIANTS if faust_available() else ("worker", "raw")
    if len(variants) < len(VARIANTS):
        say("matcher: faust-streaming is not installed (pip install -e '.[bench]'): the Faust agents are skipped")
    with kafka_for_local_use() as bootstrap:
        settings = await create_topics(bootstrap, PREFIX)
        topics = settings.topics
        docs = campaign_documents(sizes.matcher_campaigns)
        await write_records(
            bootstrap,
            ((topics.offer_sources, d["offer_source_id"].encode(), orjson.dumps(d), None) for d in OFFER_SOURCES),
        )
        await write_records(
            bootstrap, ((topics.campaign_rules, d["campaign_id"].encode(), orjson.dumps(d), None) for d in docs)
        )
        share, size = fired_share(docs, (value for _, value in conversions(5000, len(docs), SEED, "cv")))
        say(f"matcher: writing {total:,} conversions (~{size:.0f} bytes, {share:.0%} of entries firing)")
        written = await write_records(
            bootstrap, ((topics.conversions, k, v, None) for k, v in conversions(total, len(docs), SEED, "cv"))
        )
        rules_path = os.path.join(ctx.workdir, "matcher-rules.json")
        write_rules_file(rules_path, docs, OFFER_SOURCES, topics.postbacks)
        runs: dict[str, list[Throughput | None]] = {v: [] for v in variants}
        async with aiohttp.ClientSession() as session:
            for repeat in range(ctx.repeats):
                for variant in rotated(variants, repeat):
                    measured = await _run_variant(
                        ctx, session, variant, repeat, bootstrap, topics.conversions, rules_path, written
                    )
                    runs[variant].append(measured)
                    say(f"matcher: repeat {repeat + 1}/{ctx.repeats} {variant:<11} {describe(measured, 'conversions')}")
    rates = {v: [t.per_s if t else float("nan") for t in ts] for v, ts in runs.items()}
    cpu = {v: [t.cpu_us_per_event if t else float("nan") for t in ts] for v, ts in runs.items()}
    figures = result.figures
    figures["events_per_s"] = summarize(rates["worker"])
    figures["cpu_us_per_event"] = summarize(cpu["worker"])
    figures["raw_baseline_events_per_s"] = summarize(rates["raw"])
    figures["raw_cpu_us_per_event"] = summarize(cpu["raw"])
    nan_runs = [float("nan")] * ctx.repeats
    figures["faust_batch_events_per_s"] = summarize(rates.get("faust_batch", nan_runs))
    figures["faust_naive_events_per_s"] = summarize(rates.get("faust_naive", nan_runs))
    figures["ratio_vs_raw"] = pairwise_ratios(rates["worker"], rates["raw"])
    figures["ratio_vs_faust_batch"] = pairwise_ratios(rates["worker"], rates.get("faust_batch", nan_runs))
    figures["ratio_vs_faust_naive"] = pairwise_ratios(rates["worker"], rates.get("faust_naive", nan_runs))
    result.details = {
        "conversions": written,
        "campaigns": len(docs),
        "entries_per_campaign": 3,
        "fired_share": round(share, 3),
        "conversion_bytes": round(size),
        "worker_state_store": "rocksdb://",
        "runs": runs_detail(runs),
    }
    return result


async def _run_variant(
    ctx: Context,
    session: aiohttp.ClientSession,
    variant: str,
    repeat: int,
    bootstrap: str,
    topic: str,
    rules_path: str,
    total: int,
) -> Throughput | None:
    sizes = ctx.sizes
    name = f"matcher-{variant}-{repeat}"
    group = f"bench-{variant}-{repeat}"
    busy = sizes.faust_naive_run_seconds if variant == "faust_naive" else sizes.run_seconds
    if variant == "worker":
        state_dir = os.path.join(ctx.workdir, "state", name)
        env = service_env(bootstrap, PREFIX, group, state_dir, STATE_STORE="rocksdb://")
        child = await start_service(name, ["worker"], env, ctx.workdir)
        metrics = f"http://127.0.0.1:{child.http_port}/metrics"

        async def consumed() -> int:
            status, text = await http_get(session, metrics)
            return int(metric_total(text, "postback_conversions_consumed_total")) if status == 200 else 0

        counter, interval = consumed, METRICS_SAMPLE_SECONDS
    else:
        if variant == "raw":
            args = ["-m", "devtools.bench.raw_matcher", "--group", group]
        else:
            mode = variant.removeprefix("faust_")
            args = ["-m", "devtools.bench.faust_matcher", "--mode", mode, "--app-id", group]
        args += ["--bootstrap", bootstrap, "--topic", topic, "--rules", rules_path]
        child = await start_child(name, args, os.environ, ctx.workdir)

        async def progress() -> int:
            return child.count

        counter, interval = progress, SAMPLE_SECONDS
    try:
        samples = await sample_until(child, counter, total, busy, interval=interval)
    finally:
        await child.stop()
    return busy_window(samples, total)
