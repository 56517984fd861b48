"""`make demo`: the service's main job end to end, and a readable account of what happened.

On the embedded broker (or KAFKA_BOOTSTRAP_SERVERS, under topics of its own that it deletes at the
end): starts a real `postback-router worker`, `postback-router dispatch --kind all` and
`postback-router api`, publishes offer sources, campaign rules and a stream of conversions (updates,
missing statuses, re-deliveries, invalid ones, one too old for Microsoft), then prints each conversion
with the postbacks it fired and, for the entries that did not fire, why; then what each traffic source
(a local HTTP server standing in for them, one of them down for a while) and each ad platform (local
fakes of Google Ads, Meta, TikTok and Microsoft Advertising) received, with the reason for every
postback that was refused or dead-lettered; then the HTTP API; then a burst, for the rates.
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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NoReturn

import aiohttp
import orjson
from aiokafka.admin import AIOKafkaAdminClient

from devtools.demo_data import CAMPAIGNS, CONVERSIONS, OFFER_SOURCES, campaigns_for
from devtools.demo_sink import DemoSink
from postback_router.embedded_broker import free_loopback_port, kafka_for_local_use
from service.kafka_connection import KafkaConnection
from service.kafka_io import produce, read_topic
from service.settings import Topics, load_settings
from service.topics import ensure_topics

# The demo must finish on its own: a worker that has not produced every evaluation by then is stuck,
# and the demo says so instead of waiting forever.
DEADLINE_SECONDS = 90.0
BURST_SIZE = 10_000
DEMO_OUTAGE_REQUESTS = 3
WIDTH = 100


def say(text: str = "") -> None:
    print(text, flush=True)


def heading(text: str) -> None:
    say()
    say(f"== {text} " + "=" * max(0, WIDTH - len(text) - 4))


class DemoPlatforms:
    """Fake Google Ads, Meta, TikTok and Microsoft Advertising APIs (the test suite's, which check requests
    the way the real APIs do), and the environment that points the dispatcher at them with its secrets."""

    def __init__(self) -> None:
        from devtools.fakes.platforms import FakeGoogleAds, FakeMeta, FakeMicrosoftAds, FakeOAuthServer, FakeTikTok

        self.google, self.meta, self.tiktok = FakeGoogleAds(), FakeMeta(), FakeTikTok()
        self.microsoft = FakeMicrosoftAds()
        self.oauth = FakeOAuthServer(grant_into=[self.google.tokens, self.microsoft.tokens])
        self.servers = [self.google, self.meta, self.tiktok, self.microsoft, self.oauth]
        self.names = {
            "google_ads": self.google,
            "meta": self.meta,
            "tiktok": self.tiktok,
            "microsoft_ads": self.microsoft,
        }

    async def start(self) -> dict[str, str]:
        for server in self.servers:
            await server.start()
        oauth = {
            "client_id": "oauth-client-id",
            "client_secret": "oauth-client-secret",
            "refresh_token": "oauth-refresh-token",
        }
        return {
            "GOOGLE_ADS_BASE_URL": self.google.base_url,
            "META_BASE_URL": self.meta.base_url,
            "TIKTOK_BASE_URL": self.tiktok.base_url,
            "MICROSOFT_ADS_BASE_URL": self.microsoft.base_url,
            "OAUTH_TOKEN_URL_GOOGLE": self.oauth.token_url,
            "OAUTH_TOKEN_URL_MICROSOFT": self.oauth.token_url,
            # secrets reach the dispatcher by name, as in production (never through a topic)
            "POSTBACK_SECRET_GADS_CASINO": orjson.dumps(
                {"developer_token": "google-developer-token", **oauth}
            ).decode(),
            "POSTBACK_SECRET_META_CASINO": orjson.dumps({"access_token": "meta-access-token"}).decode(),
            "POSTBACK_SECRET_TIKTOK_SWEEPS": orjson.dumps({"access_token": "tiktok-access-token"}).decode(),
            "POSTBACK_SECRET_MSADS_NUTRA": orjson.dumps(
                {"developer_token": "microsoft-developer-token", **oauth}
            ).decode(),
        }

    async def stop(self) -> None:
        for server in self.servers:
            await server.stop()


@dataclass
class DemoRun:
    bootstrap: str
    topics: Topics
    sink: DemoSink
    workdir: str
    platforms: DemoPlatforms
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    http_ports: dict[str, int] = field(default_factory=dict)

    @property
    def kafka(self) -> KafkaConnection:
        return KafkaConnection.plaintext(self.bootstrap)  # devtools run against a PLAINTEXT broker

    def start(self, name: str, env: dict[str, str], *args: str) -> None:
        self.http_ports[name] = free_loopback_port()
        with open(os.path.join(self.workdir, f"{name}.log"), "wb") as log:
            self.processes[name] = subprocess.Popen(
                [sys.executable, "-m", "postback_router.cli", *args],
                env={**env, "HTTP_HOST": "127.0.0.1", "HTTP_PORT": str(self.http_ports[name])},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def stop_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()

    async def count(self, topic: str) -> int:
        return len(await read_topic(self.kafka, topic))

    async def count_postbacks(self) -> int:
        """Matched postbacks of every kind so far."""
        return sum([await self.count(topic) for topic in self.topics.postbacks.values()])

    def fail(self, message: str) -> NoReturn:
        """Stop the demo with `message` and the end of each process's log (the logs are deleted after)."""
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGUSR1)  # each writes its asyncio task stacks to its log
        time.sleep(1)
        for name in self.processes:
            with open(os.path.join(self.workdir, f"{name}.log"), errors="replace") as log:
                tail = log.readlines()[-int(os.environ.get("DEMO_LOG_LINES", "25")) :]
            say(f"--- last lines of the {name} log ---")
            say("".join(tail).rstrip())
        raise SystemExit(message)

    async def wait_until(self, check: Callable[[], Awaitable[bool]], what: str) -> None:
        deadline = time.monotonic() + DEADLINE_SECONDS
        while not await check():
            for name, process in self.processes.items():
                if process.poll() is not None:
                    self.fail(f"the {name} exited ({process.returncode}) while waiting for {what}")
            if time.monotonic() > deadline:
                self.fail(f"gave up after {DEADLINE_SECONDS:.0f}s waiting for {what}")
            await asyncio.sleep(0.2)


