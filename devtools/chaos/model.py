"""The reference model of contract §2 (written for this suite, not the service's matcher) and the inputs.

A campaign's entries, conversions with status updates and exact re-deliveries, hostile records, and
what each conversion version must fire. Rules change mid-run, and a worker that crashes reprocesses
records under whatever rules it holds then, so a version sent before the change (or within `settle`
seconds after it) may fire under either set: what both fire must arrive, what neither fires must not.
"""

from __future__ import annotations

import random
import zlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson

from streams.core.postback_ids import postback_id

STATUSES = ("approved", "pending", "declined", "other")
TYPES = ("conversion", "lead", "deposit", "purchase")
OFFER_SOURCES = {"os-pending": "pending", "os-approved": "approved"}
SERVICE_DEFAULT_STATUS = "approved"
PLATFORM_KINDS = ("meta", "google_ads", "tiktok", "microsoft_ads")
KINDS = ("s2s", *PLATFORM_KINDS)
# How often a campaign has an entry of each platform kind.
PLATFORM_SHARE = {"meta": 0.5, "google_ads": 0.3, "tiktok": 0.3, "microsoft_ads": 0.25}
HOSTILE_KINDS = (
    "oversized",
    "control_bytes",
    "not_json",
    "not_utf8",
    "deep",
    "huge_number",
    "unknown_campaign",
    "key_mismatch",
)
# The S2S URL's credential: it travels with the S2S postback by design and must appear nowhere else.
S2S_TOKEN = "chaos-s2s-token-7c41d09e5b"
PII_DOMAIN = "players.example"
HOSTILE_PII_DOMAIN = "hostile.example"

Fired = tuple[str, str, str, str]  # (conversion_id, entry id, effective status, type): a postback id's inputs


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Entry:
    id: str
    kind: str
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


def fired_by(version: dict[str, Any], entries: list[Entry]) -> dict[str, Fired]:
    """postback_id -> inputs, for every entry this version of a conversion fires."""
    status = effective_status(version)
    conversion_type = version.get("type") or "conversion"
    payout = Decimal(str(version.get("payout") or "0"))
    fired = [
        (version["conversion_id"], entry.id, status, conversion_type)
        for entry in entries
        if entry.fires(status, conversion_type, payout)
    ]
    return {postback_id(*inputs): inputs for inputs in fired}


# --- campaigns -----------------------------------------------------------------------------------------


def random_entry(rng: random.Random, entry_id: str, kind: str) -> Entry:
    enabled = rng.random() > 0.1
    if kind == "microsoft_ads":
        # Microsoft dedups on (click, conversion time), not on our id: one postback per conversion at
        # most (approved only, never the type an update switches to), so every repeat there is a real one.
        types = tuple(rng.sample(TYPES[:3], rng.randint(1, 2)))
        return Entry(entry_id, kind, enabled, True, types, ("approved",))
    if rng.random() < 0.4:
        return Entry(entry_id, kind, enabled, conditional=False)
    types = tuple(rng.sample(TYPES, rng.randint(1, 2))) if rng.random() < 0.5 else ()
    statuses = tuple(rng.sample(STATUSES, rng.randint(1, 2))) if rng.random() < 0.6 else ()
    min_payout = Decimal(rng.choice(("1", "5", "20"))) if rng.random() < 0.3 or not (types or statuses) else None
    return Entry(entry_id, kind, enabled, True, types, statuses, min_payout)


def make_campaigns(rng: random.Random, count: int) -> dict[str, list[Entry]]:
    campaigns: dict[str, list[Entry]] = {}
    for c in range(count):
        entries = [random_entry(rng, f"c{c}-s2s{e}", "s2s") for e in range(rng.randint(1, 2))]
        entries += [
            random_entry(rng, f"c{c}-{kind}", kind) for kind, share in PLATFORM_SHARE.items() if rng.random() < share
        ]
        campaigns[f"camp-{c}"] = entries
    return campaigns


