"""Sample offer sources, campaign rules and conversions for `make demo`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

OFFER_SOURCES: list[dict[str, Any]] = [
    {"offer_source_id": "net-cpa", "default_status": "pending", "name": "CPA network that confirms later"},
    {"offer_source_id": "net-instant", "default_status": "approved", "name": "Network that pays on the spot"},
]

CAMPAIGNS: list[dict[str, Any]] = [
    {
        "campaign_id": "casino-de",
        "postbacks": [
            {
                "id": "propeller-paid-deposits",
                "kind": "s2s",
                "url": "https://ad.propellerads.example/conversion.php?aid=8312&visitor_id={external_id}"
                "&payout={payout}&goal={type}",
                "conditional": {"enabled": True, "types": ["deposit"], "statuses": ["approved"]},
            },
            {
                "id": "meta-pixel",
                "kind": "meta",
                "pixel_id": "731000000000001",
                "credentials": "META_CASINO",
                "event_names": {"deposit": "Purchase", "lead": "Lead"},
                "payout_percent": 50,
            },
            {
                "id": "google-deposits",
                "kind": "google_ads",
                "customer_id": "123-456-7890",
                "conversion_action": "customers/1234567890/conversionActions/99",
                "credentials": "GADS_CASINO",
                "conditional": {"enabled": True, "types": ["deposit"]},
            },
            {
                "id": "google-leads-off",
                "kind": "google_ads",
                "enabled": False,
                "customer_id": "123-456-7890",
                "conversion_action": "customers/1234567890/conversionActions/100",
                "credentials": "GADS_CASINO",
            },
        ],
    },
    {
        "campaign_id": "sweeps-us",
        "postbacks": [
            {
                "id": "keitaro",
                "kind": "s2s",
                "url": "https://tracker.keitaro.example/postback?subid={external_id}&status={status}&payout={payout}"
                "&tid={transaction_id}&src={sub1}",
                "status_names": {"approved": "sale", "declined": "rejected"},
            },
            {
                "id": "tiktok-high-value",
                "kind": "tiktok",
                "pixel_code": "CDEMO0000000001",
                "credentials": "TIKTOK_SWEEPS",
                "conditional": {"enabled": True, "min_payout": "5"},
            },
        ],
    },
    {
        "campaign_id": "nutra-uk",
        "postbacks": [
            {
                "id": "mgid-approved",
                "kind": "s2s",
                "url": "https://a.mgid.example/postback?c={clickid}&e={type}&r={payout}",
                "conditional": {"enabled": True, "statuses": ["approved"]},
                "payout_percent": "80",
            },
            {
                "id": "bing-purchases",
                "kind": "microsoft_ads",
                "customer_id": "100200300",
                "account_id": "400500600",
                "conversion_name": "Purchase",
                "credentials": "MSADS_NUTRA",
                "conditional": {"enabled": True, "types": ["purchase"]},
            },
        ],
    },
]

# The demo's traffic sources answer on a local server: each real-looking host maps to a path there.
SOURCE_HOSTS = {
    "https://ad.propellerads.example": "propeller",
    "https://tracker.keitaro.example": "keitaro",
    "https://a.mgid.example": "mgid",
}


def campaigns_for(sink_url: str) -> list[dict[str, Any]]:
    """CAMPAIGNS with their S2S URLs pointed at the demo's local sink."""
    campaigns: list[dict[str, Any]] = []
    for campaign in CAMPAIGNS:
        entries = []
        for entry in campaign["postbacks"]:
            entry = dict(entry)
            for host, source in SOURCE_HOSTS.items():
                if entry.get("url", "").startswith(host):
                    entry["url"] = f"{sink_url}/{source}" + entry["url"][len(host) :]
            entries.append(entry)
        campaigns.append({**campaign, "postbacks": entries})
    return campaigns


# Relative to now: Meta refuses events older than 7 days, Microsoft than 90, so fixed dates would
# stop working some day after they were written.
_START = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)


