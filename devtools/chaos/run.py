"""One chaos run: the service's processes, the failing outside world, the inputs, the events, the report."""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import random
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient

from devtools.chaos import leaks
from devtools.chaos.faults import FaultSchedule, Ledger, add_faults
from devtools.chaos.model import OFFER_SOURCES, Plan, expectations, fired_by, make_plan, rule_document
from devtools.chaos.processes import Processes
from devtools.chaos.report import Outcome, summarise, table, targets
from devtools.chaos.schedule import Event, make_schedule
from devtools.chaos.sink_process import RemoteSink, merge_ledger
from devtools.demo import DemoPlatforms
from postback_router.embedded_broker import kafka_for_local_use
from service.kafka_connection import KafkaConnection
from service.kafka_io import partitions_of, produce, read_topic
from service.settings import Topics, load_settings
from service.topics import ensure_topics

PROGRESS_EVERY = 5.0
S2S_SOURCES = 8
RULES_SETTLE_S = 10.0  # a record sent this long after the rules changed is evaluated under the new ones
RECHECK_BELOW = 20  # unfinished postbacks left when the results are read again in full
PROCESSES = {
    "worker-1": ("worker",),
    "worker-2": ("worker",),
    "dispatcher-1": ("dispatch", "--kind", "all"),
    "dispatcher-2": ("dispatch", "--kind", "all"),
}


@dataclass(frozen=True)
class RunOptions:
    conversions: int
    seconds: float  # sending lasts this long
    outage_s: float
    campaigns: int
    hostile_share: float
    change_share: float
    min_kills: int
    seed: int
    report_path: str


def say(text: str = "") -> None:
    print(text, flush=True)


@dataclass
class ResultsFollower:
    """postbacks.results as it grows, read by one consumer in the background (a re-read per progress
    line would grow with the run)."""

    bootstrap: str
    topic: str
    finished: set[str] = field(default_factory=set)
    _task: asyncio.Task[None] | None = None

    @property
    def kafka(self) -> KafkaConnection:
        return KafkaConnection.plaintext(self.bootstrap)  # devtools run against a PLAINTEXT broker

    async def start(self) -> None:
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False)
        await consumer.start()
        partitions = await partitions_of(self.kafka, self.topic)
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        self._task = asyncio.create_task(self._follow(consumer))

    async def _follow(self, consumer: AIOKafkaConsumer) -> None:
        try:
            while True:
                for messages in (await consumer.getmany(timeout_ms=500, max_records=10_000)).values():
                    for message in messages:
                        result = orjson.loads(message.value)
                        if result["result"] in ("delivered", "rejected", "dead_lettered"):
                            self.finished.add(result["postback_id"])
        finally:
            await consumer.stop()

    async def reread(self) -> None:
        for record in await read_topic(self.kafka, self.topic):
            result = record.json()
            if result["result"] in ("delivered", "rejected", "dead_lettered"):
                self.finished.add(result["postback_id"])

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


def platform_faults(platforms: DemoPlatforms, plan: Plan, schedule: FaultSchedule, ledger: Ledger) -> None:
    """Script every fake platform's failures; Microsoft's dedup key (click, time) maps back to a postback
    through the conversion its click belongs to (the model fires at most one Microsoft postback each)."""
    microsoft: dict[str, str] = {}
    for version in plan.versions:
        if version is None:
            continue
        for rules in (plan.campaigns, plan.changed):
            entries = [e for e in rules.get(version["campaign_id"], []) if e.kind == "microsoft_ads"]
            for pid in fired_by(version, entries):
                microsoft[version["click_ids"]["msclkid"]] = pid
    for name, fake in platforms.names.items():
        identify = (lambda key: microsoft.get(key.split("|")[0], key)) if name == "microsoft_ads" else str
        add_faults(name, fake, schedule, ledger, identify)


