"""What every section of `make bench` shares: sizes, progress lines, processes and their CPU and memory,
readiness and metrics of the service's processes, and writing records to Kafka fast.

A measured process is always a process of its own (the service's `postback-router` commands, or one of the
baselines in this package run as `python -m devtools.bench.<module>`), so its CPU time is read from
/proc/<pid>/stat and nothing of the harness (producers, sinks, fakes) counts against it.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

import aiohttp
from aiokafka import AIOKafkaProducer

from devtools.bench.report import Sample, Summary
from postback_router.embedded_broker import free_loopback_port
from service.kafka_io import Outgoing, send_all
from service.settings import Settings, load_settings
from service.topics import ensure_topics

PROGRESS_PREFIX = "BENCH-PROGRESS "
SAMPLE_SECONDS = 0.1  # how often a measured process is looked at ...
METRICS_SAMPLE_SECONDS = 0.25  # ... or its /metrics read (which costs it CPU)
START_TIMEOUT_SECONDS = 120.0  # a process that has done nothing by then is stuck: a harness error
STOP_TIMEOUT_SECONDS = 20.0
# The consumer-group settings the tests and the demo use on the embedded broker (docs/embedded-broker.md:
# a join waits about half the session timeout), for the service and the baselines alike.
SESSION_TIMEOUT_MS = 6000
HEARTBEAT_INTERVAL_MS = 1000
PARTITIONS = 8  # TOPIC_PARTITIONS, the service's default

_STARTED = time.monotonic()
# The repository's root: the baselines run as `python -m devtools.bench.<module>`, and devtools is not installed.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# Set to a directory, every service process runs under cProfile and leaves <name>.prof there (read them
# with `python -m pstats`); its figures are then the profiled ones, slower, for finding where time goes.
PROFILE_DIR_ENV = "BENCH_PROFILE_DIR"


class HarnessError(RuntimeError):
    """The benchmark itself could not measure (a process died, never started, a broker error): exit non-zero."""


def report_progress(count: int) -> None:
    """A baseline's count of work done, for its harness: straight to file descriptor 1, since Faust replaces
    sys.stdout with a logger."""
    os.write(1, f"{PROGRESS_PREFIX}{count}\n".encode())


def say(text: str = "") -> None:
    print(f"[bench {time.monotonic() - _STARTED:6.1f}s] {text}" if text else "", flush=True)


@dataclass(frozen=True)
class Sizes:
    """How much each section does; `--quick` is QUICK, the issue's sizes are FULL."""

    matcher_conversions: int
    matcher_campaigns: int
    run_seconds: float  # a throughput run stops measuring after this long busy (slow baselines do not finish)
    faust_naive_run_seconds: float
    s2s_postbacks: int
    s2s_destinations: int
    batch_rows: int
    latency_rate: int
    latency_seconds: int
    latency_drain_seconds: float
    memory_campaigns: int
    memory_keys: int


FULL = Sizes(
    matcher_conversions=200_000,
    matcher_campaigns=10_000,
    run_seconds=30.0,
    faust_naive_run_seconds=25.0,
    s2s_postbacks=20_000,
    s2s_destinations=20,
    batch_rows=15_000,
    latency_rate=1000,
    latency_seconds=60,
    latency_drain_seconds=8.0,
    memory_campaigns=100_000,
    memory_keys=1_000_000,
)
QUICK = Sizes(
    matcher_conversions=60_000,
    matcher_campaigns=2_000,
    run_seconds=5.0,
    faust_naive_run_seconds=4.0,
    s2s_postbacks=10_000,
    s2s_destinations=20,
    batch_rows=6_000,
    latency_rate=1000,
    latency_seconds=8,
    latency_drain_seconds=5.0,
    memory_campaigns=10_000,
    memory_keys=50_000,
)