def minutes_after_start(minute: int) -> str:
    return (_START + timedelta(minutes=minute)).isoformat().replace("+00:00", "Z")


def days_before_start(days: int) -> str:
    return (_START - timedelta(days=days)).isoformat().replace("+00:00", "Z")


def _conversion(cid: str, campaign: str, minute: int, **fields: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "conversion_id": cid,
        "click_id": f"rt-{cid}",
        "campaign_id": campaign,
        "occurred_at": minutes_after_start(minute),
        "click_ids": {"external_id": f"src-{cid}", "gclid": f"gclid-{cid}"},
        "user": {"email": f"{cid}@players.example", "ip": "203.0.113.7", "user_agent": "Mozilla/5.0"},
    }
    event.update(fields)
    return event


# (description, key, value): the stream the demo sends, in order; bytes are sent as they are.
CONVERSIONS: list[tuple[str, str, Any]] = [
    (
        "approved deposit",
        "cv-1001",
        _conversion("cv-1001", "casino-de", 1, type="deposit", status="approved", payout="40.00"),
    ),
    ("pending deposit", "cv-1002", _conversion("cv-1002", "casino-de", 2, type="deposit", status="pending", payout=25)),
    (
        "... now approved (update)",
        "cv-1002",
        _conversion("cv-1002", "casino-de", 2, type="deposit", status="approved", payout=25),
    ),
    (
        "... approved again (re-delivery)",
        "cv-1002",
        _conversion("cv-1002", "casino-de", 2, type="deposit", status="approved", payout=25),
    ),
    ("lead, no payout", "cv-1003", _conversion("cv-1003", "casino-de", 3, type="lead")),
    (
        "no status: offer source default",
        "cv-2001",
        _conversion(
            "cv-2001",
            "sweeps-us",
            4,
            type="conversion",
            offer_source_id="net-cpa",
            payout="3.5",
            transaction_id="T-88",
            subs={"sub1": "push zone 7"},
        ),
    ),
    (
        "no status: service default",
        "cv-2002",
        _conversion("cv-2002", "sweeps-us", 5, payout="12.75", subs={"sub1": "pop & more"}),
    ),
    ("declined", "cv-2003", _conversion("cv-2003", "sweeps-us", 6, status="declined", payout="9")),
    (
        "approved purchase",
        "cv-3001",
        _conversion(
            "cv-3001",
            "nutra-uk",
            7,
            type="purchase",
            status="approved",
            payout="19.99",
            click_ids={"msclkid": "ms-3001"},
        ),
    ),
    (
        "pending purchase",
        "cv-3002",
        _conversion(
            "cv-3002",
            "nutra-uk",
            8,
            type="purchase",
            status="pending",
            payout="19.99",
            click_ids={"msclkid": "ms-3002"},
        ),
    ),
    (
        "approved purchase, 100 days old",
        "cv-3003",
        _conversion(
            "cv-3003",
            "nutra-uk",
            9,
            type="purchase",
            status="approved",
            payout="24.50",
            click_ids={"msclkid": "ms-3003"},
            occurred_at=days_before_start(100),
        ),
    ),
    ("campaign without rules", "cv-4001", _conversion("cv-4001", "unknown-campaign", 9, status="approved", payout="1")),
    ("INVALID: not JSON", "cv-bad-1", b"conversion_id=cv-bad-1&payout=5"),
    ("INVALID: negative payout", "cv-bad-2", _conversion("cv-bad-2", "casino-de", 10, payout="-5")),
    (
        "INVALID: no click_id",
        "cv-bad-3",
        {"conversion_id": "cv-bad-3", "campaign_id": "casino-de", "occurred_at": minutes_after_start(11)},
    ),
    ("INVALID: unknown status", "cv-bad-4", _conversion("cv-bad-4", "casino-de", 12, status="paid")),
]