async def run_chaos(options: RunOptions) -> bool:
    started = time.monotonic()
    rng = random.Random(options.seed)
    with kafka_for_local_use() as bootstrap:
        kafka = KafkaConnection.plaintext(bootstrap)
        embedded = not os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        prefix = f"chaos-{uuid.uuid4().hex[:6]}."
        workdir = tempfile.mkdtemp(prefix="postback-router-chaos-")
        plan = make_plan(rng, options.conversions, options.campaigns, options.hostile_share, options.change_share)
        schedule = FaultSchedule(random.Random(options.seed + 1))
        ledger = Ledger()
        sink = RemoteSink(options.seed + 2)
        sink_urls = await sink.start(S2S_SOURCES)
        platforms = DemoPlatforms()
        platform_faults(platforms, plan, schedule, ledger)
        platform_env = await platforms.start()
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "TOPIC_PREFIX": prefix,
            "APP_ID": prefix + "router",
            "STATE_STORE": "rocksdb://",
            "TOPIC_PARTITIONS": "4",
            "KAFKA_SESSION_TIMEOUT": "6s",
            "KAFKA_HEARTBEAT_INTERVAL": "1s",
            "POSTBACK_ALLOW_PRIVATE_TARGETS": "1",
            "RETRY_BASE_DELAY": "500ms",
            "RETRY_MAX_DELAY": "5s",
            "BREAKER_OPEN_SECONDS": "5s",
            "BREAKER_MAX_OPEN_SECONDS": "15s",
            "LOG_LEVEL": "INFO",
            **platform_env,
        }
        settings = load_settings(env)
        topics = settings.topics
        await ensure_topics(settings)
        await produce(
            kafka,
            topics.offer_sources,
            [(k, {"offer_source_id": k, "default_status": v}) for k, v in OFFER_SOURCES.items()],
        )
        await produce(
            kafka,
            topics.campaign_rules,
            [(c, rule_document(c, entries, sink_urls)) for c, entries in plan.campaigns.items()],
        )
        processes = Processes(env, workdir, rng, dict(PROCESSES))
        say(f"Kafka: {bootstrap}; topics under {prefix!r}; logs and state in {workdir}")
        say(
            f"{len(plan.campaigns)} campaigns, {plan.conversions} conversions in {len(plan.records)} records "
            f"({sum(plan.hostile.values())} hostile: {dict(plan.hostile)}); {len(plan.changed)} campaigns "
            f"change their rules mid-run; {options.outage_s:.0f}s outage of every destination"
        )
        processes.start_all()
        follower = ResultsFollower(bootstrap, topics.results)
        await follower.start()
        driver = Driver(bootstrap, topics, plan, processes, schedule, follower, options, sink)
        try:
            completed = await driver.drive()
        finally:
            await follower.stop()
            processes.stop_all()
            with contextlib.suppress(Exception):  # a sink that died is seen below as requests missing
                merge_ledger(ledger, await sink.ledger())
            sink.stop()
            await platforms.stop()
        say("reading back every topic and log")
        results = [r.json() for r in await read_topic(kafka, topics.results)]
        invalid = {
            (r.json()["source"]["partition"], r.json()["source"]["offset"])
            for r in await read_topic(kafka, topics.invalid(topics.conversions))
        }
        found = await scan_for_leaks(bootstrap, prefix, topics, workdir, platform_env)
        expect = expectations(plan, driver.sent_at, driver.rules_changed_at, RULES_SETTLE_S)
        outcome = Outcome(
            results=results,
            invalid_positions=len(invalid),
            leaks=found,
            kills=processes.kills,
            kills_per_process=dict(processes.killed),
            dispatcher_kills=processes.dispatcher_kills,
            sigterms=driver.sigterms,
            unexpected_exits=driver.unexpected_exits,
            peak_rss_mb=processes.peak_rss_mb,
            outage_until=schedule.outage_until,
            started_at=driver.started_at,
            driver_max_loop_lag_s=driver.max_loop_lag_s,
            duration_s=time.monotonic() - started,
            completed=completed,
            events=processes.events,
        )
        report = summarise(plan, expect, ledger, first_sent(plan, driver.sent_at, expect), outcome)
        verdicts = targets(report, options.min_kills)
        with open(options.report_path, "wb") as out:
            out.write(
                orjson.dumps({**report, "targets": {k: v[1] for k, v in verdicts.items()}}, option=orjson.OPT_INDENT_2)
                + b"\n"
            )
        say()
        for line in table(report, verdicts):
            say(line)
        failed = [name for name, (_, ok) in verdicts.items() if not ok]
        say("chaos: PASS" if not failed else f"chaos: FAIL ({', '.join(failed)})")
        if report["after_ack_cases"]:
            say(f"repeats after an answer: {orjson.dumps(report['after_ack_cases']).decode()}")
        if report["leaks"]:
            say(f"leaks: {orjson.dumps(report['leaks']).decode()}")
        say(f"report: {options.report_path}" + ("" if not failed else f"; logs kept in {workdir}"))
        if not failed:
            shutil.rmtree(workdir, ignore_errors=True)
        if not embedded:
            say(f"(topics under {prefix!r} left on {bootstrap})")
        return not failed


