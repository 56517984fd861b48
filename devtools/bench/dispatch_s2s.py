"""`dispatch_s2s`: the real `postback-router dispatch --kind s2s` against a plain aiohttp loop (raw_dispatch.py).

`Sizes.s2s_postbacks` matched postbacks (made by the service's own matcher, streams/core) to
`s2s_destinations` destination hosts, which are one loopback sink (sink.py) listening on as many
addresses. Every repeat each consumes the whole topic as a new consumer group, in a rotated order, with the
same limits: DESTINATION_CONCURRENCY (8) requests per host, a 512-connection pool. A run's count is the
requests the sink received; CPU is the measured process's own.
"""

from __future__ import annotations

import os

from devtools.bench.common import (
    Context,
    SectionResult,
    create_topics,
    rotated,
    sample_until,
    say,
    service_env,
    start_child,
    start_service,
    write_records,
)
from devtools.bench.report import Throughput, busy_window, describe, pairwise_ratios, runs_detail, summarize
from devtools.bench.sink import BenchSink
from devtools.bench.workload import conversions, matched_postbacks, single_s2s_campaigns
from postback_router.embedded_broker import kafka_for_local_use

VARIANTS = ("dispatcher", "raw")
PREFIX = "bench-s2s."
CAMPAIGNS = 200
SEED = 29
CONCURRENCY = 8  # DESTINATION_CONCURRENCY's default, for both


async def run(ctx: Context) -> SectionResult:
    sizes = ctx.sizes
    total = sizes.s2s_postbacks
    sink = BenchSink(sizes.s2s_destinations)
    await sink.start()
    runs: dict[str, list[Throughput | None]] = {v: [] for v in VARIANTS}
    try:
        with kafka_for_local_use() as bootstrap:
            settings = await create_topics(bootstrap, PREFIX)
            topics = settings.topics
            campaigns = single_s2s_campaigns(
                CAMPAIGNS,
                lambda c: (
                    f"{sink.base_url(c)}/pb/{c}?cid={{conversion_id}}&clickid={{clickid}}&payout={{payout}}"
                    "&status={status}&goal={type}"
                ),
            )
            postbacks = matched_postbacks(campaigns, conversions(total, CAMPAIGNS, SEED, "s2s"), topics.postbacks)
            written = await write_records(bootstrap, ((topic, key, value, None) for topic, key, value in postbacks))
            say(f"dispatch_s2s: {written:,} postbacks to {sizes.s2s_destinations} destination hosts written")
            for repeat in range(ctx.repeats):
                for variant in rotated(VARIANTS, repeat):
                    measured = await _run_variant(
                        ctx, sink, variant, repeat, bootstrap, topics.postbacks["s2s"], topics.results, written
                    )
                    runs[variant].append(measured)
                    line = describe(measured, "postbacks")
                    say(f"dispatch_s2s: repeat {repeat + 1}/{ctx.repeats} {variant:<10} {line}")
    finally:
        await sink.stop()
    rates = {v: [t.per_s if t else float("nan") for t in ts] for v, ts in runs.items()}
    cpu = {v: [t.cpu_us_per_event if t else float("nan") for t in ts] for v, ts in runs.items()}
    result = SectionResult()
    result.figures["per_s"] = summarize(rates["dispatcher"])
    result.figures["cpu_us_per_postback"] = summarize(cpu["dispatcher"])
    result.figures["raw_baseline_per_s"] = summarize(rates["raw"])
    result.figures["raw_cpu_us_per_postback"] = summarize(cpu["raw"])
    result.figures["ratio"] = pairwise_ratios(rates["dispatcher"], rates["raw"])
    result.details = {
        "postbacks": total,
        "destinations": sizes.s2s_destinations,
        "concurrency_per_destination": CONCURRENCY,
        "runs": runs_detail(runs),
    }
    return result


async def _run_variant(
    ctx: Context,
    sink: BenchSink,
    variant: str,
    repeat: int,
    bootstrap: str,
    topic: str,
    results_topic: str,
    total: int,
) -> Throughput | None:
    name = f"s2s-{variant}-{repeat}"
    group = f"bench-{variant}-{repeat}"
    sink.reset()
    if variant == "dispatcher":
        env = service_env(
            bootstrap,
            PREFIX,
            group,
            os.path.join(ctx.workdir, "state", name),
            STATE_STORE="rocksdb://",
            DESTINATION_CONCURRENCY=str(CONCURRENCY),
        )
        child = await start_service(name, ["dispatch", "--kind", "s2s"], env, ctx.workdir)
    else:
        args = ["-m", "devtools.bench.raw_dispatch", "--bootstrap", bootstrap, "--topic", topic, "--group", group]
        args += ["--results-topic", results_topic, "--concurrency", str(CONCURRENCY)]
        child = await start_child(name, args, os.environ, ctx.workdir)

    def received() -> int:
        return sink.count

    try:
        samples = await sample_until(child, received, total, ctx.sizes.run_seconds)
    finally:
        await child.stop()
    return busy_window(samples, total)
