"""The trace of one conversion, assembled from what the trace index keeps (postback_router/api/trace_index.py).

Pure: the index hands over the rows it holds for a conversion, already decoded; this module shapes
them into the document `GET /v1/conversions/{id}` answers and `postback-router trace` prints. It also
holds the compact forms the index stores, so what is kept and what is shown are decided in one place.

The rows come from the service's own topics: one per evaluated version (`conversions.evaluated`), one
per postback outcome (`postbacks.results`, the last one for a postback wins) and one per dead-lettered
postback (`postbacks.dead-letter`). None of them carries personal data; the compact forms keep less still.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from streams.core.explanation import REASON_NAMES

# The fields of a results record the trace shows (the rest name the conversion, already known).
_RESULT_FIELDS = (
    "kind",
    "destination_id",
    "entry_id",
    "result",
    "attempts",
    "last_http_status",
    "last_reason",
    "last_detail",
    "latency_seconds",
    "first_attempt_at",
    "finished_at",
    "replay",
)
_DEAD_LETTER_FIELDS = ("result", "reason", "detail", "last_http_status", "attempts", "dead_lettered_at")


def compact_evaluation(evaluation: Mapping[str, Any]) -> dict[str, Any]:
    """What the index keeps of an evaluation record: no source position, no URL, no topic."""
    return {
        "campaign_id": evaluation["campaign_id"],
        "type": evaluation["type"],
        "status": evaluation["status"],
        "status_source": evaluation["status_source"],
        "payout": evaluation["payout"],
        "occurred_at": evaluation.get("occurred_at"),
        "evaluated_at": evaluation["evaluated_at"],
        "outcome": evaluation["outcome"],
        "fired": [
            [e["entry_id"], e["kind"], e["destination_id"], e["postback_id"], e["payout"]] for e in evaluation["fired"]
        ],
        "skipped": [[e["entry_id"], e["kind"], e.get("destination_id"), e["reason"]] for e in evaluation["skipped"]],
    }


def compact_result(result: Mapping[str, Any]) -> dict[str, Any]:
    return {name: result[name] for name in _RESULT_FIELDS if name in result}


def compact_dead_letter(dead_letter: Mapping[str, Any]) -> dict[str, Any]:
    """Why a postback was dead-lettered; the postback it carries (user data included) is not kept."""
    return {name: dead_letter[name] for name in _DEAD_LETTER_FIELDS if name in dead_letter}


def dead_letter_conversion_id(dead_letter: Mapping[str, Any]) -> str | None:
    """The conversion a dead-lettered postback belongs to, when the record carries its postback."""
    postback = dead_letter.get("postback")
    if isinstance(postback, Mapping):
        conversion_id = postback.get("conversion_id")
        if isinstance(conversion_id, str):
            return conversion_id
    return None


def delivery(result: Mapping[str, Any] | None, dead_letter: Mapping[str, Any] | None) -> dict[str, Any]:
    """A postback's delivery outcome; `pending` while no results record has been read for it."""
    answer: dict[str, Any] = {"state": "pending"}
    if result is not None:
        answer = {"state": result["result"], **{k: v for k, v in result.items() if k not in ("result",)}}
    if dead_letter is not None:
        if result is None:
            answer = {"state": dead_letter["result"], "attempts": dead_letter.get("attempts")}
        answer["dead_letter"] = {
            "reason": dead_letter.get("reason"),
            "detail": dead_letter.get("detail"),
            "last_http_status": dead_letter.get("last_http_status"),
            "dead_lettered_at": dead_letter.get("dead_lettered_at"),
        }
    return answer


def trace_document(
    conversion_id: str,
    versions: Iterable[Mapping[str, Any]],
    results: Mapping[str, Mapping[str, Any]],
    dead_letters: Mapping[str, Mapping[str, Any]],
) -> dict[str, Any] | None:
    """The trace: `versions` in the order evaluated (compact forms), `results` and `dead_letters` by
    postback id. None when nothing at all is known of the conversion."""
    shown: list[dict[str, Any]] = []
    explained: set[str] = set()
    for version in versions:
        entries: list[dict[str, Any]] = []
        for entry_id, kind, destination_id, postback_id, payout in version["fired"]:
            explained.add(postback_id)
            entries.append(
                {
                    "entry_id": entry_id,
                    "kind": kind,
                    "destination_id": destination_id,
                    "fired": True,
                    "postback_id": postback_id,
                    "payout": payout,
                    "delivery": delivery(results.get(postback_id), dead_letters.get(postback_id)),
                }
            )
        for entry_id, kind, destination_id, reason in version["skipped"]:
            entries.append(
                {
                    "entry_id": entry_id,
                    "kind": kind,
                    "destination_id": destination_id,
                    "fired": False,
                    "reason": REASON_NAMES.get(reason, reason),
                }
            )
        shown.append({k: v for k, v in version.items() if k not in ("fired", "skipped")} | {"entries": entries})
    # outcomes of postbacks no retained version fired (evaluations off, or aged out before the results)
    others = [
        {"postback_id": pid, "entry_id": (results.get(pid) or {}).get("entry_id")}
        | {"delivery": delivery(results.get(pid), dead_letters.get(pid))}
        for pid in sorted({*results, *dead_letters} - explained)
    ]
    if not shown and not others:
        return None
    return {"conversion_id": conversion_id, "versions": shown, "other_postbacks": others}


class TraceLookup(Protocol):
    """What the api asks of the trace index (trace_index.TraceIndex; an in-memory one in tests)."""

    def lookup(self, conversion_id: str) -> dict[str, Any] | None: ...


