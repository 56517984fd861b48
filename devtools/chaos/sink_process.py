"""The S2S sink in a process of its own, so that the chaos process's own load (producing, following the
results, the platform fakes) never delays a traffic source's answers, nor the clock they are timed by.

    python -m devtools.chaos.sink_process SEED SOURCES

prints the sources' URLs as one JSON line, then serves until SIGTERM. On the first source,
`POST /chaos/outage {"from": t, "until": t}` sets the outage (time.monotonic(): one clock for every
process on the machine) and `GET /chaos/ledger` answers with what it received and accepted.
"""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from devtools.chaos.faults import ChaosSink, FaultSchedule, Ledger

DESTINATION = "s2s"


def ledger_json(ledger: Ledger) -> dict[str, Any]:
    return {
        "requests": ledger.requests[DESTINATION],
        "answers": {str(status): n for status, n in ledger.answers[DESTINATION].items()},
        "accepted": ledger.accepted,
    }


def merge_ledger(into: Ledger, remote: dict[str, Any]) -> None:
    into.requests[DESTINATION] += remote["requests"]
    for status, n in remote["answers"].items():
        into.answers[DESTINATION][int(status)] += n
    for pid, times in remote["accepted"].items():
        into.accepted[pid].extend(times)
        into.destination_of[pid] = DESTINATION


async def serve(seed: int, sources: int) -> None:
    schedule = FaultSchedule(random.Random(seed))
    ledger = Ledger()

    async def outage(request: web.Request) -> web.Response:
        window = await request.json()
        schedule.outage_from, schedule.outage_until = float(window["from"]), float(window["until"])
        return web.json_response({"ok": True})

    async def report(request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(ledger_json(ledger)), content_type="application/json")

    sink = ChaosSink(schedule, ledger, control=[web.post("/chaos/outage", outage), web.get("/chaos/ledger", report)])
    urls = await sink.start(sources)
    print(orjson.dumps(urls).decode(), flush=True)
    stopping = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
    await stopping.wait()
    await sink.stop()


class RemoteSink:
    """The driver's side: start the sink process, set its outage, fetch its ledger, stop it."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.urls: list[str] = []
        self._process: subprocess.Popen[bytes] | None = None

    async def start(self, sources: int) -> list[str]:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "devtools.chaos.sink_process", str(self.seed), str(sources)],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        assert self._process.stdout is not None
        line = await asyncio.to_thread(self._process.stdout.readline)
        if not line:
            raise RuntimeError(f"the S2S sink process exited with {self._process.wait()}")
        self.urls = list(orjson.loads(line))
        return self.urls

    async def set_outage(self, start: float, until: float) -> None:
        async with aiohttp.ClientSession() as session:
            answer = await session.post(f"{self.urls[0]}/chaos/outage", json={"from": start, "until": until})
            answer.raise_for_status()

    async def ledger(self) -> dict[str, Any]:
        async with aiohttp.ClientSession() as session, session.get(f"{self.urls[0]}/chaos/ledger") as answer:
            answer.raise_for_status()
            return dict(orjson.loads(await answer.read()))

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1]), int(sys.argv[2])))
