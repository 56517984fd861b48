"""`dispatch_batch`: rows per second that `postback-router dispatch --kind meta` / `--kind google_ads` deliver
to the Meta and Google Ads fakes (devtools/fakes/platforms.py, which check each request as the real APIs do).

`Sizes.batch_rows` postbacks of each kind, made by the service's own matcher from campaigns with one Meta and
one Google Ads entry. Every repeat starts fresh fakes (so no row is a duplicate to them) and one dispatcher
per kind as a new consumer group. There is no plain-client baseline: the figure is the rate and the CPU per
row, to follow over time.
"""

from __future__ import annotations

import os
from typing import Any

from devtools.bench.common import (
    Context,
    SectionResult,
    create_topics,
    rotated,
    sample_until,
    say,
    service_env,
    start_service,
    write_records,
)
from devtools.bench.report import Throughput, busy_window, describe, runs_detail, summarize
from devtools.bench.workload import GOOGLE_SECRET, META_SECRET, campaign_id, conversions, matched_postbacks
from devtools.demo import DemoPlatforms
from postback_router.embedded_broker import kafka_for_local_use

KINDS = ("meta", "google_ads")
PREFIX = "bench-batch."
CAMPAIGNS = 100
SEED = 31


def platform_campaigns(count: int) -> list[dict[str, Any]]:
    """Campaigns with one unconditional Meta and one unconditional Google Ads entry: a row of each per conversion."""
    return [
        {
            "campaign_id": campaign_id(c),
            "postbacks": [
                {
                    "id": "meta",
                    "kind": "meta",
                    "pixel_id": "731000000000001",
                    "credentials": META_SECRET,
                    "event_names": {
                        "deposit": "Purchase",
                        "purchase": "Purchase",
                        "lead": "Lead",
                        "conversion": "Lead",
                    },
                },
                {
                    "id": "google",
                    "kind": "google_ads",
                    "customer_id": "123-456-7890",
                    "conversion_action": "customers/1234567890/conversionActions/99",
                    "credentials": GOOGLE_SECRET,
                },
            ],
        }
        for c in range(count)
    ]


async def run(ctx: Context) -> SectionResult:
    total = ctx.sizes.batch_rows
    runs: dict[str, list[Throughput | None]] = {kind: [] for kind in KINDS}
    with kafka_for_local_use() as bootstrap:
        settings = await create_topics(bootstrap, PREFIX)
        topics = settings.topics
        postbacks = matched_postbacks(
            platform_campaigns(CAMPAIGNS), conversions(total, CAMPAIGNS, SEED, "batch"), topics.postbacks
        )
        written = await write_records(bootstrap, ((topic, key, value, None) for topic, key, value in postbacks))
        say(f"dispatch_batch: {written:,} postbacks written ({total:,} Meta, {total:,} Google Ads)")
        for repeat in range(ctx.repeats):
            for kind in rotated(KINDS, repeat):
                measured = await _run_kind(ctx, kind, repeat, bootstrap, total)
                runs[kind].append(measured)
                say(f"dispatch_batch: repeat {repeat + 1}/{ctx.repeats} {kind:<10} {describe(measured, 'rows')}")
    result = SectionResult()
    for kind in KINDS:
        result.figures[f"{kind}_rows_per_s"] = summarize(t.per_s if t else float("nan") for t in runs[kind])
        result.figures[f"{kind}_cpu_us_per_row"] = summarize(
            t.cpu_us_per_event if t else float("nan") for t in runs[kind]
        )
    result.details = {
        "rows_per_kind": total,
        "runs": runs_detail(runs),
    }
    return result


async def _run_kind(ctx: Context, kind: str, repeat: int, bootstrap: str, total: int) -> Throughput | None:
    name = f"batch-{kind}-{repeat}"
    platforms = DemoPlatforms()
    fake = platforms.names[kind]
    env = service_env(
        bootstrap,
        PREFIX,
        f"bench-batch-{repeat}",
        os.path.join(ctx.workdir, "state", name),
        STATE_STORE="rocksdb://",
        **await platforms.start(),
    )
    try:
        child = await start_service(name, ["dispatch", "--kind", kind], env, ctx.workdir)

        def rows() -> int:
            return len(fake.delivered)

        try:
            samples = await sample_until(child, rows, total, ctx.sizes.run_seconds)
        finally:
            await child.stop()
    finally:
        await platforms.stop()
    return busy_window(samples, total)
