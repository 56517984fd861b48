"""The conditional-postback rules of contract §2: which entries of a campaign fire for a conversion."""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from streams.core.decimals import apply_percent
from streams.core.postback_ids import postback_id
from streams.core.rules import CampaignRules, PostbackEntry

StatusSource = Literal["event", "offer_source", "default"]
SkipReason = Literal["disabled", "type", "status", "payout", "duplicate"]
SKIP_REASONS: tuple[SkipReason, ...] = ("disabled", "type", "status", "payout", "duplicate")


def effective_status(
    event_status: str | None, offer_source_default: str | None, service_default: str
) -> tuple[str, StatusSource]:
    """contract §2.2: the event's status, else its offer source's default, else the service default."""
    if event_status:
        return event_status, "event"
    if offer_source_default:
        return offer_source_default, "offer_source"
    return service_default, "default"


def skip_reason(entry: PostbackEntry, conversion_type: str, status: str, payout: Decimal) -> SkipReason | None:
    """Why `entry` does not fire (contract §2.1, 2.3, 2.4), or None when it does.

    Conditions are ANDed; the first failing one, in the order types, statuses, min_payout, is named.
    """
    if not entry.enabled:
        return "disabled"
    condition = entry.condition
    if condition is None:
        return None
    if condition.types is not None and conversion_type not in condition.types:
        return "type"
    if condition.statuses is not None and status not in condition.statuses:
        return "status"
    if condition.min_payout is not None and payout < condition.min_payout:
        return "payout"
    return None


@dataclass(frozen=True, slots=True)
class Fired:
    entry: PostbackEntry
    postback_id: str
    payout: Decimal  # after payout_percent (contract §2.6)


@dataclass(frozen=True, slots=True)
class Skipped:
    entry: PostbackEntry
    reason: SkipReason


Decision = Fired | Skipped


def evaluate_entries(
    rules: CampaignRules,
    conversion_id: str,
    conversion_type: str,
    status: str,
    payout: Decimal,
    already_fired: Container[str],
) -> list[Decision]:
    """One decision per entry of the campaign.

    contract §2.5: an entry fires at most once per (conversion_id, entry id, effective status, type); the
    postback id is derived from exactly that tuple, so `already_fired` holds postback ids.
    """
    decisions: list[Decision] = []
    for entry in rules.entries:
        reason = skip_reason(entry, conversion_type, status, payout)
        if reason is not None:
            decisions.append(Skipped(entry, reason))
            continue
        pid = postback_id(conversion_id, entry.id, status, conversion_type)
        if pid in already_fired:
            decisions.append(Skipped(entry, "duplicate"))
        else:
            decisions.append(Fired(entry, pid, apply_percent(payout, entry.payout_percent)))
    return decisions