def changed_rules(rng: random.Random, campaigns: dict[str, list[Entry]], share: float) -> dict[str, list[Entry]]:
    """New rules for `share` of the campaigns: conditions redrawn, an entry removed or added; Microsoft kept."""
    changed: dict[str, list[Entry]] = {}
    for name in rng.sample(sorted(campaigns), max(1, round(len(campaigns) * share))):
        entries = [e if e.kind == "microsoft_ads" else random_entry(rng, e.id, e.kind) for e in campaigns[name]]
        if len(entries) > 1 and rng.random() < 0.3:
            entries.remove(rng.choice([e for e in entries if e.kind != "microsoft_ads"]))
        if rng.random() < 0.5:
            entries.append(random_entry(rng, f"{name}-added-s2s", "s2s"))
        changed[name] = entries
    return changed


def rule_document(campaign_id: str, entries: list[Entry], sink_urls: list[str]) -> dict[str, Any]:
    postbacks = []
    for entry in entries:
        body: dict[str, Any] = {"id": entry.id, "kind": entry.kind, **destination_fields(entry, sink_urls)}
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


def destination_fields(entry: Entry, sink_urls: list[str]) -> dict[str, Any]:
    events = {"deposit": "Purchase", "lead": "Lead", "purchase": "Purchase", "conversion": "Purchase"}
    if entry.kind == "s2s":
        # the sink recognises each postback by its id's inputs; the token is the source's credential.
        # Traffic sources are many hosts, each with its own limits: here, the sink's ports.
        sink_url = sink_urls[zlib.crc32(entry.id.encode()) % len(sink_urls)]
        return {
            "url": f"{sink_url}/s2s/{entry.id}?cid={{conversion_id}}&st={{status}}&ty={{type}}&p={{payout}}"
            f"&token={S2S_TOKEN}"
        }
    if entry.kind == "meta":
        return {"pixel_id": "731000000000001", "credentials": "META_CASINO", "event_names": events}
    if entry.kind == "google_ads":
        return {
            "customer_id": "123-456-7890",
            "conversion_action": "customers/1234567890/conversionActions/99",
            "credentials": "GADS_CASINO",
        }
    if entry.kind == "tiktok":
        tiktok_events = {"deposit": "CompletePayment", "purchase": "CompletePayment", "lead": "SubmitForm"}
        return {"pixel_code": "CCHAOS0000000001", "credentials": "TIKTOK_SWEEPS", "event_names": tiktok_events}
    return {
        "customer_id": "100200300",
        "account_id": "400500600",
        "conversion_name": entry.id,
        "credentials": "MSADS_NUTRA",
    }


# --- conversions and hostile records -------------------------------------------------------------------


def personal_data(n: int) -> dict[str, str]:
    """Unique, recognisable personal data: the leak scan looks for exactly these shapes."""
    return {
        "email": f"cv-{n}@{PII_DOMAIN}",
        "phone": f"+44 7911 {n % 1_000_000:06d}",
        "ip": f"203.0.113.{n % 250 + 1}",
        "user_agent": "Mozilla/5.0 (chaos)",
        "external_id": f"crm-cv-{n}",
    }


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
        "click_ids": {
            "external_id": f"ext-{cid}",
            "fbc": f"fb.1.1700000000.{cid}",
            "gclid": f"gclid-{cid}",
            "ttclid": f"ttclid-{cid}",
            "msclkid": f"ms-{cid}",
        },
        "user": personal_data(n),
    }
    roll = rng.random()
    if roll < 0.2:
        first["offer_source_id"] = rng.choice(list(OFFER_SOURCES))
    elif roll >= 0.3:  # else: no status, no offer source, the service default
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