def trace_schemas() -> dict[str, Any]:
    """The OpenAPI components of the trace document (postback_router/api/openapi.py embeds them)."""
    nullable_string = {"type": ["string", "null"]}
    delivery_schema = {
        "type": "object",
        "required": ["state"],
        "description": "A postback's delivery: `pending` until its results record is read.",
        "properties": {
            "state": {"enum": ["pending", "delivered", "rejected", "dead_lettered"]},
            "kind": {"type": "string"},
            "destination_id": {"type": "string"},
            "entry_id": {"type": "string"},
            "attempts": {"type": ["integer", "null"]},
            "last_http_status": {"type": ["integer", "null"]},
            "last_reason": {"type": "string"},
            "last_detail": {"type": "string"},
            "latency_seconds": {"type": "number"},
            "first_attempt_at": nullable_string,
            "finished_at": {"type": "string"},
            "replay": {"type": "integer"},
            "dead_letter": {
                "type": "object",
                "properties": {
                    "reason": nullable_string,
                    "detail": nullable_string,
                    "last_http_status": {"type": ["integer", "null"]},
                    "dead_lettered_at": nullable_string,
                },
            },
        },
    }
    entry_schema = {
        "type": "object",
        "required": ["entry_id", "kind", "fired"],
        "properties": {
            "entry_id": {"type": "string"},
            "kind": {"type": "string"},
            "destination_id": nullable_string,
            "fired": {"type": "boolean"},
            "postback_id": {"type": "string", "description": "when fired"},
            "payout": {"type": "string", "description": "the payout sent, after payout_percent, when fired"},
            "delivery": {"$ref": "#/components/schemas/TraceDelivery"},
            "reason": {
                "enum": sorted(REASON_NAMES.values()),
                "description": "why the entry did not fire (the rule test's names)",
            },
        },
    }
    version_schema = {
        "type": "object",
        "required": ["campaign_id", "type", "status", "status_source", "payout", "evaluated_at", "outcome", "entries"],
        "properties": {
            "campaign_id": {"type": "string"},
            "type": {"type": "string"},
            "status": {"type": "string"},
            "status_source": {"enum": ["event", "offer_source", "default"]},
            "payout": {"type": "string"},
            "occurred_at": nullable_string,
            "evaluated_at": {"type": "string"},
            "outcome": {"enum": ["fired", "nothing_fired", "no_rules"]},
            "entries": {"type": "array", "items": {"$ref": "#/components/schemas/TraceEntry"}},
        },
    }
    other_schema = {
        "type": "object",
        "required": ["postback_id", "delivery"],
        "properties": {
            "postback_id": {"type": "string"},
            "entry_id": nullable_string,
            "delivery": {"$ref": "#/components/schemas/TraceDelivery"},
        },
    }
    return {
        "ConversionTrace": {
            "type": "object",
            "required": ["conversion_id", "versions", "other_postbacks"],
            "properties": {
                "conversion_id": {"type": "string"},
                "versions": {
                    "type": "array",
                    "description": "every version of the conversion the workers evaluated, oldest first",
                    "items": {"$ref": "#/components/schemas/TraceVersion"},
                },
                "other_postbacks": {
                    "type": "array",
                    "description": "outcomes of postbacks whose evaluation is not retained (or was not emitted)",
                    "items": {"$ref": "#/components/schemas/TraceOtherPostback"},
                },
            },
        },
        "TraceVersion": version_schema,
        "TraceEntry": entry_schema,
        "TraceDelivery": delivery_schema,
        "TraceOtherPostback": other_schema,
    }


def trace_text(trace: Mapping[str, Any]) -> str:
    """The trace for a terminal (`postback-router trace`): one block per version, one line per entry."""
    lines = [f"conversion {trace['conversion_id']}"]
    versions = trace.get("versions") or []
    if not versions:
        lines.append("  no evaluated version retained")
    for number, version in enumerate(versions, 1):
        lines.append(
            f"version {number}: evaluated {version['evaluated_at']} (occurred {version.get('occurred_at') or '?'}), "
            f"campaign {version['campaign_id']}, type {version['type']}, status {version['status']} "
            f"(from {version['status_source']}), payout {version['payout']}: {version['outcome'].replace('_', ' ')}"
        )
        for entry in version["entries"]:
            head = f"  {entry['entry_id']} ({entry['kind']} -> {entry.get('destination_id') or '?'})"
            if entry["fired"]:
                lines.append(f"{head}: fired postback {entry['postback_id']}, payout {entry['payout']}")
                lines.append(f"      {_delivery_text(entry['delivery'])}")
            else:
                lines.append(f"{head}: not fired, {entry['reason'].replace('_', ' ')}")
    for other in trace.get("other_postbacks") or []:
        lines.append(
            f"postback {other['postback_id']} ({other.get('entry_id') or '?'}, version not retained): "
            f"{_delivery_text(other['delivery'])}"
        )
    return "\n".join(lines)


def _delivery_text(delivery: Mapping[str, Any]) -> str:
    state = delivery["state"]
    if state == "pending":
        return "delivery: pending (no outcome yet)"
    parts = [f"delivery: {state.replace('_', ' ')}"]
    if delivery.get("attempts") is not None:
        parts.append(f"{delivery['attempts']} attempt(s)")
    if delivery.get("last_http_status") is not None or delivery.get("last_reason"):
        parts.append(f"last {delivery.get('last_http_status') or '-'} {delivery.get('last_reason') or ''}".rstrip())
    if delivery.get("latency_seconds") is not None:
        parts.append(f"latency {delivery['latency_seconds']:.3f}s")
    if delivery.get("finished_at"):
        parts.append(f"finished {delivery['finished_at']}")
    dead = delivery.get("dead_letter")
    if dead:
        parts.append(f"dead-lettered {dead.get('dead_lettered_at') or ''}: {dead.get('reason') or ''}".rstrip())
    return ", ".join(parts)
