"""The baselines' evaluation of the same campaign rules: contract §2's conditions and nothing more.

What a plain client loop does with the rules the service is given: per entry `enabled`, `types`, `statuses`
and `min_payout`; the effective status from the event, its offer source's default or the service default;
the payout scaled by `payout_percent`; an S2S URL with its macros filled in. No schema validation, no
fired-state (duplicates), no hashing of personal data, no postback ids, no invalid-record handling: the
service does all of those, and the ratios say what they cost. Pure: the raw loop and the Faust agents import
it, and tests/devtools checks it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import orjson

_MACRO = re.compile(r"\{([A-Za-z0-9_.-]+)\}")


@dataclass(frozen=True, slots=True)
class MinimalEntry:
    entry_id: str
    kind: str
    enabled: bool
    types: frozenset[str] | None
    statuses: frozenset[str] | None
    min_payout: float | None
    percent: float
    url_parts: tuple[str, ...]  # literal, macro name, literal, ...; empty unless s2s

    def fires(self, conversion_type: str, status: str, payout: float) -> bool:
        if not self.enabled:
            return False
        if self.types is not None and conversion_type not in self.types:
            return False
        if self.statuses is not None and status not in self.statuses:
            return False
        return self.min_payout is None or payout >= self.min_payout


@dataclass(frozen=True, slots=True)
class MinimalRules:
    campaigns: Mapping[str, tuple[MinimalEntry, ...]]
    offer_defaults: Mapping[str, str]
    default_status: str = "approved"


def compile_entry(entry: Mapping[str, Any]) -> MinimalEntry:
    condition = entry.get("conditional") or {}
    active = bool(condition.get("enabled"))
    types = condition.get("types") if active else None
    statuses = condition.get("statuses") if active else None
    min_payout = condition.get("min_payout") if active else None
    return MinimalEntry(
        entry_id=str(entry["id"]),
        kind=str(entry["kind"]),
        enabled=entry.get("enabled", True) is not False,
        types=frozenset(types) if types else None,
        statuses=frozenset(statuses) if statuses else None,
        min_payout=float(min_payout) if min_payout is not None else None,
        percent=float(entry.get("payout_percent", 100)),
        url_parts=tuple(_MACRO.split(entry["url"])) if entry.get("kind") == "s2s" else (),
    )


def compile_rules(
    campaigns: Iterable[Mapping[str, Any]],
    offer_sources: Iterable[Mapping[str, Any]] = (),
    default_status: str = "approved",
) -> MinimalRules:
    """Campaign-rules and offer-source documents (as published) to what `evaluate` reads."""
    return MinimalRules(
        {str(doc["campaign_id"]): tuple(compile_entry(e) for e in doc["postbacks"]) for doc in campaigns},
        {str(doc["offer_source_id"]): str(doc["default_status"]) for doc in offer_sources},
        default_status,
    )


def render_url(parts: tuple[str, ...], values: Mapping[str, str]) -> str:
    return "".join(part if i % 2 == 0 else quote(values.get(part, ""), safe="") for i, part in enumerate(parts))


def evaluate(rules: MinimalRules, conversion: Mapping[str, Any]) -> list[tuple[str, bytes]]:
    """(kind, message) for every entry of the conversion's campaign that fires."""
    entries = rules.campaigns.get(conversion.get("campaign_id") or "")
    if not entries:
        return []
    status = conversion.get("status") or rules.offer_defaults.get(conversion.get("offer_source_id") or "")
    status = status or rules.default_status
    conversion_type = conversion.get("type") or "conversion"
    payout = float(conversion.get("payout") or 0)
    fired: list[tuple[str, bytes]] = []
    for entry in entries:
        if not entry.fires(conversion_type, status, payout):
            continue
        scaled = f"{payout * entry.percent / 100:.2f}"
        message: dict[str, Any] = {
            "conversion_id": conversion["conversion_id"],
            "campaign_id": conversion["campaign_id"],
            "entry_id": entry.entry_id,
            "kind": entry.kind,
            "status": status,
            "type": conversion_type,
            "payout": scaled,
            "currency": conversion.get("currency") or "USD",
            "click_id": conversion["click_id"],
            "occurred_at": conversion["occurred_at"],
        }
        if entry.url_parts:
            message["url"] = render_url(entry.url_parts, _macro_values(conversion, conversion_type, status, scaled))
        fired.append((entry.kind, orjson.dumps(message)))
    return fired


def _macro_values(conversion: Mapping[str, Any], conversion_type: str, status: str, payout: str) -> dict[str, str]:
    click_ids = conversion.get("click_ids") or {}
    values = {str(k): str(v) for k, v in (conversion.get("subs") or {}).items()}
    values.update(
        clickid=str(conversion["click_id"]),
        conversion_id=str(conversion["conversion_id"]),
        campaign_id=str(conversion["campaign_id"]),
        external_id=str(click_ids.get("external_id") or ""),
        type=conversion_type,
        status=status,
        payout=payout,
        currency=str(conversion.get("currency") or "USD"),
        transaction_id=str(conversion.get("transaction_id") or ""),
    )
    return values


# --- the rules file the harness hands to the baselines' processes -------------------------------------------


def write_rules_file(
    path: str,
    campaigns: Iterable[Mapping[str, Any]],
    offer_sources: Iterable[Mapping[str, Any]],
    postback_topics: Mapping[str, str],
    default_status: str = "approved",
) -> None:
    document = {
        "campaigns": list(campaigns),
        "offer_sources": list(offer_sources),
        "postback_topics": dict(postback_topics),
        "default_status": default_status,
    }
    with open(path, "wb") as out:
        out.write(orjson.dumps(document))


def read_rules_file(path: str) -> tuple[MinimalRules, dict[str, str]]:
    """The compiled rules and kind -> output topic."""
    with open(path, "rb") as source:
        document = orjson.loads(source.read())
    rules = compile_rules(document["campaigns"], document["offer_sources"], document["default_status"])
    return rules, dict(document["postback_topics"])
