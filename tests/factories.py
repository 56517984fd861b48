"""Test data: valid messages with overridable fields."""

from __future__ import annotations

from typing import Any

OCCURRED_AT = "2026-11-20T10:00:00Z"
OCCURRED_AT_UNIX = 1_763_632_800


def conversion(conversion_id: str = "cv-1", campaign_id: str = "camp-1", **fields: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "conversion_id": conversion_id,
        "click_id": f"click-{conversion_id}",
        "campaign_id": campaign_id,
        "type": "deposit",
        "status": "approved",
        "payout": "10.00",
        "currency": "USD",
        "occurred_at": OCCURRED_AT,
    }
    event.update(fields)
    return {k: v for k, v in event.items() if v is not ...}


def s2s_entry(entry_id: str = "src", **fields: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": entry_id,
        "kind": "s2s",
        "url": "https://tracker.example/postback?cid={clickid}&status={status}&payout={payout}&type={type}",
    }
    entry.update(fields)
    return entry


def meta_entry(entry_id: str = "fb", **fields: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": entry_id,
        "kind": "meta",
        "pixel_id": "1234567890",
        "credentials": "META_MAIN",
        "event_names": {"deposit": "Purchase", "lead": "Lead"},
    }
    entry.update(fields)
    return entry


def google_entry(entry_id: str = "gads", **fields: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": entry_id,
        "kind": "google_ads",
        "customer_id": "123-456-7890",
        "conversion_action": "customers/1234567890/conversionActions/42",
        "credentials": "GADS_MAIN",
    }
    entry.update(fields)
    return entry


def conditional(**conditions: Any) -> dict[str, Any]:
    return {"enabled": True, **conditions}


def campaign(campaign_id: str = "camp-1", *entries: dict[str, Any]) -> dict[str, Any]:
    return {"campaign_id": campaign_id, "postbacks": list(entries)}
