"""What the benchmarks feed the service: campaign rules, realistic conversions, and matched postbacks.

Campaigns have three entries each (two S2S, one Meta or Google Ads), every one conditional, so that about
30 % of the entries fire over the conversions made here (`fired_share` measures it). A conversion is about
550 bytes of JSON: click ids (gclid, fbc, the source's own), user data (email, a phone number in half of
them, IP, user agent), subs, a transaction id. Deterministic for a seed; `occurred_at` is minutes before now,
because the platforms refuse old events.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from devtools.bench.minimal_rules import compile_rules, evaluate
from streams.core.batch import ConversionBatchProcessor, MatcherConfig, SourceRecord
from streams.core.fired_record import FiredRecord
from streams.core.offer_sources import OfferSource, parse_offer_source
from streams.core.rules import CampaignRules, parse_campaign_rules

TYPES = ("deposit", "lead", "purchase", "conversion")
TYPE_WEIGHTS = (35, 30, 20, 15)
# approved 25 %, pending 40 %, declined 25 %, none 10 % (half of those with an offer source defaulting to pending)
STATUSES = ("approved", "pending", "declined", None)
STATUS_WEIGHTS = (25, 40, 25, 10)
PAYOUTS = ("0", "1.50", "5", "12.75", "20", "35", "49.99", "80", "120", "250")  # 3 in 10 at or above 60
OFFER_SOURCES: list[dict[str, Any]] = [
    {"offer_source_id": "os-pending", "default_status": "pending"},
    {"offer_source_id": "os-approved", "default_status": "approved"},
]
USER_AGENT = "Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 Chrome/126.0 Mobile"
META_SECRET = "META_CASINO"
GOOGLE_SECRET = "GADS_CASINO"


def campaign_id(index: int) -> str:
    return f"camp-{index:06d}"


def tracker_url(campaign: int, entry: int) -> str:
    """An S2S URL template as a tracker has it (the matcher benchmark delivers nothing)."""
    return (
        f"https://t{campaign % 20}.tracker.example/postback/{entry}?clickid={{external_id}}&payout={{payout}}"
        "&status={status}&goal={type}&txid={transaction_id}&cid={conversion_id}&zone={sub1}"
    )


def campaign_documents(count: int, url_for: Callable[[int, int], str] = tracker_url) -> list[dict[str, Any]]:
    """`count` campaigns of three conditional entries: S2S approved-only, S2S deposits, and a high-value Meta
    (even campaigns) or Google Ads (odd) entry."""
    campaigns = []
    for c in range(count):
        high_value: dict[str, Any]
        if c % 2 == 0:
            high_value = {
                "id": "meta-value",
                "kind": "meta",
                "pixel_id": "731000000000001",
                "credentials": META_SECRET,
                "event_names": {"deposit": "Purchase", "purchase": "Purchase", "lead": "Lead", "conversion": "Lead"},
                "payout_percent": 50,
            }
        else:
            high_value = {
                "id": "google-value",
                "kind": "google_ads",
                "customer_id": "123-456-7890",
                "conversion_action": "customers/1234567890/conversionActions/99",
                "credentials": GOOGLE_SECRET,
            }
        high_value["conditional"] = {"enabled": True, "min_payout": "60"}
        campaigns.append(
            {
                "campaign_id": campaign_id(c),
                "postbacks": [
                    {
                        "id": "s2s-approved",
                        "kind": "s2s",
                        "url": url_for(c, 0),
                        "conditional": {"enabled": True, "statuses": ["approved"]},
                    },
                    {
                        "id": "s2s-deposits",
                        "kind": "s2s",
                        "url": url_for(c, 1),
                        "conditional": {
                            "enabled": True,
                            "types": ["deposit"],
                            "statuses": ["approved", "pending"],
                        },
                    },
                    high_value,
                ],
            }
        )
    return campaigns


def single_s2s_campaigns(count: int, url_for: Callable[[int], str]) -> list[dict[str, Any]]:
    """`count` campaigns with one unconditional S2S entry each: every conversion is one request."""
    return [
        {"campaign_id": campaign_id(c), "postbacks": [{"id": "s2s", "kind": "s2s", "url": url_for(c)}]}
        for c in range(count)
    ]


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def conversion_document(
    index: int, campaigns: int, rng: random.Random, tag: str, now: datetime, subs: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """One conversion of about 550 bytes; `subs` replaces the default subs (the latency probe's timestamps)."""
    status = rng.choices(STATUSES, STATUS_WEIGHTS)[0]
    conversion: dict[str, Any] = {
        "conversion_id": f"{tag}-{index:09d}",
        "click_id": f"{rng.getrandbits(128):032x}",
        "campaign_id": campaign_id(rng.randrange(campaigns)),
        "type": rng.choices(TYPES, TYPE_WEIGHTS)[0],
        "payout": rng.choice(PAYOUTS),
        "transaction_id": f"tx-{rng.getrandbits(48):012x}",
        "occurred_at": iso(now - timedelta(minutes=rng.randrange(1, 600))),
        "click_ids": {
            "external_id": f"src-{rng.getrandbits(64):016x}",
            "gclid": f"EAIaIQobChMI{rng.getrandbits(64):016x}",
            "fbc": f"fb.1.1700000000000.{rng.getrandbits(64):016x}",
        },
        "user": {
            "email": f"player.{index}@mail{index % 50}.example",
            "ip": f"203.0.113.{index % 250 + 1}",
            "user_agent": USER_AGENT,
        },
        "subs": dict(subs) if subs is not None else {"sub1": f"zone-{index % 977}"},
    }
    if status is not None:
        conversion["status"] = status
    elif index % 2 == 0:
        conversion["offer_source_id"] = "os-pending"
    if index % 2 == 0:
        conversion["user"]["phone"] = f"+49151{rng.randrange(10**7, 10**8)}"
    return conversion


def conversions(count: int, campaigns: int, seed: int, tag: str) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) of `count` conversions, encoded."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    for i in range(count):
        document = conversion_document(i, campaigns, rng, tag, now)
        yield document["conversion_id"].encode(), orjson.dumps(document)


