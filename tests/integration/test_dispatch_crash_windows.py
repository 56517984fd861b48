"""A dispatcher SIGKILLed at each step of a postback's finalisation, then restarted (contract §4, §6 Faults):
every postback ends with exactly one record in `postbacks.results` (and one in `postbacks.dead-letter`
unless delivered), and a request the destination answered is not sent again.

The real dispatcher runs as a subprocess through tests/integration/crashpoint_dispatch.py, which holds it
at the chosen step (a test-only wrapper of the member's Kafka writes); the test then kills it with
SIGKILL, so nothing after that step runs, and starts a plain dispatcher in its place. The postbacks are
matched in-process (the worker's pure core) and produced to `postbacks.s2s` directly.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from tests import factories as f
from tests.integration.kafka_helpers import Deployment, Record, WorkerProcess
from tests.integration.test_dispatch_s2s import wait_until_consumed

pytestmark = [pytest.mark.integration, pytest.mark.time_dependent]

DISPATCH_ENV = {
    "POSTBACK_ALLOW_PRIVATE_TARGETS": "1",  # the sink is on loopback
    "RETRY_BASE_DELAY": "100ms",
    "RETRY_MAX_DELAY": "500ms",
    "DELIVERY_TIMEOUT": "30s",  # a held request must still be waiting when the dispatcher is killed
}
CONVERSIONS = 3
DEADLINE_SECONDS = 60.0


class CountingSink:
    """An S2S receiver on loopback that counts, per (path, click id), the requests received and answered.

    `/reject` answers 400 (the postback ends rejected, with a dead-letter record), any other path 200.
    After `hold(path, cid)`, the first request for them is not answered: it waits until `abandon()` and
    is then dropped unanswered, so that a test can kill the dispatcher while that request waits.
    """

    def __init__(self) -> None:
        self.received: Counter[tuple[str, str]] = Counter()
        self.answered: Counter[tuple[str, str]] = Counter()
        self.holding = asyncio.Event()
        self._held: tuple[str, str] | None = None
        self._abandoned = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def __aenter__(self) -> CountingSink:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._abandoned.set()
        if self._runner is not None:
            await self._runner.cleanup()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}?cid={{clickid}}"

    def hold(self, path: str, cid: str) -> None:
        self._held = (path, cid)

    def abandon(self) -> None:
        self._abandoned.set()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        key = (request.path, request.query.get("cid", ""))
        self.received[key] += 1
        if key == self._held:
            self._held = None
            self.holding.set()
            await self._abandoned.wait()
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=503)  # never reaches anyone: the requester is gone
        self.answered[key] += 1
        if request.path == "/reject":
            return web.Response(status=400, text="ERROR: unknown goal")
        return web.Response(text="OK")


@pytest.fixture
async def sink() -> AsyncIterator[CountingSink]:
    async with CountingSink() as running:
        yield running


def matched_postbacks(sink: CountingSink) -> list[dict[str, Any]]:
    """The postbacks the worker would write to postbacks.s2s: per conversion one to /ok, one to /reject."""
    rules = f.compiled("camp-1", f.s2s_entry("ok", url=sink.url("/ok")), f.s2s_entry("reject", url=sink.url("/reject")))
    conversions = [f.conversion(f"c{i}") for i in range(CONVERSIONS)]
    result = f.processor(rules).process(f.source_records(conversions))
    return [orjson.loads(m.value) for m in result.messages if m.topic == "postbacks.s2s" and m.value is not None]


async def wait_until_final(deployment: Deployment, postback_ids: set[str], process: WorkerProcess) -> None:
    """Every one of `postback_ids` has a `final` delivery state in the changelog."""
    changelog = f"{deployment.app_id}-dispatch-s2s-state"

    def all_final(records: list[Record]) -> bool:
        process.check_alive()
        latest = {r.key.decode(): r.json()["s"] for r in records if r.key is not None and r.value is not None}
        return all(latest.get(pid) == "final" for pid in postback_ids)

    await deployment.wait_for(changelog, all_final, "the other postbacks final", DEADLINE_SECONDS)


async def wait_for_file(path: Path, process: WorkerProcess, deadline: float = DEADLINE_SECONDS) -> None:
    loop = asyncio.get_running_loop()
    stop_at = loop.time() + deadline
    while not path.exists():
        process.check_alive()
        assert loop.time() < stop_at, f"the dispatcher never reached {path.name}:\n{process.log_text()[-3000:]}"
        await asyncio.sleep(0.05)


async def wait_until_settled(deployment: Deployment, dispatcher: WorkerProcess, expected: int) -> None:
    """The restarted dispatcher owns every partition, has a result for every postback and nothing pending."""
    loop = asyncio.get_running_loop()
    stop_at = loop.time() + DEADLINE_SECONDS
    owned = f"assigned {deployment.topic('postbacks.s2s')} partitions [0, 1, 2, 3]"
    while owned not in dispatcher.log_text():
        dispatcher.check_alive()
        assert loop.time() < stop_at, f"the restarted dispatcher never owned every partition:\n{dispatcher.log_text()}"
        await asyncio.sleep(0.1)
    await deployment.wait_for(
        "postbacks.results", lambda r: len({x.key for x in r}) >= expected, f"{expected} results", DEADLINE_SECONDS
    )
    while True:
        _, metrics = await dispatcher.http_get("/metrics")
        if 'postback_deliveries_pending{kind="s2s"} 0.0' in metrics:
            break
        assert loop.time() < stop_at, "postbacks still pending after the restart"
        await asyncio.sleep(0.1)
    await wait_until_consumed(deployment, "postbacks.s2s", f"{deployment.app_id}-dispatch-s2s")
    # A graceful stop flushes what the restarted dispatcher still had to write; once it has exited,
    # nothing more can arrive, so the counts that follow are final (no fixed wait).
    assert await asyncio.to_thread(dispatcher.terminate) == 0


@pytest.mark.parametrize(
    "step",
    [
        "waiting-for-answer",  # the request was sent and no answer came back yet: the only allowed repeat
        "outcome-recording",  # the answer is in, its outcome not yet in the delivery state
        "results-writing",  # the outcome is recorded; nothing in postbacks.results yet
        "results-written",  # results and dead-letter records acknowledged; the state not final yet
        "final-written",  # all done
    ],
)
async def test_a_dispatcher_killed_at_any_step_leaves_one_result_per_postback(
    deployment: Deployment, sink: CountingSink, tmp_path: Path, step: str
) -> None:
    deployment.extra_env.update(DISPATCH_ENV)
    postbacks = matched_postbacks(sink)
    assert len(postbacks) == 2 * CONVERSIONS
    # The postback held at the step: a rejected one, so that its dead-letter record is written too.
    held = next(p for p in postbacks if p["entry_id"] == "reject" and p["conversion_id"] == "c0")
    signal_file = tmp_path / f"reached-{step}"
    if step == "waiting-for-answer":
        sink.hold("/reject", "click-c0")
        crashing = deployment.start_dispatcher()
    else:
        crashing = deployment.start_dispatcher(
            module="tests.integration.crashpoint_dispatch",
            env={"CRASHPOINT": step, "CRASHPOINT_FILE": str(signal_file), "CRASHPOINT_POSTBACK": held["postback_id"]},
        )
    await deployment.produce("postbacks.s2s", [(p["conversion_id"], p) for p in postbacks])
    if step == "waiting-for-answer":
        await asyncio.wait_for(sink.holding.wait(), DEADLINE_SECONDS)
    else:
        await wait_for_file(signal_file, crashing)
    # The others go on to the end: the kill hits the held postback at its step, and nothing else.
    await wait_until_final(deployment, {p["postback_id"] for p in postbacks} - {held["postback_id"]}, crashing)
    crashing.kill()
    sink.abandon()

    restarted = deployment.start_dispatcher()
    await wait_until_settled(deployment, restarted, len(postbacks))

    results = [r.json() for r in await deployment.read("postbacks.results")]
    per_postback = Counter(r["postback_id"] for r in results)
    assert len(per_postback) == len(postbacks), "every postback has a result"
    assert set(per_postback.values()) == {1}, f"exactly one result per postback: {per_postback}"
    assert Counter(r["result"] for r in results) == Counter(delivered=CONVERSIONS, rejected=CONVERSIONS)
    dead = Counter(r.json()["postback_id"] for r in await deployment.read("postbacks.dead-letter"))
    rejected = {r["postback_id"] for r in results if r["result"] == "rejected"}
    assert dead == Counter({pid: 1 for pid in rejected}), "exactly one dead-letter record per rejected postback"

    assert set(sink.answered) == {(path, f"click-c{i}") for path in ("/ok", "/reject") for i in range(CONVERSIONS)}
    repeated = {key: n for key, n in sink.answered.items() if n > 1}
    if step == "outcome-recording":
        # The one window left (README "Delivery"): killed after the answer arrived and before its outcome was
        # acknowledged in the delivery state, the request counts as still in flight and is sent again.
        assert repeated == {("/reject", "click-c0"): 2}, repeated
    else:
        assert repeated == {}, f"requests answered and then sent again: {repeated}"
