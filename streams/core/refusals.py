"""The worker's refusals, pure: the `.invalid` message of a compacted record (campaign rules, offer
sources) that does not parse, and what the log line of a refused conversion says.

The worker (streams/worker.py) checks the compacted records of the partitions it owns as a group
member, so each bad one is written once; its views skip the same records on their own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import orjson

from schemas.errors import InvalidInput
from streams.core.batch import OutgoingMessage, SourceRecord
from streams.core.invalid_records import invalid_record, redact_key

# A refused record's key is logged as its conversion_id only up to a conversion_id's maximum length.
MAX_LOGGED_KEY_CHARS = 256


def compacted_refusal(
    parse: Callable[[bytes | None, bytes], Any], record: SourceRecord, invalid_topic: str, rejected_at: str
) -> tuple[OutgoingMessage, InvalidInput] | None:
    """The `<topic>.invalid` message of a compacted record that `parse` refuses, and why; None when it
    parses, or is a tombstone (a deletion, always valid)."""
    if record.value is None:
        return None
    try:
        parse(record.key, record.value)
    except InvalidInput as error:
        body = invalid_record(error, record.key, record.value, record.position(), rejected_at)
        key, _ = redact_key(record.key)  # a key holding personal data is written under its hash
        return OutgoingMessage(invalid_topic, key, orjson.dumps(body)), error
    return None


def refusal_log_context(body: Mapping[str, Any]) -> dict[str, Any]:
    """The context of a refused conversion's log line, from its `.invalid` record: its reason and source
    position, and its id when its key is one (text of a conversion_id's length); never the record itself."""
    source = body["source"]
    context = {
        "reason": body["error"]["reason"],
        "topic": source["topic"],
        "partition": source["partition"],
        "offset": source["offset"],
    }
    key = body.get("key")
    if body.get("key_encoding") == "text" and key and len(key) <= MAX_LOGGED_KEY_CHARS:
        context["conversion_id"] = key
    return context
