"""`memory`: the peak resident memory of a worker holding `Sizes.memory_campaigns` campaigns and
`memory_keys` fired-state keys, with the memory store and with RocksDB, and the time to recover the campaigns.

Four `postback-router worker` runs, one after the other, each measured once (absolute figures, no baseline
to pair with; the first run is the reference for what the process costs by itself):

1. `empty`: no rules, no fired-state;
2. `campaigns`: the campaigns written (3 entries each), no fired-state: `recovery_s` is the time from the
   process's start to its log line "rules and offer sources recovered", `ready_s` to /readyz answering 200;
3. `memory_store`, 4. `rocksdb`: the campaigns and `memory_keys` fired-state records in the changelog
   (1-3 postback ids each), STATE_STORE=memory:// then rocksdb:// on an empty STATE_DIR: both restore
   every key. The peak is VmHWM once the restore has finished (its log lines count the records replayed).

Each run also notes when /readyz first answered 200 against when the fired-state restore finished:
`ready_before_restored_s` above 0 means /readyz said ready while the state was still being restored.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime

import aiohttp
import orjson

from devtools.bench.common import (
    PARTITIONS,
    START_TIMEOUT_SECONDS,
    Child,
    Context,
    HarnessError,
    SectionResult,
    create_topics,
    http_get,
    memory_mb,
    say,
    service_env,
    start_service,
    write_records,
)
from devtools.bench.report import summarize
from devtools.bench.workload import OFFER_SOURCES, campaign_documents
from postback_router.embedded_broker import kafka_for_local_use
from streams.core.fired_record import FiredRecord, encode_fired_record

PREFIX = "bench-memory."
KEYS_APP_ID = "bench-memory-keys"
RECOVERED_MESSAGE = "rules and offer sources recovered"
_RESTORED = re.compile(r"restored for partitions \[[^\]]*\] \((\d+) changelog records replayed\)")
RESTORE_RATE_FLOOR = 5_000  # keys per second below which a restore counts as stuck (a harness error)


# --- the worker's log (pure) ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LogLine:
    at: float  # unix seconds, from the line's `ts`
    message: str


def parse_log_lines(lines: Iterable[str]) -> Iterator[LogLine]:
    """The JSON log lines (LOG_FORMAT=json) among `lines`, with their time; anything else is skipped."""
    for line in lines:
        if not line.startswith("{"):
            continue
        try:
            record = orjson.loads(line)
            yield LogLine(datetime.fromisoformat(record["ts"]).timestamp(), str(record["message"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            continue


@dataclass
class LogProgress:
    """What a worker's log has said so far: when its views were recovered, how many fired-state records its
    restores replayed, and when that reached `keys`."""

    keys: int
    recovered_at: float | None = None
    replayed: int = 0
    restored_at: float | None = None

    def feed(self, lines: Iterable[LogLine]) -> None:
        for line in lines:
            if self.recovered_at is None and line.message.startswith(RECOVERED_MESSAGE):
                self.recovered_at = line.at
            match = _RESTORED.search(line.message)
            if match:
                self.replayed += int(match.group(1))
                if self.restored_at is None and self.replayed >= self.keys:
                    self.restored_at = line.at

    @property
    def done(self) -> bool:
        return self.recovered_at is not None and (self.keys == 0 or self.restored_at is not None)


# --- the runs -------------------------------------------------------------------------------------------


@dataclass
class WorkerMemory:
    peak_mb: float
    rss_mb: float
    recovery_s: float
    ready_s: float
    restore_s: float | None
    ready_before_restored_s: float | None
    readyz: list[tuple[float, int]] = field(default_factory=list)  # (seconds since start, status) at each change


class _LogTail:
    def __init__(self, path: str) -> None:
        self._path = path
        self._offset = 0
        self._partial = b""

    def new_lines(self) -> list[str]:
        with open(self._path, "rb") as log:
            log.seek(self._offset)
            data = log.read()
        self._offset += len(data)
        chunks = (self._partial + data).split(b"\n")
        self._partial = chunks.pop()
        return [chunk.decode("utf-8", errors="replace") for chunk in chunks]


async def run(ctx: Context) -> SectionResult:
    sizes = ctx.sizes
    runs: dict[str, WorkerMemory] = {}
    with kafka_for_local_use() as bootstrap:
        settings = await create_topics(bootstrap, PREFIX, KEYS_APP_ID)
        topics = settings.topics
        await write_records(
            bootstrap,
            ((topics.offer_sources, d["offer_source_id"].encode(), orjson.dumps(d), None) for d in OFFER_SOURCES),
        )
        async with aiohttp.ClientSession() as session:
            runs["empty"] = await _measure(ctx, session, bootstrap, "empty", "memory://", 0)
            started = time.monotonic()
            docs = campaign_documents(sizes.memory_campaigns)
            await write_records(
                bootstrap, ((topics.campaign_rules, d["campaign_id"].encode(), orjson.dumps(d), None) for d in docs)
            )
            say(f"memory: {len(docs):,} campaigns written in {time.monotonic() - started:.1f}s")
            runs["campaigns"] = await _measure(ctx, session, bootstrap, "campaigns", "memory://", 0)
            started = time.monotonic()
            written = await write_records(bootstrap, _fired_state(settings.fired_state_changelog, sizes.memory_keys))
            say(f"memory: {written:,} fired-state records written in {time.monotonic() - started:.1f}s")
            runs["memory_store"] = await _measure(ctx, session, bootstrap, "memory_store", "memory://", written)
            runs["rocksdb"] = await _measure(ctx, session, bootstrap, "rocksdb", "rocksdb://", written)
    result = SectionResult()
    figures = result.figures
    figures["peak_rss_mb_memory_store"] = summarize([runs["memory_store"].peak_mb])
    figures["peak_rss_mb_rocksdb"] = summarize([runs["rocksdb"].peak_mb])
    figures["peak_rss_mb_campaigns_only"] = summarize([runs["campaigns"].peak_mb])
    figures["peak_rss_mb_empty"] = summarize([runs["empty"].peak_mb])
    figures["recovery_s"] = summarize([runs["campaigns"].recovery_s])
    figures["recovery_s_empty"] = summarize([runs["empty"].recovery_s])
    figures["ready_s"] = summarize([runs["campaigns"].ready_s])
    for store in ("memory_store", "rocksdb"):
        restore = runs[store].restore_s
        figures[f"restore_s_{store}"] = summarize([restore if restore is not None else float("nan")])
    early = [runs[s].ready_before_restored_s for s in ("memory_store", "rocksdb")]
    figures["ready_before_restored_s"] = summarize([max((e for e in early if e is not None), default=float("nan"))])
    result.details = {
        "campaigns": sizes.memory_campaigns,
        "fired_state_keys": sizes.memory_keys,
        "runs": {
            name: {
                "peak_mb": round(m.peak_mb, 1),
                "rss_mb": round(m.rss_mb, 1),
                "recovery_s": round(m.recovery_s, 2),
                "ready_s": round(m.ready_s, 2),
                "restore_s": None if m.restore_s is None else round(m.restore_s, 2),
                "ready_before_restored_s": (
                    None if m.ready_before_restored_s is None else round(m.ready_before_restored_s, 2)
                ),
                "readyz_changes": [[round(t, 2), status] for t, status in m.readyz],
            }
            for name, m in runs.items()
        },
    }
    return result


def _fired_state(topic: str, keys: int) -> Iterator[tuple[str, bytes, bytes, int]]:
    """`keys` fired-state changelog records as the worker writes them, spread over the partitions."""
    now = int(time.time())
    for i in range(keys):
        ids = frozenset(f"{i:08x}-{n:04x}-5000-8000-{i * 7 + n:012x}" for n in range(1 + i % 3))
        partition = i % PARTITIONS
        yield topic, f"cv-{i:09d}".encode(), encode_fired_record(FiredRecord(now, partition, ids)), partition


async def _measure(
    ctx: Context, session: aiohttp.ClientSession, bootstrap: str, name: str, store: str, keys: int
) -> WorkerMemory:
    app_id = KEYS_APP_ID if keys else f"bench-memory-{name}"
    env = service_env(
        bootstrap, PREFIX, app_id, os.path.join(ctx.workdir, "state", f"memory-{name}"), STATE_STORE=store
    )
    child = await start_service(f"memory-{name}", ["worker"], env, ctx.workdir)
    try:
        measured = await _watch(child, session, keys)
    finally:
        await child.stop()
    restore = "" if measured.restore_s is None or not keys else f", {keys:,} keys restored at {measured.restore_s:.1f}s"
    early = measured.ready_before_restored_s
    say(
        f"memory: {name:<13} peak {measured.peak_mb:6.0f} MB (now {measured.rss_mb:.0f} MB); views recovered at "
        f"{measured.recovery_s:.1f}s, /readyz 200 at {measured.ready_s:.1f}s{restore}"
        + (f"; /readyz said ready {early:.1f}s before the restore finished" if early is not None and early > 0 else "")
    )
    return measured


async def _watch(child: Child, session: aiohttp.ClientSession, keys: int) -> WorkerMemory:
    """Until the views are recovered, the keys restored and /readyz answers 200; then the process's memory."""
    url = f"http://127.0.0.1:{child.http_port}/readyz"
    tail = _LogTail(child.log_path)
    progress = LogProgress(keys)
    ready_at: float | None = None
    changes: list[tuple[float, int]] = []
    deadline = time.monotonic() + START_TIMEOUT_SECONDS + keys / RESTORE_RATE_FLOOR
    while True:
        status, _ = await http_get(session, url)
        now = time.time()
        if not changes or changes[-1][1] != status:
            changes.append((now - child.started_at, status))
        if status == 200 and ready_at is None:
            ready_at = now
        progress.feed(parse_log_lines(tail.new_lines()))
        if progress.done and status == 200:
            break
        child.check_alive()
        if time.monotonic() > deadline:
            raise HarnessError(
                f"{child.name}: not done in time (views recovered: {progress.recovered_at is not None}, "
                f"{progress.replayed:,} of {keys:,} keys replayed, /readyz {status}); see {child.log_path}"
            )
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)  # what the restore left behind settles (a batch of garbage, the store's buffers)
    memory = memory_mb(child.pid)
    assert ready_at is not None and progress.recovered_at is not None
    restored_at = progress.restored_at
    return WorkerMemory(
        peak_mb=memory.get("VmHWM", float("nan")),
        rss_mb=memory.get("VmRSS", float("nan")),
        recovery_s=progress.recovered_at - child.started_at,
        ready_s=ready_at - child.started_at,
        restore_s=None if restored_at is None else restored_at - child.started_at,
        ready_before_restored_s=None if restored_at is None else restored_at - ready_at,
        readyz=changes,
    )
