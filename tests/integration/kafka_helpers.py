"""Talking to the broker from tests: produce records, read topics until a condition holds, run workers."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from postback_router.embedded_broker import free_loopback_port
from service.kafka_connection import KafkaConnection
from service.kafka_io import Record, produce, read_topic
from service.settings import load_settings

# Generous: on a loaded 2-core CI machine a worker start (group join, table recovery) can take
# several seconds; a test that waits this long has failed anyway.
DEFAULT_DEADLINE_SECONDS = 60.0


# A dispatcher's settings in tests: loopback destinations allowed, retries and timeouts short.
DISPATCH_ENV = {
    "POSTBACK_ALLOW_PRIVATE_TARGETS": "1",  # the sink is on loopback
    "RETRY_BASE_DELAY": "100ms",
    "RETRY_MAX_DELAY": "500ms",
    "DELIVERY_TIMEOUT": "2s",
}


async def wait_for_records(
    kafka: KafkaConnection,
    topic: str,
    condition: Callable[[list[Record]], bool],
    deadline_seconds: float = DEFAULT_DEADLINE_SECONDS,
    describe: str = "",
    check_alive: Callable[[], None] = lambda: None,
) -> list[Record]:
    """Poll `topic` until `condition(records)` holds; fail with what was there at the deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + deadline_seconds
    records = await read_topic(kafka, topic)
    while not condition(records):
        check_alive()
        if loop.time() > deadline:
            raise AssertionError(
                f"{topic}: condition {describe!r} not met within {deadline_seconds}s; "
                f"{len(records)} records: {[r.value for r in records][:20]}"
            )
        await asyncio.sleep(0.1)
        records = await read_topic(kafka, topic)
    return records


def count_at_least(n: int) -> Callable[[list[Record]], bool]:
    return lambda records: len(records) >= n


@dataclass
class WorkerProcess:
    """A `postback-router` process (worker or dispatcher) as a real subprocess, as production runs it."""

    env: dict[str, str]
    log_path: Path
    command: tuple[str, ...] = ("worker",)
    process: subprocess.Popen[bytes] | None = None
    # what `python -m` runs: the command line, or a test-only launcher around it (crashpoint_dispatch)
    module: str = "postback_router.cli"
    exits: list[int] = field(default_factory=list)
    http_port: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    async def http_get(self, path: str) -> tuple[int, str]:
        """(status, body) of GET `path` on the process's HTTP port (/metrics, /healthz, /readyz)."""
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout) as session, session.get(self.base_url + path) as response:
            return response.status, await response.text()

    async def wait_ready(self, deadline_seconds: float = DEFAULT_DEADLINE_SECONDS) -> None:
        """Poll /readyz until it answers 200; fail with its last answer (or the log) at the deadline."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + deadline_seconds
        last = "no answer"
        while loop.time() < deadline:
            self.check_alive()
            try:
                status, body = await self.http_get("/readyz")
            except aiohttp.ClientError as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                if status == 200:
                    return
                last = f"{status} {body}"
            await asyncio.sleep(0.1)
        raise AssertionError(f"{self.command} not ready within {deadline_seconds}s: {last}")

    def start(self) -> WorkerProcess:
        if not self.http_port:
            self.http_port = free_loopback_port()
        self.env = {**self.env, "HTTP_HOST": "127.0.0.1", "HTTP_PORT": str(self.http_port)}
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.process = subprocess.Popen(
            [sys.executable, "-m", self.module, *self.command],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        return self

    def terminate(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.exits.append(self.process.returncode)
        return self.process.returncode

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self.exits.append(self.process.returncode)

    def check_alive(self) -> None:
        """Fail now, with the log, if the worker died without being told to stop."""
        if self.process is not None and self.process.poll() is not None and not self.exits:
            raise AssertionError(f"worker exited with {self.process.returncode}:\n{self.log_text()[-3000:]}")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


@dataclass
class Deployment:
    """One isolated set of topics and one consumer group on the shared broker."""

    bootstrap: str
    tmp_path: Path
    prefix: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:10]}.")
    extra_env: dict[str, str] = field(default_factory=dict)
    workers: list[WorkerProcess] = field(default_factory=list)

    @property
    def app_id(self) -> str:
        return self.prefix.rstrip(".") + "-router"

    def topic(self, name: str) -> str:
        return self.prefix + name

    @property
    def kafka(self) -> KafkaConnection:
        """The connection the deployment's processes use (KAFKA_SECURITY_PROTOCOL etc. from `extra_env`)."""
        return load_settings(self.env()).kafka

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "TOPIC_PREFIX": self.prefix,
            "APP_ID": self.app_id,
            "STATE_STORE": "memory://",
            "STATE_DIR": str(self.tmp_path / "state"),
            "TOPIC_PARTITIONS": "4",
            "EMIT_EVALUATIONS": "true",
            # short, so that a killed worker's partitions move quickly (docs/embedded-broker.md)
            "KAFKA_SESSION_TIMEOUT": "6s",
            "KAFKA_HEARTBEAT_INTERVAL": "1s",
            "LOG_LEVEL": "INFO",
            **self.extra_env,
        }

    def start_worker(self) -> WorkerProcess:
        worker = WorkerProcess(self.env(), self.tmp_path / f"worker-{len(self.workers)}.log").start()
        self.workers.append(worker)
        return worker

    def start_dispatcher(
        self, kind: str = "s2s", *, module: str = "postback_router.cli", env: dict[str, str] | None = None
    ) -> WorkerProcess:
        dispatcher = WorkerProcess(
            {**self.env(), **(env or {})},
            self.tmp_path / f"dispatch-{len(self.workers)}.log",
            command=("dispatch", "--kind", kind),
            module=module,
        ).start()
        self.workers.append(dispatcher)
        return dispatcher

    def stop_all(self) -> None:
        for worker in self.workers:
            if worker.process is not None and worker.process.poll() is None:
                worker.terminate()

    async def produce(self, name: str, records: Iterable[tuple[Any, Any]]) -> None:
        await produce(self.kafka, self.topic(name), records)

    async def read(self, name: str) -> list[Record]:
        return await read_topic(self.kafka, self.topic(name))

    async def wait_for(
        self,
        name: str,
        condition: Callable[[list[Record]], bool],
        describe: str = "",
        deadline: float = DEFAULT_DEADLINE_SECONDS,
    ) -> list[Record]:
        def check_alive() -> None:
            for worker in self.workers:
                worker.check_alive()

        return await wait_for_records(self.kafka, self.topic(name), condition, deadline, describe, check_alive)

    async def create_topics(self) -> None:
        from service.settings import load_settings
        from service.topics import ensure_topics

        await ensure_topics(load_settings(self.env()))