def hostile_record(rng: random.Random, n: int, campaign: str) -> tuple[str, bytes, bool, str]:
    """(key, value, expected on conversions.invalid, kind) of a hostile record; some carry personal data."""
    hid = f"hx-{n}"
    email = f"{hid}@{HOSTILE_PII_DOMAIN}"
    base = {
        "conversion_id": hid,
        "click_id": "x",
        "campaign_id": campaign,
        "occurred_at": iso(datetime.now(UTC).replace(microsecond=0)),
    }
    kind = rng.choice(HOSTILE_KINDS)
    if kind == "oversized":  # ~200 KB of raw control bytes: six bytes each once JSON-escaped
        head = orjson.dumps({**base, "user": {"email": email}})[:-1]
        return hid, head + b', "note": "' + b"\x01" * 200_000 + b'"}', True, kind
    if kind == "control_bytes":  # an unknown status made of control bytes (refused), next to an email
        status = "\x00\x07\x1b" * 3000
        return hid, orjson.dumps({**base, "status": status, "user": {"email": email}}), True, kind
    if kind == "not_json":
        return hid, f"conversion_id={hid}&payout=5&email={email}&phone=+44 7911 000{n % 1000:03d}".encode(), True, kind
    if kind == "not_utf8":
        return (
            hid,
            b'{"conversion_id": "' + hid.encode() + b'\xff\xfe\x80", "email": "' + email.encode() + b'"}',
            True,
            kind,
        )
    if kind == "deep":
        return hid, b"[" * 5000 + b"]" * 5000, True, kind
    if kind == "huge_number":
        return hid, orjson.dumps(base)[:-1] + b', "payout": 1e400}', True, kind
    if kind == "unknown_campaign":
        return hid, orjson.dumps({**base, "campaign_id": "no-such-campaign"}), False, kind
    return email, orjson.dumps(base), True, kind  # key != conversion_id, and an email as the key


# --- the plan of a run ---------------------------------------------------------------------------------


@dataclass
class Plan:
    """What is sent, in order, and what it must fire."""

    records: list[tuple[str, bytes | dict[str, Any]]]  # (key, value) in sending order
    versions: list[dict[str, Any] | None]  # the conversion version of each record (None: hostile)
    campaigns: dict[str, list[Entry]]
    changed: dict[str, list[Entry]]  # the rules published mid-run
    conversions: int
    invalid: int
    hostile: Counter[str] = field(default_factory=Counter)


def make_plan(rng: random.Random, conversions: int, campaigns: int, hostile_share: float, change_share: float) -> Plan:
    rules = make_campaigns(rng, campaigns)
    names = sorted(rules)
    # versions of one conversion are spread over the stream (updates come later) but stay in order
    slots: list[tuple[float, int, str, bytes | dict[str, Any], dict[str, Any] | None]] = []
    for n in range(conversions):
        at = rng.random()
        for i, version in enumerate(conversion_versions(rng, n, names)):
            slots.append((at, i, version["conversion_id"], version, version))
            at = min(1.0, at + rng.uniform(0.01, 0.2))
    hostile: Counter[str] = Counter()
    invalid = 0
    for n in range(round(len(slots) * hostile_share / (1 - hostile_share))):
        key, value, is_invalid, kind = hostile_record(rng, n, rng.choice(names))
        hostile[kind] += 1
        invalid += is_invalid
        slots.append((rng.random(), 0, key, value, None))
    slots.sort(key=lambda slot: (slot[0], slot[1]))
    return Plan(
        records=[(key, value) for _, _, key, value, _ in slots],
        versions=[version for *_, version in slots],
        campaigns=rules,
        changed=changed_rules(rng, rules, change_share),
        conversions=conversions,
        invalid=invalid,
        hostile=hostile,
    )


@dataclass
class Expectations:
    must: dict[str, Fired]  # postback_id -> inputs: must end with a results record
    allowed: set[str]  # every postback id that may fire (must, plus what only one set of rules fires)
    kind_of_entry: dict[str, str]


def expectations(plan: Plan, sent_at: list[float], changed_at: float, settle: float) -> Expectations:
    """What must fire and what may, given when each record was sent and when the rules changed."""
    must: dict[str, Fired] = {}
    allowed: set[str] = set()
    for version, at in zip(plan.versions, sent_at, strict=True):
        if version is None:
            continue
        campaign = version["campaign_id"]
        old = fired_by(version, plan.campaigns[campaign])
        if campaign not in plan.changed:
            must.update(old)
            allowed.update(old)
            continue
        new = fired_by(version, plan.changed[campaign])
        if at >= changed_at + settle:
            must.update(new)
            allowed.update(new)
        else:
            must.update({pid: inputs for pid, inputs in old.items() if pid in new})
            allowed.update(old, new)
    kinds = {e.id: e.kind for rules in (plan.campaigns, plan.changed) for es in rules.values() for e in es}
    return Expectations(must, allowed, kinds)