def first_sent(plan: Plan, sent_at: list[float], expect: Any) -> dict[str, float]:
    """postback_id -> when the first record that may fire it was sent."""
    first: dict[str, float] = {}
    for version, at in zip(plan.versions, sent_at, strict=True):
        if version is None:
            continue
        for rules in (plan.campaigns, plan.changed):
            for pid in fired_by(version, rules.get(version["campaign_id"], [])):
                first[pid] = min(first.get(pid, at), at)
    return first


async def scan_for_leaks(
    bootstrap: str, prefix: str, topics: Topics, workdir: str, platform_env: dict[str, str]
) -> dict[str, dict[str, int]]:
    """Every topic the service wrote and every log, scanned for personal data and secrets."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        names = sorted(t for t in await admin.list_topics() if t.startswith(prefix))
    finally:
        await admin.close()
    inputs = {topics.conversions, topics.campaign_rules, topics.offer_sources}
    carries_ip = {
        t
        for t in names
        if any(k in t for k in ("postbacks.meta", "postbacks.tiktok", "dispatch-meta", "dispatch-tiktok"))
    }
    carries_token = {t for t in names if any(k in t for k in ("postbacks.s2s", "dispatch-s2s", "dead-letter"))}
    secrets = [
        value
        for raw in platform_env.values()
        if raw.startswith("{")
        for name, value in orjson.loads(raw).items()
        if name != "client_id"
    ]
    found: dict[str, dict[str, int]] = {}
    say(f"scanning {len(set(names) - inputs)} topics and the logs for personal data and secrets")
    for topic in sorted(set(names) - inputs):
        records = await read_topic(KafkaConnection.plaintext(bootstrap), topic)
        for suffix, data in (
            ("", b"\n".join(r.value or b"" for r in records)),
            (" key", b"\n".join(r.key or b"" for r in records)),
        ):
            item = leaks.Scanned(topic + suffix, data, topic in carries_ip, topic in carries_token)
            if hits := leaks.findings(item, secrets):
                found[item.where] = dict(hits)
    for path in sorted(glob.glob(os.path.join(workdir, "*.log"))):
        with open(path, "rb") as log:
            if hits := leaks.findings(leaks.Scanned(os.path.basename(path), log.read()), secrets):
                found[os.path.basename(path)] = dict(hits)
    return found


@dataclass
class Driver:
    bootstrap: str
    topics: Topics
    plan: Plan
    processes: Processes
    faults: FaultSchedule
    follower: ResultsFollower
    options: RunOptions
    sink: RemoteSink
    sent_at: list[float] = field(default_factory=list)
    started_at: float = 0.0
    max_loop_lag_s: float = 0.0  # how late this process's event loop woke: the platform fakes' clock lags as much
    rules_changed_at: float = float("inf")
    sigterms: int = 0
    unexpected_exits: int = 0
    stale_copies: dict[str, str] = field(default_factory=dict)
    background: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def kafka(self) -> KafkaConnection:
        return KafkaConnection.plaintext(self.bootstrap)  # devtools run against a PLAINTEXT broker

    async def drive(self) -> bool:
        """Send the records over `seconds` while the events happen, then wait for every expected result."""
        seconds = self.options.seconds
        start = self.started_at = self.processes.t0 = time.monotonic()
        self.faults.outage_from = start + 0.35 * seconds
        self.faults.outage_until = self.faults.outage_from + self.options.outage_s
        await self.sink.set_outage(self.faults.outage_from, self.faults.outage_until)
        kill_until = seconds + max(30.0, self.options.outage_s)
        events = make_schedule(self.processes.rng, seconds, kill_until, sorted(PROCESSES))
        records = self.plan.records
        per_second = max(1, -(-len(records) // max(1, int(seconds))))
        deadline = start + seconds + max(240.0, seconds)
        next_progress = start + PROGRESS_EVERY
        while True:
            now = time.monotonic()
            due = min(len(records), int((now - start + 1) * per_second))
            if len(self.sent_at) < due:
                await produce(self.kafka, self.topics.conversions, records[len(self.sent_at) : due])
                self.sent_at.extend([time.monotonic()] * (due - len(self.sent_at)))
            while events and now - start >= events[0].at:
                await self.happen(events.pop(0))
            self.unexpected_exits += len(self.processes.restart_exited())
            self.processes.sample_rss()
            if now >= next_progress:
                next_progress = now + PROGRESS_EVERY
                expect = expectations(
                    self.plan,
                    self.sent_at + [now] * (len(records) - len(self.sent_at)),
                    self.rules_changed_at,
                    RULES_SETTLE_S,
                )
                done = len(expect.must.keys() & self.follower.finished)
                if len(self.sent_at) == len(records) and 0 < len(expect.must) - done <= RECHECK_BELOW:
                    # The live follower can stay short of a record the embedded broker has (seen once in
                    # 160,000): the last few are looked for with a full read before anyone waits on them.
                    await self.follower.reread()
                    done = len(expect.must.keys() & self.follower.finished)
                outage = "  OUTAGE" if self.faults.in_outage(now) else ""
                say(
                    f"[{now - start:5.0f}s] sent {len(self.sent_at)}/{len(records)}  finished {done}/{len(expect.must)}"
                    f"  kills {self.processes.kills}{outage}"
                )
                if (
                    len(self.sent_at) == len(records)
                    and done == len(expect.must)
                    and not any(e.action != "kill" for e in events)
                ):
                    return True
                if now > deadline:
                    say(f"deadline reached with {len(expect.must) - done} expected postbacks unfinished")
                    return False
            slept = time.monotonic()
            await asyncio.sleep(0.2)
            self.max_loop_lag_s = max(self.max_loop_lag_s, time.monotonic() - slept - 0.2)

    async def happen(self, event: Event) -> None:
        processes = self.processes
        if event.process in processes.stopping:  # being SIGTERMed (sigterm_soon): left to finish its stop
            return
        if event.action == "kill":
            processes.kill_and_restart(event.process)
        elif event.action == "snapshot":
            processes.sigkill(event.process)
            self.stale_copies[event.process] = processes.snapshot(event.process)
            processes.start(event.process)
            processes.note(f"SIGKILL {event.process}, state copied for a stale restart later, restarted")
        elif event.action in ("stale", "emptied"):
            processes.kill_and_restart(event.process, event.action, self.stale_copies.get(event.process))
        elif event.action == "rules":
            changed = [(c, rule_document(c, entries, self.sink.urls)) for c, entries in self.plan.changed.items()]
            await produce(self.kafka, self.topics.campaign_rules, changed)
            self.rules_changed_at = time.monotonic()
            processes.note(f"rules of {len(changed)} campaigns changed")
        elif event.action == "rebalance_sigterm":
            other = next(n for n in PROCESSES if n.startswith("dispatcher") and n != event.process)
            processes.kill_and_restart(other)  # its return to the group starts a rebalance
            self.background.append(asyncio.create_task(self.sigterm_soon(event.process)))
        say(f"  {processes.events[-1]}")

    async def sigterm_soon(self, name: str) -> None:
        """SIGTERM `name` while the rebalance is under way (the restarted member has joined), off the
        sending loop, and start it again once it has exited."""
        await asyncio.sleep(2.0)
        self.processes.stopping.add(name)  # from now on no kill and no crash restart touches it
        took = await asyncio.to_thread(self.processes.sigterm, name)
        self.sigterms += 1
        self.processes.start(name)
        self.processes.note(f"SIGTERM {name} during the rebalance: exited in {took:.1f}s, restarted")
        say(f"  {self.processes.events[-1]}")
