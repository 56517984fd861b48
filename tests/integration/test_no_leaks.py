"""A scan of a whole run for the secrets and personal data it handled (issue 8, security tests).

A worker and `dispatch --kind all` run against a fake Meta API and a loopback S2S source that refuses
with a body echoing the request (and its `token=`), fed with conversions carrying emails, phones, IPs
and external ids, plus hostile records (personal data in non-JSON text, in non-UTF-8 bytes, as a key,
in unknown user fields). Then every topic of the run and every process's log is read: no secret value
of the dispatcher's environment, no S2S credential outside the postback that carries it by design, and
none of the raw personal data may appear anywhere, in any encoding a reader would try.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator

import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from devtools.fakes.platforms import FakeMeta
from devtools.fakes.s2s_sink import S2SSink
from service.kafka_io import read_topic
from tests import factories as f
from tests.integration.kafka_helpers import Deployment

pytestmark = pytest.mark.integration

META_TOKEN = "meta-access-token-5f1c9e0b7a"
S2S_TOKEN = "s2s-source-token-93ab41c7"
EMAILS = [f"person.{i}@private-mail.example" for i in range(6)]
PHONES = ["+44 7911 123456", "+1 415 555 2671"]
IPS = ["198.51.100.77", "2001:db8:85a3::8a2e:370:7334"]
EXTERNAL_IDS = ["crm-customer-884421"]


@pytest.fixture
async def outside() -> AsyncIterator[tuple[FakeMeta, S2SSink]]:
    meta = FakeMeta(access_token=META_TOKEN)
    await meta.start()
    async with S2SSink() as sink:
        # A source that refuses and echoes the request line, credential included (as some do).
        sink.respond_with("/refuse", status=400, body=f"bad request GET /refuse?cid=x&token={S2S_TOKEN}")
        try:
            yield meta, sink
        finally:
            await meta.stop()


def _encodings(secret: str) -> list[bytes]:
    """The ways a secret could be written: as is, lower-cased, JSON-escaped, base64, URL-encoded `@`."""
    raw = secret.encode()
    return [raw, raw.lower(), orjson.dumps(secret)[1:-1], base64.b64encode(raw), raw.replace(b"@", b"%40")]


async def test_no_secret_or_personal_data_reaches_any_topic_or_log(
    deployment: Deployment, outside: tuple[FakeMeta, S2SSink]
) -> None:
    meta, sink = outside
    deployment.extra_env.update(
        META_BASE_URL=meta.base_url,
        POSTBACK_SECRET_META_MAIN=orjson.dumps({"access_token": META_TOKEN}).decode(),
        POSTBACK_ALLOW_PRIVATE_TARGETS="1",
        LOG_LEVEL="DEBUG",  # every level is scrubbed, not only what production logs
        RETRY_BASE_DELAY="100ms",
        RETRY_MAX_DELAY="300ms",
    )
    campaign = f.campaign(
        "camp-1",
        f.meta_entry("fb", event_names={"deposit": "Purchase"}),
        f.s2s_entry("ok", url=sink.url("/ok?cid={clickid}") + f"&token={S2S_TOKEN}"),
        f.s2s_entry("refused", url=sink.url("/refuse?cid={clickid}") + f"&token={S2S_TOKEN}"),
    )
    await deployment.produce("campaign-rules", [("camp-1", campaign)])
    user = {"email": EMAILS[0], "phone": PHONES[0], "ip": IPS[0], "external_id": EXTERNAL_IDS[0], "user_agent": "UA"}
    good = [
        (f"c{i}", f.conversion(f"c{i}", click_ids={"fbc": f"fb.1.{i}"}, user={**user, "email": EMAILS[i % 2]}))
        for i in range(4)
    ]
    hostile: list[tuple[str | bytes, bytes]] = [
        ("h1", f"email={EMAILS[2]} phone={PHONES[1]} ip={IPS[1]}".encode()),  # not JSON
        ("h2", b"\xff\xfe" + f"{EMAILS[3]} {PHONES[0]}".encode()),  # not UTF-8
        (EMAILS[4], orjson.dumps(f.conversion("h3", status="paid"))),  # an email as the key
        ("h4", orjson.dumps(f.conversion("h4", status="paid", user={"nickname": EMAILS[5], "ip": IPS[1]}))),
    ]
    deployment.start_worker()
    deployment.start_dispatcher("all")
    await deployment.produce("conversions", [*good, *hostile])
    # 4 conversions x 3 entries fire; the hostile 4 are refused
    await deployment.wait_for("postbacks.results", lambda r: len(r) >= 12, "12 results", deadline=90)
    await deployment.wait_for("conversions.invalid", lambda r: len(r) >= 4, "4 invalid records")
    deployment.stop_all()

    admin = AIOKafkaAdminClient(bootstrap_servers=deployment.bootstrap)
    await admin.start()
    try:
        topics = sorted(t for t in await admin.list_topics() if t.startswith(deployment.prefix))
    finally:
        await admin.close()
    # What the test itself wrote is the input, not the service's output.
    inputs = {deployment.topic(name) for name in ("conversions", "campaign-rules", "offer-sources")}
    written: dict[str, bytes] = {}
    for topic in sorted(set(topics) - inputs):
        for record in await read_topic(deployment.kafka, topic):
            written[f"{topic} key"] = written.get(f"{topic} key", b"") + (record.key or b"") + b"\n"
            written[topic] = written.get(topic, b"") + (record.value or b"") + b"\n"
    for process in deployment.workers:
        written[process.log_path.name] = process.log_path.read_bytes()

    # By design (README, "Deviations"): a client's IP travels unhashed on meta and tiktok postbacks, which
    # match on it, and so in the state their dispatcher keeps of each postback; the S2S URL's credential is
    # part of the rule and travels with the S2S postback (its state, its dead-letter copy). Nowhere else.
    state = f"{deployment.app_id}-dispatch-{{}}-state"
    carries_ip = {
        deployment.topic(name) for kind in ("meta", "tiktok") for name in (f"postbacks.{kind}", state.format(kind))
    }
    carries_s2s_url = {
        deployment.topic(name) for name in ("postbacks.s2s", state.format("s2s"), "postbacks.dead-letter")
    }
    leaks = [
        (where, secret)
        for where, data in written.items()
        for secret in [*EMAILS, *PHONES, *EXTERNAL_IDS, META_TOKEN, *([] if where in carries_ip else IPS)]
        if any(form in data for form in _encodings(secret))
    ]
    leaks += [
        (where, S2S_TOKEN)
        for where, data in written.items()
        if where not in carries_s2s_url and S2S_TOKEN.encode() in data
    ]
    assert leaks == [], leaks
    # the scan read what it should have: the refusal's echo reached the results record, scrubbed
    results = [orjson.loads(line) for line in written[deployment.topic("postbacks.results")].splitlines() if line]
    refused = [r for r in results if r["entry_id"] == "refused"]
    assert refused and all("token=" in r["last_detail"] and S2S_TOKEN not in r["last_detail"] for r in refused)
    assert len(meta.delivered) == 4