def describe_fired(fired: dict[str, Any], postback: dict[str, Any] | None) -> str:
    text = f"FIRED   {fired['entry_id']:<26} -> {fired['topic']:<36} payout {fired['payout']}"
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


SHOWN_METRICS = (
    "postback_conversions_consumed_total",
    "postback_conversions_invalid_total",
    "postback_matched_total",
    "postback_filtered_total",
    "postback_rules_campaigns",
    "postback_deliveries_total",
    "postback_dead_letter_total",
    "postback_delivery_attempts_total",
    "postback_end_to_end_seconds_count",
    "postback_consumer_lag",
    "postback_intake_total",
    "postback_api_requests_total",
    "postback_ready",
)
DEMO_API_TOKEN = "demo-token-0123456789abcdef"


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
            # the traffic sources are a local server; retries come quickly so the demo stays short
            "POSTBACK_ALLOW_PRIVATE_TARGETS": "1",
            "RETRY_BASE_DELAY": "500ms",
            "RETRY_MAX_DELAY": "2s",
        }
        sink = DemoSink(down_for_first={"mgid": DEMO_OUTAGE_REQUESTS})
        sink_url = await sink.start()
        platforms = DemoPlatforms()
        env.update(await platforms.start())
        settings = load_settings(env)
        run = DemoRun(bootstrap, settings.topics, sink, workdir, platforms)
        say(f"Kafka: {bootstrap} ({'embedded Tansu broker, in memory' if embedded else 'KAFKA_BOOTSTRAP_SERVERS'})")
        say(f"Topics under the prefix {prefix!r}; traffic sources simulated at {sink_url}/<source>/...")
        await ensure_topics(settings)
        run.start("worker", env, "worker")
        run.start("dispatcher", env, "dispatch", "--kind", "all")
        run.start("api", {**env, "API_TOKEN": DEMO_API_TOKEN}, "api")
        try:
            await publish_and_report(run, campaigns_for(sink_url))
        finally:
            run.stop_all()
            await sink.stop()
            await platforms.stop()
            if not embedded:
                await delete_topics(bootstrap, prefix)
            shutil.rmtree(workdir, ignore_errors=True)
    say()
    cleaned = "broker stopped" if embedded else "demo topics deleted"
    say(f"Done in {time.monotonic() - started:.1f}s; worker, dispatcher and api stopped, {cleaned}.")


