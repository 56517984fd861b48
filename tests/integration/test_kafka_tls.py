"""The whole service over TLS with hostname verification and a client certificate (mutual TLS).

The embedded broker speaks PLAINTEXT only: a TLS-terminating proxy on loopback stands in front of it, as a
managed cluster's TLS listener would, and the broker advertises the proxy's address, so every connection
(bootstrap and metadata-directed alike) goes through TLS. The CA, the broker's certificate (for 127.0.0.1)
and the client's are made in the test. The embedded broker has no SASL users: the SASL settings are
checked in tests/service/test_kafka_connection.py.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from devtools.fakes.s2s_sink import S2SSink
from service.kafka_io import Record
from service.settings import load_settings
from service.topics import ensure_topics
from tests import factories as f
from tests.integration.kafka_helpers import Deployment, WorkerProcess
from tests.integration.tls_proxy import TlsProxy, server_context, tls_broker
from tests.tls_certificates import Certificate, make_ca, make_leaf

pytestmark = [pytest.mark.integration, pytest.mark.time_dependent]

TOKEN = "tls-integration-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class TlsCluster:
    deployment: Deployment
    proxy: TlsProxy
    ca: Certificate
    certs: Path


@pytest.fixture
def tls(tmp_path: Path) -> Iterator[TlsCluster]:
    certs = tmp_path / "certs"
    ca = make_ca(certs, "test-ca")
    server = make_leaf(ca, certs, "broker", hosts=("127.0.0.1",))
    client = make_leaf(ca, certs, "postback-router", client=True)
    with tls_broker(server_context(server, client_ca=ca), tmp_path / "tansu.log") as (_, proxy):
        security = {
            "KAFKA_SECURITY_PROTOCOL": "SSL",
            "KAFKA_SSL_CAFILE": str(ca.cert),
            "KAFKA_SSL_CERTFILE": str(client.cert),
            "KAFKA_SSL_KEYFILE": str(client.key),
            # KAFKA_SSL_CHECK_HOSTNAME left at its default: true
        }
        deployment = Deployment(f"127.0.0.1:{proxy.port}", tmp_path, extra_env=security)
        try:
            yield TlsCluster(deployment, proxy, ca, certs)
        finally:
            deployment.stop_all()
            for process in deployment.workers:
                print(f"---- {process.log_path.name} (exit codes {process.exits})\n{process.log_text()[-4000:]}")


async def test_worker_dispatcher_and_api_work_over_tls(tls: TlsCluster, sink: S2SSink) -> None:
    deployment = tls.deployment
    deployment.extra_env["POSTBACK_ALLOW_PRIVATE_TARGETS"] = "1"  # the sink is on loopback
    await deployment.create_topics()  # the admin client and a consumer, over TLS
    api = WorkerProcess(
        {**deployment.env(), "API_TOKEN": TOKEN, "LOG_FORMAT": "text"}, deployment.tmp_path / "api.log", ("api",)
    ).start()
    deployment.workers.append(api)  # stopped and its log printed with the others
    await api.wait_ready()  # connected and its three compacted views read to their end

    rules = {"postbacks": [f.s2s_entry("tls", url=sink.url("/tls?cid={clickid}&status={status}"))]}
    async with aiohttp.ClientSession(base_url=api.base_url) as http:
        async with http.put("/v1/campaigns/camp-1/rules", json=rules, headers=AUTH) as response:
            assert response.status == 200, await response.text()  # the api's producer
        async with http.get("/v1/campaigns/camp-1/rules", headers=AUTH) as response:
            assert response.status == 200  # its view of the compacted topic
            assert (await response.json())["postbacks"] == rules["postbacks"]

    worker, dispatcher = deployment.start_worker(), deployment.start_dispatcher("s2s")
    await worker.wait_ready()  # in its group, views recovered, fired-state restored from its changelog
    await dispatcher.wait_ready()
    await deployment.produce("conversions", [("tls-1", f.conversion("tls-1"))])

    def delivered(records: list[Record]) -> bool:
        return any(r.json()["result"] == "delivered" for r in records)

    results = await deployment.wait_for("postbacks.results", delivered, "the postback delivered")
    assert [(r.json()["conversion_id"], r.json()["entry_id"]) for r in results] == [("tls-1", "tls")]
    assert [request.query.get("cid") for request in sink.delivered("/tls")] == ["click-tls-1"]
    # every client came through the TLS listener; the broker's own port was never advertised
    assert tls.proxy.handshakes >= 5
    for process in deployment.workers:
        assert "CERTIFICATE_VERIFY_FAILED" not in process.log_text()


def test_a_broker_certificate_from_another_ca_stops_the_start_with_the_reason(tls: TlsCluster) -> None:
    wrong_ca = make_ca(tls.certs / "other", "some-other-ca")
    env = {**tls.deployment.env(), "KAFKA_SSL_CAFILE": str(wrong_ca.cert)}
    done = subprocess.run(
        [sys.executable, "-m", "postback_router.cli", "topics"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    last_line = done.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"postback-router: cannot reach Kafka at {tls.deployment.kafka.describe()}: ")
    assert "CERTIFICATE_VERIFY_FAILED" in last_line and "KAFKA_SSL_CAFILE" in last_line
    assert tls.proxy.handshakes == 0  # refused before any byte reached the broker


async def test_a_certificate_that_does_not_name_the_host_is_refused(tls: TlsCluster, tmp_path: Path) -> None:
    # Same CA, but the certificate names another host: only hostname verification can refuse it.
    impostor = make_leaf(tls.ca, tls.certs, "impostor", hosts=("kafka.other.example",))
    with tls_broker(server_context(impostor), tmp_path / "impostor-tansu.log") as (_, proxy):
        env = {**tls.deployment.env(), "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{proxy.port}"}
        with pytest.raises(RuntimeError) as refused:
            await ensure_topics(load_settings(env))
        assert "IP address mismatch" in str(refused.value)
        # turned off, the chain alone is verified and the same certificate is accepted
        assert await ensure_topics(load_settings({**env, "KAFKA_SSL_CHECK_HOSTNAME": "false"}))
