"""The messages the worker writes: matched postbacks (contract §3) and optional evaluation records."""

from __future__ import annotations

from typing import Any

from streams.core.conversion import Conversion
from streams.core.decimals import format_decimal
from streams.core.matching import Decision, Fired, Skipped, StatusSource
from streams.core.url_template import render_postback_url

SCHEMA_VERSION = 1
# Meta and TikTok match on the client's IP and user agent as they are (their APIs take them
# unhashed); no other destination needs them, so no other postback topic carries them.
KINDS_WITH_CLIENT_CONTEXT = frozenset({"meta", "tiktok"})


def s2s_macro_values(
    conversion: Conversion, status: str, payout_text: str, status_names: dict[str, str], type_names: dict[str, str]
) -> dict[str, str]:
    """The values of contract §3's S2S macros for one conversion and entry (before URL-encoding)."""
    values: dict[str, str] = {
        "clickid": conversion.click_id,
        "conversion_id": conversion.conversion_id,
        "campaign_id": conversion.campaign_id,
        "external_id": conversion.click_ids.get("external_id", ""),
        "type": type_names.get(conversion.type, conversion.type),
        "status": status_names.get(status, status),
        "payout": payout_text,
        "currency": conversion.currency,
        "transaction_id": conversion.transaction_id or "",
        "timestamp": str(conversion.occurred_at_unix),
    }
    for key, value in conversion.subs.items():
        values["subs." + key] = value
        if key.startswith("sub") and key[3:].isdigit():
            values[key] = value
    return values


def matched_postback(
    conversion: Conversion,
    fired: Fired,
    status: str,
    status_source: StatusSource,
    hashed_user: dict[str, str],
    source: dict[str, Any],
    received_at: str | None,
    matched_at: str,
) -> dict[str, Any]:
    """The message for one fired entry, as `schemas/matched-postback.schema.json` describes it."""
    entry = fired.entry
    payout_text = format_decimal(fired.payout)
    user = dict(hashed_user)
    if entry.kind in KINDS_WITH_CLIENT_CONTEXT:
        for name in ("ip", "user_agent"):
            if name in conversion.user:
                user[name] = conversion.user[name]
    message: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "postback_id": fired.postback_id,
        "kind": entry.kind,
        "destination_id": entry.destination_id,
        "entry_id": entry.id,
        "campaign_id": conversion.campaign_id,
        "conversion_id": conversion.conversion_id,
        "click_id": conversion.click_id,
        "type": conversion.type,
        "status": status,
        "status_source": status_source,
        "payout": payout_text,
        "conversion_payout": conversion.payout_text,
        "currency": conversion.currency,
        "transaction_id": conversion.transaction_id,
        "occurred_at": conversion.occurred_at,
        "occurred_at_unix": conversion.occurred_at_unix,
        "received_at": received_at,
        "matched_at": matched_at,
        "entry": entry.spec,
        "click_ids": conversion.click_ids,
        "user": user,
        "subs": conversion.subs,
        "source": source,
    }
    if entry.url_template is not None:
        values = s2s_macro_values(conversion, status, payout_text, dict(entry.status_names), dict(entry.type_names))
        message["url"] = render_postback_url(entry.url_template, values)
        message["method"] = entry.method
    return message


def evaluation_record(
    conversion: Conversion,
    status: str,
    status_source: StatusSource,
    decisions: list[Decision] | None,
    topic_for_kind: dict[str, str],
    source: dict[str, Any],
    evaluated_at: str,
) -> dict[str, Any]:
    """What happened to one conversion: the entries that fired and why the others did not.

    `decisions` is None when the campaign has no rules (contract §2.7).
    """
    fired: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    for decision in decisions or ():
        entry = decision.entry
        if isinstance(decision, Skipped):
            skipped.append(
                {
                    "entry_id": entry.id,
                    "kind": entry.kind,
                    "destination_id": entry.destination_id,
                    "reason": decision.reason,
                }
            )
            continue
        # No rendered URL: it may carry subs and external ids (the trace shows destination_id instead),
        # and scrubbing it cost as much as the rest of the record.
        fired.append(
            {
                "entry_id": entry.id,
                "kind": entry.kind,
                "postback_id": decision.postback_id,
                "destination_id": entry.destination_id,
                "payout": format_decimal(decision.payout),
                "topic": topic_for_kind[entry.kind],
            }
        )
    outcome = "no_rules" if decisions is None else "fired" if fired else "nothing_fired"
    return {
        "schema_version": SCHEMA_VERSION,
        "conversion_id": conversion.conversion_id,
        "campaign_id": conversion.campaign_id,
        "type": conversion.type,
        "status": status,
        "status_source": status_source,
        "payout": conversion.payout_text,
        "occurred_at": conversion.occurred_at,
        "outcome": outcome,
        "fired": fired,
        "skipped": skipped,
        "evaluated_at": evaluated_at,
        "source": source,
    }