async def publish_and_report(run: DemoRun, campaigns: list[dict[str, Any]]) -> None:
    kafka, topics = run.kafka, run.topics
    heading("Published")
    await produce(kafka, topics.offer_sources, [(o["offer_source_id"], o) for o in OFFER_SOURCES])
    for source in OFFER_SOURCES:
        say(f"offer source {source['offer_source_id']:<12} default_status={source['default_status']}")
    await produce(kafka, topics.campaign_rules, [(c["campaign_id"], c) for c in campaigns])
    for campaign in campaigns:
        entries = ", ".join(
            f"{e['id']} ({e['kind']}{', conditional' if e.get('conditional', {}).get('enabled') else ''}"
            f"{', disabled' if e.get('enabled') is False else ''})"
            for e in campaign["postbacks"]
        )
        say(f"campaign {campaign['campaign_id']:<10} {entries}")
    sent_at = time.monotonic()
    await produce(kafka, topics.conversions, [(key, value) for _, key, value in CONVERSIONS])
    say(f"{len(CONVERSIONS)} conversion records, in this order:")
    for description, key, _ in CONVERSIONS:
        say(f"  {key:<9} {description}")

    valid = sum(1 for _, _, value in CONVERSIONS if isinstance(value, dict) and not _expected_invalid(value))
    invalid = len(CONVERSIONS) - valid

    async def all_accounted_for() -> bool:
        evaluations = await read_topic(kafka, topics.evaluations)
        rejected = await read_topic(kafka, topics.invalid(topics.conversions))
        return len(evaluations) >= valid and len(rejected) >= invalid

    say("waiting for the worker (group join and table recovery take a few seconds)...")
    await run.wait_until(all_accounted_for, "every conversion to be evaluated")
    elapsed = time.monotonic() - sent_at
    evaluations = [r.json() for r in await read_topic(kafka, topics.evaluations)]
    rejected = [r.json() for r in await read_topic(kafka, topics.invalid(topics.conversions))]
    postbacks: dict[str, dict[str, Any]] = {}
    per_topic: Counter[str] = Counter()
    for topic in topics.postbacks.values():
        for record in await read_topic(kafka, topic):
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
    await report_deliveries(run, sum(per_topic.values()), postbacks)
    await show_api(run)
    await measure_throughput(run)
    await show_metrics(run)


