"""What an SRE sees: health, readiness, /metrics, JSON logs, and a real Prometheus scraping it all.

One worker and one S2S dispatcher run against the broker and a loopback traffic source; known
traffic goes through; then Prometheus (Debian's package, from `make tools`) scrapes both processes
with the alerting rules of deploy/ loaded, and PromQL answers must match that traffic exactly.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from devtools.fakes.s2s_sink import S2SSink
from postback_router.embedded_broker import free_loopback_port
from tests import factories as f
from tests.integration.kafka_helpers import DEFAULT_DEADLINE_SECONDS, Deployment, WorkerProcess
from tests.prometheus_tools import prometheus_path

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ALERT_RULES = REPO / "deploy" / "prometheus" / "alerts.yml"
DISPATCH_ENV = {
    "POSTBACK_ALLOW_PRIVATE_TARGETS": "1",  # the traffic source is on loopback
    "RETRY_BASE_DELAY": "100ms",
    "RETRY_MAX_DELAY": "300ms",
}
CONVERSIONS = 10
FLAKY_FAILURES = 3  # 503s the /ok source answers before it recovers
EMAIL = "player.one@example.com"  # must never reach a log line


async def send_known_traffic(deployment: Deployment, sink: S2SSink) -> None:
    """10 valid conversions, 2 invalid ones; two S2S entries: /ok (3 x 503 first) and /reject (400)."""
    sink.fail_next(FLAKY_FAILURES, 503, path="/ok")
    sink.respond_with("/reject", body="ERROR: unknown goal", status=400)
    entries = [f.s2s_entry(name, url=sink.url(f"/{name}?cid={{clickid}}")) for name in ("ok", "reject")]
    await deployment.produce("campaign-rules", [("camp-1", f.campaign("camp-1", *entries))])
    valid = [(f"c{i}", f.conversion(f"c{i}", user={"email": EMAIL})) for i in range(CONVERSIONS)]
    invalid: list[tuple[str, Any]] = [("bad-1", b"{not json"), ("bad-2", {"conversion_id": "bad-2"})]
    await deployment.produce("conversions", [*valid, *invalid])
    await deployment.wait_for("postbacks.results", lambda r: len(r) >= 2 * CONVERSIONS, "20 results", deadline=90)


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def wait_for_metrics(
    process: WorkerProcess, expected: dict[tuple[str, frozenset[tuple[str, str]]], float]
) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Poll /metrics until every expected sample has its value (counters are updated after the writes)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEFAULT_DEADLINE_SECONDS
    while True:
        status, text = await process.http_get("/metrics")
        assert status == 200
        found = samples(text)
        missing = {key: (value, found.get(key)) for key, value in expected.items() if found.get(key) != value}
        if not missing:
            return found
        assert loop.time() < deadline, f"{process.command}: (expected, found) {missing}"
        await asyncio.sleep(0.2)


def sample(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return name, frozenset(labels.items())


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[list[tuple[str, WorkerProcess]]], str]]:
    """Start a real Prometheus scraping the given (job, process) pairs every second; yields its base URL."""
    running: list[subprocess.Popen[bytes]] = []
    log_path = tmp_path / "prometheus.log"

    def start(targets: list[tuple[str, WorkerProcess]]) -> str:
        port = free_loopback_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ALERT_RULES)],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{process.http_port}"]}]}
                for job, process in targets
            ],
        }
        config_path = tmp_path / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        with open(log_path, "wb") as log:
            running.append(
                subprocess.Popen(
                    [
                        prometheus_path(),
                        f"--config.file={config_path}",
                        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                        f"--web.listen-address=127.0.0.1:{port}",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            )
        return f"http://127.0.0.1:{port}"

    try:
        yield start
    finally:
        for process in running:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        if log_path.exists():
            print("---- prometheus.log\n" + log_path.read_text(errors="replace")[-3000:])


async def promql(session: aiohttp.ClientSession, base: str, query: str) -> dict[str, float]:
    """An instant query's vector as {"label=value,...": value}; {} while Prometheus has no samples."""
    async with session.get(f"{base}/api/v1/query", params={"query": query}) as response:
        body = await response.json()
    assert body["status"] == "success", f"{query}: {body}"
    return {
        ",".join(f"{k}={v}" for k, v in sorted(item["metric"].items())): float(item["value"][1])
        for item in body["data"]["result"]
    }


