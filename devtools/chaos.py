"""`make chaos`: the service under crashes, a faulty S2S sink and hostile input, checked against a reference.

On the embedded broker (or KAFKA_BOOTSTRAP_SERVERS, under topics of its own): two workers and two
dispatchers (`dispatch --kind all`) as real subprocesses with RocksDB state, each SIGKILLed at random
every 10-20 s and restarted on its state directory; many campaigns with S2S and Meta entries
(conditional and not); conversions with status updates and exact re-deliveries, and about 5 % hostile
records; an S2S sink answering 30 % 503, some 429 with Retry-After, a small random latency and one
outage of about 20 s. What should fire is computed by a reference model of contract §2 written here
(not the service's matcher); at the end the results are compared with it, a table is printed and
`chaos-report.json` written. Exit status 1 when a target fails.

    python -m devtools.chaos --conversions 5000 --seconds 60 --report chaos-report.json
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
from aiohttp import web

from devtools.demo import DemoPlatforms
from postback_router.embedded_broker import free_loopback_port, kafka_for_local_use
from service.kafka_io import produce, read_topic
from service.settings import load_settings
from service.topics import ensure_topics
from streams.core.postback_ids import postback_id

STATUSES = ("approved", "pending", "declined", "other")
TYPES = ("conversion", "lead", "deposit", "purchase")
OFFER_SOURCES = {"os-pending": "pending", "os-approved": "approved"}
SERVICE_DEFAULT_STATUS = "approved"
HOSTILE_SHARE = 0.05
OUTAGE_SECONDS = 20.0
KILL_EVERY = (10.0, 20.0)
PROGRESS_EVERY = 5.0


def say(text: str = "") -> None:
    print(text, flush=True)


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


# --- the reference model of contract §2 ---------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    id: str
    kind: str  # s2s or meta
    enabled: bool
    conditional: bool
    types: tuple[str, ...] = ()
    statuses: tuple[str, ...] = ()
    min_payout: Decimal | None = None

    def fires(self, status: str, conversion_type: str, payout: Decimal) -> bool:
        if not self.enabled:
            return False
        if not self.conditional:
            return True
        if self.types and conversion_type not in self.types:
            return False
        if self.statuses and status not in self.statuses:
            return False
        return self.min_payout is None or payout >= self.min_payout


def effective_status(version: dict[str, Any]) -> str:
    if version.get("status"):
        return str(version["status"])
    source = version.get("offer_source_id")
    if source in OFFER_SOURCES:
        return OFFER_SOURCES[source]
    return SERVICE_DEFAULT_STATUS


def expected_for(version: dict[str, Any], entries: list[Entry]) -> set[tuple[str, str, str, str]]:
    """(conversion_id, entry id, effective status, type) of every entry this version of a conversion fires."""
    status = effective_status(version)
    conversion_type = version.get("type") or "conversion"
    payout = Decimal(str(version.get("payout") or "0"))
    return {
        (version["conversion_id"], entry.id, status, conversion_type)
        for entry in entries
        if entry.fires(status, conversion_type, payout)
    }


# --- campaigns and conversions -------------------------------------------------------------------------


def make_campaigns(rng: random.Random, count: int, sink_url: str) -> dict[str, list[Entry]]:
    campaigns: dict[str, list[Entry]] = {}
    for c in range(count):
        entries: list[Entry] = []
        for e in range(rng.randint(1, 3)):
            entries.append(random_entry(rng, f"c{c}-s2s{e}", "s2s"))
        if rng.random() < 0.5:
            entries.append(random_entry(rng, f"c{c}-meta", "meta"))
        campaigns[f"camp-{c}"] = entries
    return campaigns


def random_entry(rng: random.Random, entry_id: str, kind: str) -> Entry:
    enabled = rng.random() > 0.1
    if rng.random() < 0.4:
        return Entry(entry_id, kind, enabled, conditional=False)
    types = tuple(rng.sample(TYPES, rng.randint(1, 2))) if rng.random() < 0.5 else ()
    statuses = tuple(rng.sample(STATUSES, rng.randint(1, 2))) if rng.random() < 0.6 else ()
    min_payout = Decimal(rng.choice(("1", "5", "20"))) if rng.random() < 0.3 or not (types or statuses) else None
    return Entry(entry_id, kind, enabled, True, types, statuses, min_payout)


def rule_document(campaign_id: str, entries: list[Entry], sink_url: str) -> dict[str, Any]:
    postbacks: list[dict[str, Any]] = []
    for entry in entries:
        body: dict[str, Any] = {"id": entry.id, "kind": entry.kind}
        if entry.kind == "s2s":
            # the sink recognises each postback by (conversion, entry, status, type): its id's inputs
            body["url"] = f"{sink_url}/s2s/{entry.id}?cid={{conversion_id}}&st={{status}}&ty={{type}}&p={{payout}}"
        else:
            body.update(
                pixel_id="731000000000001",
                credentials="META_CASINO",
                event_names={"deposit": "Purchase", "lead": "Lead", "purchase": "Purchase"},
            )
        if not entry.enabled:
            body["enabled"] = False
        if entry.conditional:
            condition: dict[str, Any] = {"enabled": True}
            if entry.types:
                condition["types"] = list(entry.types)
            if entry.statuses:
                condition["statuses"] = list(entry.statuses)
            if entry.min_payout is not None:
                condition["min_payout"] = str(entry.min_payout)
            body["conditional"] = condition
        postbacks.append(body)
    return {"campaign_id": campaign_id, "postbacks": postbacks}


def conversion_versions(rng: random.Random, n: int, campaigns: list[str]) -> list[dict[str, Any]]:
    """Every version of conversion n in the order it is sent: first, maybe an update, maybe a re-delivery."""
    now = datetime.now(UTC).replace(microsecond=0)
    cid = f"cv-{n}"
    first: dict[str, Any] = {
        "conversion_id": cid,
        "click_id": f"click-{cid}",
        "campaign_id": rng.choice(campaigns),
        "occurred_at": iso(now - timedelta(minutes=rng.randint(1, 600))),
        "type": rng.choice(TYPES),
        "payout": rng.choice(("0", "2.5", "7", "19.99", "40")),
        "click_ids": {"external_id": f"ext-{cid}", "fbc": f"fb.1.1700000000.{cid}"},
        "user": {"email": f"{cid}@players.example", "ip": "203.0.113.7", "user_agent": "Mozilla/5.0"},
    }
    roll = rng.random()
    if roll < 0.2:
        first["offer_source_id"] = rng.choice(list(OFFER_SOURCES))
    elif roll < 0.3:
        pass  # no status, no offer source: the service default
    else:
        first["status"] = rng.choice(("pending", "pending", "approved", "declined"))
    versions = [first]
    if rng.random() < 0.3:
        update = {**first, "status": "approved"}
        if rng.random() < 0.3:
            update["type"] = "purchase"
        versions.append(update)
    if rng.random() < 0.15:
        versions.append(dict(versions[-1]))  # an exact re-delivery
    return versions


def hostile_record(rng: random.Random, n: int, campaign: str) -> tuple[str, bytes | str, bool, str]:
    """(key, value, expected on conversions.invalid, kind) of a hostile record."""
    hid = f"hx-{n}"
    base = {
        "conversion_id": hid,
        "click_id": "x",
        "campaign_id": campaign,
        "occurred_at": iso(datetime.now(UTC).replace(microsecond=0)),
    }
    kind = rng.choice(("not_json", "not_utf8", "deep", "huge_number", "unknown_campaign", "key_mismatch"))
    if kind == "not_json":
        return hid, f"conversion_id={hid}&payout=5&email=a@b.example", True, kind
    if kind == "not_utf8":
        return hid, b'{"conversion_id": "' + hid.encode() + b'\xff\xfe\x80"}', True, kind
    if kind == "deep":
        return hid, "[" * 5000 + "]" * 5000, True, kind
    if kind == "huge_number":
        return hid, orjson.dumps(base)[:-1] + b', "payout": 1e400}', True, kind
    if kind == "unknown_campaign":
        return hid, orjson.dumps({**base, "campaign_id": "no-such-campaign"}), False, kind
    return f"other-{hid}", orjson.dumps(base), True, kind


# --- the faulty S2S sink --------------------------------------------------------------------------------


@dataclass
class ChaosSink:
    rng: random.Random
    outage_from: float = float("inf")
    outage_until: float = float("-inf")
    requests: int = 0
    answered: Counter[str] = field(default_factory=Counter)  # status class -> count
    ok_per_postback: Counter[tuple[str, str, str, str]] = field(default_factory=Counter)
    port: int = 0
    _runner: web.AppRunner | None = None

    async def start(self) -> str:
        app = web.Application()
        app.router.add_route("*", "/s2s/{entry}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        self.port = free_loopback_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        await asyncio.sleep(self.rng.uniform(0, 0.05))
        now = time.monotonic()
        roll = self.rng.random()
        headers: dict[str, str] = {}
        if self.outage_from <= now < self.outage_until or roll < 0.30:
            status = 503
        elif roll < 0.35:
            status, headers = 429, {"Retry-After": "1"}
        else:
            status = 200
        self.answered[str(status)] += 1
        if status == 200:
            q = request.query
            self.ok_per_postback[(q.get("cid", ""), request.match_info["entry"], q.get("st", ""), q.get("ty", ""))] += 1
        return web.Response(status=status, text="OK" if status == 200 else "failing on purpose", headers=headers)


# --- processes ------------------------------------------------------------------------------------------


@dataclass
class Processes:
    env: dict[str, str]
    workdir: str
    rng: random.Random
    commands: dict[str, tuple[str, ...]]
    running: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    kills: int = 0
    killed: Counter[str] = field(default_factory=Counter)

    def start(self, name: str) -> None:
        state_dir = os.path.join(self.workdir, "state", name)
        os.makedirs(state_dir, exist_ok=True)
        env = {**self.env, "STATE_DIR": state_dir, "HTTP_HOST": "127.0.0.1", "HTTP_PORT": str(free_loopback_port())}
        with open(os.path.join(self.workdir, f"{name}.log"), "ab") as log:
            self.running[name] = subprocess.Popen(
                [sys.executable, "-m", "postback_router.cli", *self.commands[name]],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def start_all(self) -> None:
        for name in self.commands:
            self.start(name)

    def kill_one(self) -> str:
        name = self.rng.choice(sorted(self.commands))
        process = self.running[name]
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait()
        self.kills += 1
        self.killed[name] += 1
        self.start(name)
        return name

    def restart_exited(self) -> list[str]:
        """Processes that exited on their own (a crash) are restarted too, and named in the progress line."""
        exited = [name for name, process in self.running.items() if process.poll() is not None]
        for name in exited:
            self.start(name)
        return exited

    def stop_all(self) -> None:
        for process in self.running.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.running.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# --- the run --------------------------------------------------------------------------------------------


@dataclass
class Plan:
    records: list[tuple[str, bytes | str | dict[str, Any]]]  # (key, value) in sending order
    expected: dict[str, tuple[str, str, str, str]]  # postback_id -> (conversion, entry, status, type)
    s2s_entries: set[str]
    conversions: int
    invalid: int
    hostile: Counter[str]


def make_plan(rng: random.Random, conversions: int, campaigns: dict[str, list[Entry]]) -> Plan:
    names = sorted(campaigns)
    # versions of one conversion are spread over the stream (updates come later) but stay in order
    slots: list[tuple[float, int, str, bytes | str | dict[str, Any]]] = []
    expected: dict[str, tuple[str, str, str, str]] = {}
    for n in range(conversions):
        versions = conversion_versions(rng, n, names)
        at = rng.random()
        for i, version in enumerate(versions):
            slots.append((at, i, version["conversion_id"], version))
            at = min(1.0, at + rng.uniform(0.01, 0.2))
            for fired in expected_for(version, campaigns[version["campaign_id"]]):
                expected[postback_id(*fired)] = fired
    hostile: Counter[str] = Counter()
    invalid = 0
    hostile_count = round(len(slots) * HOSTILE_SHARE / (1 - HOSTILE_SHARE))
    for n in range(hostile_count):
        key, value, is_invalid, kind = hostile_record(rng, n, rng.choice(names))
        hostile[kind] += 1
        invalid += is_invalid
        slots.append((rng.random(), 0, key, value))
    slots.sort(key=lambda slot: (slot[0], slot[1]))
    s2s = {entry.id for entries in campaigns.values() for entry in entries if entry.kind == "s2s"}
    return Plan([(key, value) for _, _, key, value in slots], expected, s2s, conversions, invalid, hostile)


async def unique_invalid(bootstrap: str, topic: str) -> int:
    """Records on conversions.invalid, counted once per source position (a batch repeated after a crash
    writes its invalid copies again)."""
    positions = set()
    for record in await read_topic(bootstrap, topic):
        source = record.json()["source"]
        positions.add((source["partition"], source["offset"]))
    return len(positions)


async def run_chaos(conversions: int, seconds: float, report_path: str, seed: int) -> bool:
    started = time.monotonic()
    rng = random.Random(seed)
    with kafka_for_local_use() as bootstrap:
        embedded = not os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        prefix = f"chaos-{uuid.uuid4().hex[:6]}."
        workdir = tempfile.mkdtemp(prefix="postback-router-chaos-")
        sink = ChaosSink(random.Random(seed + 1))
        sink_url = await sink.start()
        platforms = DemoPlatforms()
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
            "LOG_LEVEL": "WARNING",
            **await platforms.start(),
        }
        settings = load_settings(env)
        topics = settings.topics
        await ensure_topics(settings)
        campaigns = make_campaigns(rng, 60, sink_url)
        plan = make_plan(rng, conversions, campaigns)
        await produce(
            bootstrap,
            topics.offer_sources,
            [(k, {"offer_source_id": k, "default_status": v}) for k, v in OFFER_SOURCES.items()],
        )
        await produce(
            bootstrap, topics.campaign_rules, [(c, rule_document(c, e, sink_url)) for c, e in campaigns.items()]
        )
        processes = Processes(
            env,
            workdir,
            rng,
            {
                "worker-1": ("worker",),
                "worker-2": ("worker",),
                "dispatcher-1": ("dispatch", "--kind", "all"),
                "dispatcher-2": ("dispatch", "--kind", "all"),
            },
        )
        say(f"Kafka: {bootstrap}; topics under {prefix!r}; logs and state in {workdir}")
        say(
            f"{len(campaigns)} campaigns, {plan.conversions} conversions in {len(plan.records)} records "
            f"({sum(plan.hostile.values())} hostile: {dict(plan.hostile)}), {len(plan.expected)} postbacks expected"
        )
        processes.start_all()
        try:
            ok = await drive(bootstrap, topics.conversions, topics.results, plan, processes, sink, seconds)
            results = [r.json() for r in await read_topic(bootstrap, topics.results)]
            invalid_captured = await unique_invalid(bootstrap, topics.invalid(topics.conversions))
        finally:
            processes.stop_all()
            await sink.stop()
            await platforms.stop()
        duration = time.monotonic() - started
        report = summarise(plan, results, invalid_captured, sink, processes, duration, ok)
        with open(report_path, "wb") as out:
            out.write(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
        passed = print_table(report)
        say(f"report written to {report_path}; logs kept in {workdir}" if not passed else f"report: {report_path}")
        if passed:
            shutil.rmtree(workdir, ignore_errors=True)
        if not embedded:
            say(f"(topics under {prefix!r} left on {bootstrap})")
        return passed


async def drive(
    bootstrap: str,
    conversions_topic: str,
    results_topic: str,
    plan: Plan,
    processes: Processes,
    sink: ChaosSink,
    seconds: float,
) -> bool:
    """Send the records over `seconds` while killing processes, then wait for every expected result."""
    loop_started = time.monotonic()
    sink.outage_from = loop_started + seconds * 0.4
    sink.outage_until = sink.outage_from + OUTAGE_SECONDS
    next_kill = loop_started + processes.rng.uniform(*KILL_EVERY)
    next_progress = loop_started + PROGRESS_EVERY
    chunks = max(1, int(seconds))
    per_chunk = -(-len(plan.records) // chunks)
    sent = 0
    deadline = loop_started + seconds + 180.0
    seen: set[str] = set()
    while True:
        now = time.monotonic()
        if sent < len(plan.records) and now >= loop_started + (sent / per_chunk):
            batch = plan.records[sent : sent + per_chunk]
            await produce(bootstrap, conversions_topic, batch)
            sent += len(batch)
        sending = sent < len(plan.records)
        if now >= next_kill:  # all the way through the drain too
            name = processes.kill_one()
            say(f"  SIGKILL {name} (kill {processes.kills}), restarted")
            next_kill = now + processes.rng.uniform(*KILL_EVERY)
        crashed = processes.restart_exited()
        if crashed:
            say(f"  exited on their own, restarted: {', '.join(crashed)}")
        if now >= next_progress:
            next_progress = now + PROGRESS_EVERY
            seen = {r.json()["postback_id"] for r in await read_topic(bootstrap, results_topic)}
            done = len(seen & plan.expected.keys())
            outage = " OUTAGE" if sink.outage_from <= now < sink.outage_until else ""
            say(
                f"[{now - loop_started:5.0f}s] sent {sent}/{len(plan.records)}  results {done}/{len(plan.expected)}"
                f"  sink requests {sink.requests} {dict(sink.answered)}  kills {processes.kills}{outage}"
            )
            if not sending and plan.expected.keys() <= seen:
                return True
            if now > deadline:
                say(f"deadline reached with {len(plan.expected) - done} expected postbacks without a result")
                return False
        await asyncio.sleep(0.2)


def summarise(
    plan: Plan,
    results: list[dict[str, Any]],
    invalid_captured: int,
    sink: ChaosSink,
    processes: Processes,
    duration: float,
    completed: bool,
) -> dict[str, Any]:
    per_postback = Counter(r["postback_id"] for r in results)
    outcomes = Counter(r["result"] for r in results)
    delivered = {r["postback_id"] for r in results if r["result"] == "delivered"}
    finished = {r["postback_id"] for r in results if r["result"] in ("delivered", "rejected", "dead_lettered")}
    duplicates_unkeyed = sum(n - 1 for n in sink.ok_per_postback.values() if n > 1)
    unexpected = set(per_postback) - plan.expected.keys()
    return {
        "conversions_sent": plan.conversions,
        "records_sent": len(plan.records),
        "invalid_sent": plan.invalid,
        "invalid_captured": invalid_captured,
        "hostile_sent": dict(plan.hostile),
        "expected_postbacks": len(plan.expected),
        "delivered_unique": len(delivered & plan.expected.keys()),
        "rejected": outcomes["rejected"],
        "dead_lettered": outcomes["dead_lettered"],
        "lost": len(plan.expected.keys() - finished),
        "unexpected_postbacks": len(unexpected),
        "results_records": len(results),
        "postbacks_with_two_results": sum(1 for n in per_postback.values() if n > 1),
        "duplicates_unkeyed": duplicates_unkeyed,
        "sink_requests": sink.requests,
        "sink_answers": dict(sink.answered),
        "kills": processes.kills,
        "kills_per_process": dict(processes.killed),
        "completed_before_deadline": completed,
        "duration_s": round(duration, 1),
    }


def print_table(report: dict[str, Any]) -> bool:
    targets = {
        "lost": report["lost"] == 0,
        "postbacks_with_two_results": report["postbacks_with_two_results"] == 0,
        "invalid_captured": report["invalid_captured"] == report["invalid_sent"],
        "duplicates_unkeyed": report["duplicates_unkeyed"] <= report["kills"],
        "unexpected_postbacks": report["unexpected_postbacks"] == 0,
    }
    wanted = {
        "lost": "= 0",
        "postbacks_with_two_results": "= 0",
        "invalid_captured": f"= invalid_sent ({report['invalid_sent']})",
        "duplicates_unkeyed": f"<= kills ({report['kills']})",
        "unexpected_postbacks": "= 0",
    }
    say()
    say(f"{'measure':<28} {'value':>12}   target")
    say("-" * 72)
    for name, value in report.items():
        shown = value if not isinstance(value, dict) else orjson.dumps(value).decode()
        verdict = f"{wanted[name]:<28} {'PASS' if targets[name] else 'FAIL'}" if name in targets else ""
        say(f"{name:<28} {shown!s:>12}   {verdict}")
    say("-" * 72)
    passed = all(targets.values())
    say("chaos: PASS" if passed else "chaos: FAIL (" + ", ".join(n for n, ok in targets.items() if not ok) + ")")
    return passed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversions", type=int, default=5000, help="conversions (default 5000)")
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds over which they are sent (default 60)")
    parser.add_argument("--report", default="chaos-report.json", help="where the JSON report goes")
    parser.add_argument("--seed", type=int, default=int(time.time()), help="random seed (default: the time)")
    args = parser.parse_args()
    say(f"chaos: seed {args.seed}")
    passed = asyncio.run(run_chaos(args.conversions, args.seconds, args.report, args.seed))
    raise SystemExit(0 if passed else 1)


if __name__ == "__main__":
    main()