async def show_api(run: DemoRun) -> None:
    """The HTTP API as a data platform or an affiliate network uses it: rules, intake, a status update."""
    heading("The HTTP API (postback-router api)")
    base = f"http://127.0.0.1:{run.http_ports['api']}"
    auth = {"Authorization": f"Bearer {DEMO_API_TOKEN}"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:

        async def ready() -> bool:
            try:
                async with session.get(base + "/readyz") as response:
                    return response.status == 200
            except aiohttp.ClientError:
                return False

        await run.wait_until(ready, "the api to be ready")
        async with session.get(base + "/v1/campaigns/nutra-uk/rules", headers=auth) as response:
            rules = await response.json()
        entries = ", ".join(entry["id"] for entry in rules["postbacks"])
        say(f"GET  /v1/campaigns/nutra-uk/rules -> {response.status}: the rules the workers use ({entries})")
        bad = {"postbacks": [{"id": "mgid", "kind": "s2s", "url": "https://a.mgid.example/p?c={clikid}"}]}
        async with session.put(base + "/v1/campaigns/nutra-uk/rules", json=bad, headers=auth) as response:
            refused = await response.json()
        say(f"PUT  /v1/campaigns/nutra-uk/rules with a typo in a macro -> {response.status}: {refused['fields']}")
        async with session.get(base + "/v1/campaigns/nutra-uk/rules") as response:
            say(f"GET  without the bearer token -> {response.status}")
        query = "clickid=rt-api-1&campaign_id=nutra-uk&type=lead&status=pending&sum=30.00&txid=net-7781"
        async with session.get(f"{base}/v1/postback?{query}") as response:
            accepted = await response.json()
        conversion_id = accepted["conversion_id"]
        say(f"GET  /v1/postback?{query}")
        say(f"     -> {response.status} {accepted}")

        async def evaluated() -> bool:
            return any(
                r.json()["conversion_id"] == conversion_id for r in await read_topic(run.kafka, run.topics.evaluations)
            )

        await run.wait_until(evaluated, "the api's conversion to be evaluated")
        evaluations = [r.json() for r in await read_topic(run.kafka, run.topics.evaluations)]
        [evaluation] = [e for e in evaluations if e["conversion_id"] == conversion_id]
        fired = ", ".join(f["entry_id"] for f in evaluation["fired"]) or "nothing"
        skipped = "; ".join(f"{e['entry_id']}: {REASONS[e['reason']]}" for e in evaluation["skipped"])
        say(f"     {evaluation['status']}: {fired} fired ({skipped})")
        async with session.patch(
            f"{base}/v1/conversions/{conversion_id}", json={"status": "approved"}, headers=auth
        ) as response:
            say(f'PATCH /v1/conversions/{conversion_id} {{"status": "approved"}} -> {response.status}')

        async def delivered() -> list[dict[str, Any]]:
            results = [r.json() for r in await read_topic(run.kafka, run.topics.results)]
            return [r for r in results if r["conversion_id"] == conversion_id]

        async def any_delivered() -> bool:
            return bool(await delivered())

        await run.wait_until(any_delivered, "the approved update to be delivered")
        for result in await delivered():
            say(f"     -> {result['entry_id']} {result['result']} after {result['attempts']} attempt(s)")


async def show_metrics(run: DemoRun) -> None:
    """What an SRE sees: /readyz and the service's own series from /metrics of each process."""
    heading("Operations: /readyz and /metrics of each process (what Prometheus scrapes)")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        for name, port in run.http_ports.items():
            base = f"http://127.0.0.1:{port}"
            async with session.get(base + "/readyz") as response:
                say(f"{name}: GET {base}/readyz -> {response.status} {await response.text()}")
            async with session.get(base + "/metrics") as response:
                text = await response.text()
            shown = [
                line
                for line in text.splitlines()
                if line.startswith(SHOWN_METRICS) and not line.endswith(" 0.0") and "_bucket{" not in line
            ]
            say(f"{name}: {len(text.splitlines())} lines at {base}/metrics; the service's non-zero series:")
            for line in shown:
                say(f"  {line}")


async def report_deliveries(run: DemoRun, expected: int, postbacks: dict[str, dict[str, Any]]) -> None:
    heading("What the destinations received (postback-router dispatch --kind all)")
    results_topic = run.topics.results

    async def all_reported() -> bool:
        return await run.count(results_topic) >= expected

    say(f"MGID's endpoint is down (503) for its first {DEMO_OUTAGE_REQUESTS} requests; waiting for every result...")
    await run.wait_until(all_reported, f"{expected} delivery results")
    # Meta and TikTok dedupe on event_id (= postback_id); Microsoft on MicrosoftClickId|ConversionTime
    by_key = dict(postbacks)
    by_key |= {p["click_ids"]["msclkid"]: p for p in postbacks.values() if "msclkid" in p["click_ids"]}
    for kind, fake in run.platforms.names.items():
        found = [by_key.get(key) or by_key.get(key.split("|")[0]) for key in fake.delivered]
        events = ", ".join(f"{p['conversion_id']} ({p['status']})" for p in found if p is not None)
        say(f"{kind} API (local fake): {len(fake.received)} request(s), events for {events}")
    say("traffic sources (local sink), in the order they were called:")
    first = run.sink.received[0].at if run.sink.received else time.monotonic()
    for request in run.sink.received:
        say(f"  +{request.at - first:5.2f}s  {request.status}  {request.path_qs}")
    results = [r.json() for r in await read_topic(run.kafka, results_topic)]
    say(f"{len(results)} results on {results_topic} (the status is the conversion's: an update is a new postback):")
    for result in sorted(results, key=lambda r: (r["entry_id"], r["conversion_id"])):
        postback = postbacks.get(result["postback_id"], {})
        say(
            f"  {result['conversion_id']:<8} {postback.get('status', '?'):<9} {result['entry_id']:<24} "
            f"{result['result']:<13} attempts {result['attempts']}  last {result['last_reason']}  "
            f"after {result['latency_seconds']:.2f}s"
        )
        if result["result"] != "delivered":
            say(f"           why: {explain_refusal(result)}")


def explain_refusal(result: dict[str, Any]) -> str:
    """A refused or dead-lettered postback's reason, as the destination (or the dispatcher) gave it."""
    reason = str(result.get("last_reason") or "unknown")
    detail = str(result.get("last_detail") or "").strip()
    hint = REFUSAL_HINTS.get(reason) or (
        "the destination refused the request; not retried" if reason.startswith("http_4") else ""
    )
    text = f"{reason}: {detail}" if detail else reason
    return f"{text} ({hint})" if hint else text


# Plain words for the reasons a demo reader is most likely to meet.
REFUSAL_HINTS = {
    "event_too_old": "the platform refuses events older than its window: Meta 7 days, Microsoft 90",
    "CLICK_NOT_FOUND": "Google does not know the gclid",
    "EXPIRED_EVENT": "the click is older than the conversion action's window",
    "max_age": "still failing when the retry age (DELIVERY_MAX_AGE) ran out",
    "missing_credentials": "the entry's secret is not set on the dispatcher",
}


async def measure_throughput(run: DemoRun) -> None:
    heading(f"Throughput: a burst of {BURST_SIZE:,} conversions")
    kafka, topics = run.kafka, run.topics
    campaigns = [c["campaign_id"] for c in CAMPAIGNS]
    # Now, not a date: the platforms refuse events past their age windows (Meta: 7 days).
    occurred_at = datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
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
                "occurred_at": occurred_at,
                "click_ids": {"external_id": f"src-burst-{i}"},
                "user": {"email": f"burst{i}@players.example"},
            },
        )
        for i in range(BURST_SIZE)
    ]
    evaluated_before = await run.count(topics.evaluations)
    # taken before the burst: the dispatcher delivers while the worker is still matching
    delivered_before = sum(run.sink.delivered().values())
    s2s_before = await run.count(topics.postbacks["s2s"])
    postbacks_before = await run.count_postbacks()
    started = time.monotonic()
    await produce(kafka, topics.conversions, burst)
    say(f"sent in {time.monotonic() - started:.1f}s; the worker matches while they arrive")
    deadline = started + DEADLINE_SECONDS
    done = 0
    while done < BURST_SIZE:
        if time.monotonic() > deadline:
            run.fail(f"the burst was not matched in time ({done:,}/{BURST_SIZE:,})")
        await asyncio.sleep(0.5)
        done = await run.count(topics.evaluations) - evaluated_before
        say(f"  {done:>7,} / {BURST_SIZE:,} evaluated ({time.monotonic() - started:5.1f}s)")
    matched_in = time.monotonic() - started
    s2s = await run.count(topics.postbacks["s2s"]) - s2s_before
    say(
        f"{BURST_SIZE:,} conversions matched in {matched_in:.1f}s = {BURST_SIZE / matched_in:,.0f} conversions/s "
        f"(one worker, evaluation records on, produce time included); {s2s:,} of them S2S postbacks"
    )
    deadline = time.monotonic() + DEADLINE_SECONDS
    delivered = sum(run.sink.delivered().values()) - delivered_before
    while delivered < s2s:
        if time.monotonic() > deadline:
            run.fail(f"the burst's postbacks were not delivered in time ({delivered:,}/{s2s:,})")
        await asyncio.sleep(1.0)
        delivered = sum(run.sink.delivered().values()) - delivered_before
        say(
            f"  {delivered:>7,} / {s2s:,} delivered ({time.monotonic() - started:5.1f}s; "
            f"{len(run.sink.received):,} requests received in all)"
        )
    delivered_in = time.monotonic() - started
    say(
        f"{s2s:,} S2S postbacks delivered to the local sink {delivered_in:.1f}s after the burst was sent = "
        f"{s2s / delivered_in:,.0f} deliveries/s end to end (one dispatcher)"
    )
    await report_burst_outcomes(run, postbacks_before)


