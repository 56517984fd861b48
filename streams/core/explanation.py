"""What the worker does with one conversion for one campaign, entry by entry: the rule test's answer.

Built only from the worker's own steps, in the worker's order (streams/core/batch.py): the
effective status (`effective_status`), one decision per entry (`evaluate_entries`) and, for each
entry that fires, the postback message (`matched_postback`), whose payout and S2S URL are read back.
So an explanation cannot disagree with what the worker would publish; the tests check it against
`ConversionBatchProcessor` itself.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass

from streams.core.conversion import Conversion
from streams.core.matching import Fired, SkipReason, StatusSource, effective_status, evaluate_entries
from streams.core.messages import matched_postback
from streams.core.offer_sources import OfferSource
from streams.core.rules import CampaignRules, PostbackEntry

# The matcher's reasons, named for a person reading a rule test (the evaluation records and the
# metrics keep the matcher's short codes).
REASON_NAMES: dict[SkipReason, str] = {
    "disabled": "disabled",
    "type": "type_not_selected",
    "status": "status_not_selected",
    "payout": "below_min_payout",
    "duplicate": "already_fired",
}


@dataclass(frozen=True, slots=True)
class EntryExplanation:
    entry_id: str
    kind: str
    enabled: bool
    destination_id: str
    fired: bool
    reason: str | None  # a REASON_NAMES value; None when the entry fires
    detail: str | None  # why, in words; names no personal data
    payout_sent: str | None  # decimal string, after payout_percent; None when the entry does not fire
    postback_id: str | None
    url: str | None  # the rendered S2S URL of a firing s2s entry
    method: str | None


@dataclass(frozen=True, slots=True)
class Explanation:
    status: str
    status_source: StatusSource
    entries: tuple[EntryExplanation, ...]

    @property
    def fired_postback_ids(self) -> frozenset[str]:
        return frozenset(e.postback_id for e in self.entries if e.postback_id is not None)


def explain_conversion(
    conversion: Conversion,
    rules: CampaignRules,
    offer_source: OfferSource | None,
    default_status: str,
    already_fired: Container[str] = frozenset(),
) -> Explanation:
    """Every entry of `rules` for `conversion`: whether it fires and why not, as the worker decides.

    `offer_source` is the conversion's offer source as the worker's view holds it (None: none named,
    or unknown), `default_status` the service's DEFAULT_STATUS, `already_fired` the postback ids the
    conversion fired before (the rule test has none).
    """
    offer_default = offer_source.default_status if offer_source else None
    status, status_source = effective_status(conversion.status, offer_default, default_status)
    decisions = evaluate_entries(
        rules, conversion.conversion_id, conversion.type, status, conversion.payout, already_fired
    )
    explained: list[EntryExplanation] = []
    for decision in decisions:
        entry = decision.entry
        if isinstance(decision, Fired):
            # No user identifiers, no source position: the payout and the URL do not depend on them.
            message = matched_postback(conversion, decision, status, status_source, {}, {}, None, "")
            explained.append(
                EntryExplanation(
                    entry_id=entry.id,
                    kind=entry.kind,
                    enabled=entry.enabled,
                    destination_id=entry.destination_id,
                    fired=True,
                    reason=None,
                    detail=None,
                    payout_sent=message["payout"],
                    postback_id=decision.postback_id,
                    url=message.get("url"),
                    method=message.get("method"),
                )
            )
        else:
            explained.append(
                EntryExplanation(
                    entry_id=entry.id,
                    kind=entry.kind,
                    enabled=entry.enabled,
                    destination_id=entry.destination_id,
                    fired=False,
                    reason=REASON_NAMES[decision.reason],
                    detail=_detail(decision.reason, entry, conversion, status),
                    payout_sent=None,
                    postback_id=None,
                    url=None,
                    method=None,
                )
            )
    return Explanation(status, status_source, tuple(explained))


def _detail(reason: SkipReason, entry: PostbackEntry, conversion: Conversion, status: str) -> str:
    condition = entry.condition
    if reason == "type" and condition is not None and condition.types is not None:
        return f"type {conversion.type!r} is not one of {sorted(condition.types)}"
    if reason == "status" and condition is not None and condition.statuses is not None:
        return f"status {status!r} is not one of {sorted(condition.statuses)}"
    if reason == "payout" and condition is not None and condition.min_payout is not None:
        return f"payout {conversion.payout_text} is below min_payout {condition.min_payout}"
    if reason == "duplicate":
        return "this conversion already fired this entry for the same status and type"
    return "the entry is disabled"
