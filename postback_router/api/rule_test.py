"""The rule test (`POST /v1/campaigns/{campaign_id}/rules/test`): a sample conversion through the worker's
own evaluation (streams/core/explanation.py), against the saved rules or an unsaved document.

Nothing is written anywhere. The sample is validated as the workers validate a conversion, the rules as
`PUT .../rules` validates them; the answer carries no personal data of the sample (no `user` block,
and the rendered URLs are shown as the evaluation records show them: credentials and email addresses
replaced with `[redacted]`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from schemas.errors import FieldError, InvalidInput
from schemas.redaction import scrub
from streams.core.conversion import Conversion, parse_conversion
from streams.core.explanation import Explanation
from streams.core.rules import CampaignRules, parse_campaign_rules

SAMPLE_CONVERSION_ID = "rule-test"
BODY_FIELDS = frozenset({"conversion", "rules"})


class RuleTestRefused(Exception):
    """The request body cannot be tested; `errors` names each failing field, as `PUT .../rules` does."""

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__(errors[0].message if errors else "invalid rule test")
        self.errors = errors


@dataclass(frozen=True, slots=True)
class RuleTestRequest:
    conversion: Conversion
    rules: CampaignRules | None  # None: test the campaign's saved rules


def read_rule_test(body: Any, campaign_id: str, max_conversion_bytes: int, now: datetime) -> RuleTestRequest:
    """The sample and the (optional) rules of a request body; raises RuleTestRefused.

    The sample may leave out `campaign_id` (the path gives it), `conversion_id` and `occurred_at`
    (`rule-test` and now): they do not change which entry fires.
    """
    if not isinstance(body, dict):
        raise RuleTestRefused([FieldError("(body)", "must be a JSON object with a `conversion`")])
    unknown = sorted(set(body) - BODY_FIELDS)
    if unknown:
        raise RuleTestRefused([FieldError(name, "is not a field of a rule test") for name in unknown])
    sample = body.get("conversion")
    if not isinstance(sample, dict):
        raise RuleTestRefused([FieldError("conversion", "is required and must be a JSON object")])
    errors: list[FieldError] = []
    conversion = _sample(sample, campaign_id, max_conversion_bytes, now, errors)
    rules = None
    if body.get("rules") is not None:
        rules = _rules(body["rules"], campaign_id, errors)
    if errors or conversion is None:
        raise RuleTestRefused(errors)
    return RuleTestRequest(conversion, rules)


def _sample(
    sample: dict[str, Any], campaign_id: str, max_bytes: int, now: datetime, errors: list[FieldError]
) -> Conversion | None:
    event = {
        "campaign_id": campaign_id,
        "conversion_id": SAMPLE_CONVERSION_ID,
        "occurred_at": now.isoformat(timespec="seconds"),
        **sample,
    }
    if event["campaign_id"] != campaign_id:
        errors.append(FieldError("conversion.campaign_id", "must equal the campaign id in the path"))
        return None
    key = event["conversion_id"].encode("utf-8") if isinstance(event["conversion_id"], str) else None
    try:
        return parse_conversion(key, orjson.dumps(event), max_bytes)
    except InvalidInput as error:
        errors.extend(_within("conversion", error))
        return None


def _rules(document: Any, campaign_id: str, errors: list[FieldError]) -> CampaignRules | None:
    if isinstance(document, dict):
        document = {"campaign_id": campaign_id, **document}
        if document["campaign_id"] != campaign_id:
            errors.append(FieldError("rules.campaign_id", "must equal the campaign id in the path"))
            return None
    try:
        return parse_campaign_rules(campaign_id.encode("utf-8"), orjson.dumps(document))
    except InvalidInput as error:
        errors.extend(_within("rules", error))
        return None


def _within(section: str, error: InvalidInput) -> list[FieldError]:
    """The parser's errors, each named from the request body (`conversion.payout`, `rules.postbacks.0.url`)."""
    found = error.errors or [FieldError(error.field or "(record)", error.message)]
    return [FieldError(section if e.field == "(record)" else f"{section}.{e.field}", e.message) for e in found]


def rule_test_answer(
    campaign_id: str, conversion: Conversion, explanation: Explanation, rules_source: str
) -> dict[str, Any]:
    """The answer: the sample's effective status and, for every entry, fired or why not."""
    entries = []
    for entry in explanation.entries:
        entries.append(
            {
                "entry_id": entry.entry_id,
                "kind": entry.kind,
                "enabled": entry.enabled,
                "destination_id": entry.destination_id,
                "fired": entry.fired,
                "reason": entry.reason,
                "detail": entry.detail,
                "payout_sent": entry.payout_sent,
                "status": explanation.status,
                "status_source": explanation.status_source,
                "postback_id": entry.postback_id,
                # as the evaluation records keep it: the source's credential stays on the postback topic
                "url": None if entry.url is None else scrub(entry.url, phones=False),
                "method": entry.method,
            }
        )
    return {
        "campaign_id": campaign_id,
        "rules_source": rules_source,
        "conversion_id": conversion.conversion_id,
        "type": conversion.type,
        "status": explanation.status,
        "status_source": explanation.status_source,
        "payout": conversion.payout_text,
        "currency": conversion.currency,
        "fired": sum(1 for entry in explanation.entries if entry.fired),
        "entries": entries,
    }