# --- a process's CPU and memory --------------------------------------------------------------------------

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid` (every thread) from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
        text = stat.read()
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) ": fields from the 3rd on
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime: the 14th and 15th


def memory_mb(pid: int) -> dict[str, float]:
    """VmRSS (resident now) and VmHWM (the peak resident set) of `pid`, in MB (10^6 bytes)."""
    found: dict[str, float] = {}
    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
        for line in status:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                found[name] = int(rest.split()[0]) * 1024 / 1e6
    return found


# --- processes -----------------------------------------------------------------------------------------


@dataclass
class Child:
    """A measured process; its output goes to `log_path`, except `BENCH-PROGRESS <n>` lines on stdout (the
    baselines' count of work done), which are kept in `count`."""

    name: str
    process: asyncio.subprocess.Process
    log_path: str
    started_at: float  # time.time() just before it was spawned (log lines carry wall-clock times)
    http_port: int = 0
    count: int = 0
    _log: IO[bytes] | None = None
    _reader: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process.returncode is None

    def check_alive(self) -> None:
        if not self.running:
            raise HarnessError(f"{self.name} exited with {self.process.returncode}; see {self.log_path}")

    async def _read_progress(self) -> None:
        stream = self.process.stdout
        assert stream is not None and self._log is not None
        while line := await stream.readline():
            if line.startswith(PROGRESS_PREFIX.encode()):
                with contextlib.suppress(ValueError):
                    self.count = int(line[len(PROGRESS_PREFIX) :])
            else:
                self._log.write(line)

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT_SECONDS."""
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), STOP_TIMEOUT_SECONDS)
            except TimeoutError:
                say(f"{self.name} did not stop within {STOP_TIMEOUT_SECONDS:.0f}s: killed")
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
                await self.process.wait()
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader, 5)
        if self._log is not None:
            self._log.close()
            self._log = None


async def start_child(name: str, args: list[str], env: Mapping[str, str], workdir: str, *, http_port: int = 0) -> Child:
    """`python <args>` with `env`, logging to <workdir>/<name>.log."""
    log_path = os.path.join(workdir, f"{name}.log")
    python_path = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH", "")) if p)
    log = open(log_path, "ab")  # noqa: SIM115 - closed by Child.stop
    started_at = time.time()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        env={**env, "PYTHONPATH": python_path},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=log,
    )
    child = Child(name, process, log_path, started_at, http_port, _log=log)
    child._reader = asyncio.create_task(child._read_progress(), name=f"progress:{name}")
    return child


async def start_service(name: str, command: list[str], env: Mapping[str, str], workdir: str) -> Child:
    """`postback-router <command>` (as `python -m postback_router.cli`), its ops HTTP server on a free port."""
    port = free_loopback_port()
    full_env = {**env, "HTTP_HOST": "127.0.0.1", "HTTP_PORT": str(port)}
    profile_dir = os.environ.get(PROFILE_DIR_ENV, "").strip()
    profiler = ["-m", "cProfile", "-o", os.path.join(profile_dir, f"{name}.prof")] if profile_dir else []
    args = [*profiler, "-m", "postback_router.cli", *command]
    return await start_child(name, args, full_env, workdir, http_port=port)


def service_env(bootstrap: str, prefix: str, app_id: str, state_dir: str, **extra: str) -> dict[str, str]:
    """The environment of a service process on the bench's topics (`prefix`) as consumer group `app_id`."""
    return {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "TOPIC_PREFIX": prefix,
        "APP_ID": app_id,
        "STATE_DIR": state_dir,
        "TOPIC_PARTITIONS": str(PARTITIONS),
        "KAFKA_SESSION_TIMEOUT": f"{SESSION_TIMEOUT_MS}ms",
        "KAFKA_HEARTBEAT_INTERVAL": f"{HEARTBEAT_INTERVAL_MS}ms",
        # the S2S sink and the platform fakes listen on loopback
        "POSTBACK_ALLOW_PRIVATE_TARGETS": "1",
        "LOG_FORMAT": "json",
        **extra,
    }


async def create_topics(bootstrap: str, prefix: str, app_id: str = "bench") -> Settings:
    """The service's topics under `prefix` (and the changelogs of `app_id`), as the service creates them."""
    settings = load_settings(
        {
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "TOPIC_PREFIX": prefix,
            "APP_ID": app_id,
            "TOPIC_PARTITIONS": str(PARTITIONS),
        }
    )
    await ensure_topics(settings)
    return settings


# --- the service's ops endpoints ---------------------------------------------------------------------------


async def http_get(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    """(status, body); (0, error) when nothing answers."""
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as response:
            return response.status, await response.text()
    except (aiohttp.ClientError, TimeoutError) as exc:
        return 0, f"{type(exc).__name__}: {exc}"


def metric_total(text: str, name: str) -> float:
    """The sum of every series of metric `name` in a Prometheus text exposition (0 when absent)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " "):
            with contextlib.suppress(ValueError, IndexError):
                total += float(line.rsplit(" ", 1)[1])
    return total


async def wait_ready(session: aiohttp.ClientSession, child: Child, timeout: float = START_TIMEOUT_SECONDS) -> float:
    """Poll /readyz every 0.1 s until it answers 200; the wall-clock time it first did."""
    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{child.http_port}/readyz"
    while True:
        status, body = await http_get(session, url)
        if status == 200:
            return time.time()
        child.check_alive()
        if time.monotonic() > deadline:
            raise HarnessError(f"{child.name} not ready after {timeout:.0f}s: {status} {body[:300]}")
        await asyncio.sleep(0.1)


# --- measuring a run -----------------------------------------------------------------------------------


async def sample_until(
    child: Child,
    count: Callable[[], int | Awaitable[int]],
    total: int,
    busy_seconds: float,
    *,
    interval: float = SAMPLE_SECONDS,
) -> list[Sample]:
    """Look at `child` every `interval` until `count()` reaches `total` or it has been busy `busy_seconds`.

    `count` may be a coroutine function (the worker's count comes from its /metrics). A process that exits,
    or does nothing for START_TIMEOUT_SECONDS, is a HarnessError.
    """
    samples: list[Sample] = []
    began = time.monotonic()
    first_work: float | None = None
    while True:
        child.check_alive()
        value = count()
        done = await value if inspect.isawaitable(value) else value
        now = time.monotonic()
        samples.append(Sample(now, cpu_seconds(child.pid), done))
        if done > 0 and first_work is None:
            first_work = now
        if done >= total or (first_work is not None and now - first_work >= busy_seconds):
            return samples
        if first_work is None and now - began > START_TIMEOUT_SECONDS:
            raise HarnessError(f"{child.name} did nothing in {START_TIMEOUT_SECONDS:.0f}s; see {child.log_path}")
        await asyncio.sleep(interval)


# --- writing to Kafka -----------------------------------------------------------------------------------


async def write_records(bootstrap: str, records: Iterable[Outgoing], chunk: int = 5000) -> int:
    """Write (topic, key, value, partition) records, `chunk` at a time, each chunk acknowledged; the count."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_batch_size=1 << 18)
    await producer.start()
    written = 0
    try:
        pending: list[Outgoing] = []
        for record in records:
            pending.append(record)
            if len(pending) >= chunk:
                written += len(await send_all(producer, pending))
                pending = []
        if pending:
            written += len(await send_all(producer, pending))
    finally:
        await producer.stop()
    return written


@dataclass
class Context:
    """What a section is given: the sizes, how many times to repeat each measurement, and where to put its
    logs, state and files."""

    sizes: Sizes
    repeats: int
    workdir: str


@dataclass
class SectionResult:
    """A section's figures (each over the repeats; the table's rows) and whatever else it measured (JSON)."""

    figures: dict[str, Summary] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


def rotated(items: tuple[str, ...], repeat: int) -> list[str]:
    """`items` starting at a different one each repeat: interleaved, so no variant always runs first."""
    shift = repeat % len(items)
    return list(items[shift:] + items[:shift])


@dataclass
class Timer:
    """Seconds since it was made, for the progress lines."""

    started: float = field(default_factory=time.monotonic)

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started