def fired_share(campaign_docs: list[dict[str, Any]], sample: Iterable[bytes]) -> tuple[float, float]:
    """(share of the entries that fire, mean bytes per conversion) over `sample`."""
    rules = compile_rules(campaign_docs, OFFER_SOURCES)
    entries = fired = size = seen = 0
    for value in sample:
        conversion = orjson.loads(value)
        entries += len(rules.campaigns.get(conversion["campaign_id"], ()))
        fired += len(evaluate(rules, conversion))
        size += len(value)
        seen += 1
    return (fired / entries if entries else 0.0), (size / seen if seen else 0.0)


# --- matched postbacks, as the real matcher makes them (for the dispatch benchmarks) ----------------------


class _NothingFired:
    def get(self, conversion_id: str, partition: int) -> FiredRecord | None:
        return None


def matched_postbacks(
    campaign_docs: list[dict[str, Any]], records: Iterable[tuple[bytes, bytes]], postback_topics: Mapping[str, str]
) -> Iterator[tuple[str, bytes, bytes]]:
    """(topic, key, value) of every postback the service's own matcher (streams/core) fires for `records`."""
    rules: dict[str, CampaignRules] = {}
    for doc in campaign_docs:
        rules[doc["campaign_id"]] = parse_campaign_rules(doc["campaign_id"].encode(), orjson.dumps(doc))
    sources: dict[str, OfferSource] = {
        doc["offer_source_id"]: parse_offer_source(doc["offer_source_id"].encode(), orjson.dumps(doc))
        for doc in OFFER_SOURCES
    }
    processor = ConversionBatchProcessor(
        MatcherConfig(
            postback_topics=dict(postback_topics),
            invalid_topic="bench.invalid",
            evaluations_topic=None,
            default_status="approved",
            max_conversion_bytes=65_536,
            fired_retention_seconds=90 * 86400,
        ),
        rules_for=rules.get,
        offer_source_for=sources.get,
        fired_state=_NothingFired(),
    )
    batch: list[SourceRecord] = []
    for offset, (key, value) in enumerate(records):
        batch.append(SourceRecord("conversions", 0, offset, None, key, value))
        if len(batch) >= 1000:
            yield from _outputs(processor, batch)
            batch = []
    if batch:
        yield from _outputs(processor, batch)


def _outputs(processor: ConversionBatchProcessor, batch: list[SourceRecord]) -> Iterator[tuple[str, bytes, bytes]]:
    result = processor.process(batch)
    if result.invalid:
        raise ValueError(f"the bench made invalid conversions: {dict(result.invalid)}")
    for message in result.messages:
        assert message.key is not None and message.value is not None
        yield message.topic, message.key, message.value