# The PromQL the test asserts after the known traffic, and the answers it must get.
EXPECTED_QUERIES: dict[str, dict[str, float]] = {
    'count(up{job=~"postback-.*"} == 1)': {"": 2},
    "min(postback_ready)": {"": 1},
    'sum(postback_conversions_consumed_total{job="postback-worker"})': {"": CONVERSIONS + 2},
    "sum by (reason) (postback_conversions_invalid_total)": {"reason=missing_field": 1, "reason=not_json": 1},
    "sum by (kind) (postback_matched_total)": {"kind=s2s": 2 * CONVERSIONS},
    'sum by (outcome) (postback_deliveries_total{kind="s2s"})': {
        "outcome=delivered": CONVERSIONS,
        "outcome=rejected": CONVERSIONS,
    },
    "sum by (reason) (postback_dead_letter_total)": {"reason=http_400": CONVERSIONS},
    'sum by (result) (postback_delivery_attempts_total{kind="s2s"}) > 0': {
        "result=2xx": CONVERSIONS,
        "result=4xx": CONVERSIONS,
        "result=5xx": FLAKY_FAILURES,
    },
    'sum(postback_delivery_duration_seconds_count{kind="s2s"})': {"": 2 * CONVERSIONS + FLAKY_FAILURES},
    'sum(postback_end_to_end_seconds_count{kind="s2s"})': {"": CONVERSIONS},
    "sum by (job) (postback_consumer_lag)": {"job=postback-dispatcher": 0, "job=postback-worker": 0},
    "sum by (job) (postback_rules_campaigns)": {"job=postback-worker": 1},
    "sum(postback_deliveries_pending)": {"": 0},
}


async def test_health_metrics_logs_and_prometheus_after_known_traffic(
    deployment: Deployment, sink: S2SSink, prometheus: Callable[[list[tuple[str, WorkerProcess]]], str]
) -> None:
    deployment.extra_env.update({**DISPATCH_ENV, "EMIT_EVALUATIONS": "false"})
    worker = deployment.start_worker()
    dispatcher = deployment.start_dispatcher("s2s")
    for process in (worker, dispatcher):
        await process.wait_ready()
        assert await process.http_get("/healthz") == (200, '{"status": "alive"}')
    status, body = await worker.http_get("/readyz")
    assert (status, orjson.loads(body)["checks"]) == (
        200,
        {"kafka": True, "views_recovered": True, "consumer": True, "fired_state": True},
    )

    await send_known_traffic(deployment, sink)

    # /metrics of each process, read directly
    await wait_for_metrics(
        worker,
        {
            sample("postback_conversions_consumed_total"): CONVERSIONS + 2,
            sample("postback_matched_total", kind="s2s"): 2 * CONVERSIONS,
            sample("postback_conversions_invalid_total", reason="not_json"): 1,
            sample("postback_ready"): 1,
        },
    )
    found = await wait_for_metrics(
        dispatcher,
        {
            sample("postback_deliveries_total", kind="s2s", outcome="delivered"): CONVERSIONS,
            sample("postback_deliveries_total", kind="s2s", outcome="rejected"): CONVERSIONS,
            sample("postback_delivery_attempts_total", kind="s2s", result="5xx"): FLAKY_FAILURES,
        },
    )
    assert found[sample("postback_build_info", process="dispatcher", version="0.1.0")] == 1
    assert not [key for key in found if "postback_id" in dict(key[1]) or "conversion_id" in dict(key[1])]

    # a real Prometheus scrapes both, with the deploy/ alerting rules loaded
    base = prometheus([("postback-worker", worker), ("postback-dispatcher", dispatcher)])
    expected = EXPECTED_QUERIES
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DEFAULT_DEADLINE_SECONDS
        while True:
            answers: dict[str, dict[str, float] | str] = {}
            for query in expected:
                try:
                    answers[query] = await promql(session, base, query)
                except aiohttp.ClientError as exc:  # still starting
                    answers[query] = f"{type(exc).__name__}"
            wrong = {q: (expected[q], answers[q]) for q in expected if answers[q] != expected[q]}
            if not wrong:
                break
            assert loop.time() < deadline, f"PromQL (expected, answered): {wrong}"
            await asyncio.sleep(0.5)
        print("PromQL answers after the known traffic:")
        for query, answer in answers.items():
            print(f"  {query} => {answer}")
        # every alerting rule of deploy/ evaluates cleanly against the live series
        async with session.get(f"{base}/api/v1/rules") as response:
            groups = (await response.json())["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        assert rules, "the alerting rules of deploy/prometheus/alerts.yml were loaded"
        assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []

    # JSON log lines with the ids, and no personal data in any of them
    deployment.stop_all()
    for process in (worker, dispatcher):
        lines = [orjson.loads(line) for line in process.log_text().splitlines() if line.startswith("{")]
        assert lines and all({"ts", "level", "logger", "message"} <= line.keys() for line in lines)
        assert EMAIL not in process.log_text()
    # one INFO line per rejected postback, with its ids; the delivered ones are counted, not logged (README)
    finals = [line for line in dispatcher_lines(dispatcher) if "postback_id" in line]
    assert len(finals) == CONVERSIONS
    assert all(line["message"].startswith("postback rejected") for line in finals)
    assert {line["conversion_id"] for line in finals} == {f"c{i}" for i in range(CONVERSIONS)}


def dispatcher_lines(process: WorkerProcess) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in process.log_text().splitlines() if line.startswith("{")]