async def report_burst_outcomes(run: DemoRun, postbacks_before: int) -> None:
    """Every postback of the burst ends with one result; count them per kind and explain the refusals."""
    topics = run.topics

    expected = await run.count_postbacks() - postbacks_before
    say(f"waiting for the results of all {expected:,} postbacks of the burst (every kind)...")

    async def all_results_in() -> bool:
        results = [r.json() for r in await read_topic(run.kafka, topics.results)]
        return sum(1 for r in results if str(r["conversion_id"]).startswith("burst-")) >= expected

    await run.wait_until(all_results_in, f"the results of the burst's {expected:,} postbacks")
    outcomes: Counter[tuple[str, str]] = Counter()
    refusals: Counter[tuple[str, str]] = Counter()
    for record in await read_topic(run.kafka, topics.results):
        result = record.json()
        if not str(result["conversion_id"]).startswith("burst-"):
            continue
        outcomes[(result["kind"], result["result"])] += 1
        if result["result"] != "delivered":
            refusals[(result["kind"], explain_refusal(result))] += 1
    for kind in topics.postbacks:
        counts = ", ".join(f"{outcome} {n:,}" for (k, outcome), n in sorted(outcomes.items()) if k == kind)
        say(f"  {kind:<14} {counts or 'no postbacks'}")
    for (kind, why), n in sorted(refusals.items()):
        say(f"  {kind:<14} {n:,} not delivered: {why}")
    if not refusals:
        say("  every postback of the burst was delivered")


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
