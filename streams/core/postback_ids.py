"""Deterministic postback ids: a replay of the same match yields the same id (contract §3)."""

from __future__ import annotations

import uuid

# A fixed namespace makes the ids stable across processes, versions and machines; changing it would
# make every replayed postback look new to the dispatchers' dedupe.
POSTBACK_ID_NAMESPACE = uuid.UUID("3f0c5a52-8d0e-4b6a-9a57-2f3f1b7c9e11")

# Unit separator: cannot occur in any of the parts (ids are validated), so no two different tuples
# join to the same name.
_SEPARATOR = "\x1f"


def postback_id(conversion_id: str, entry_id: str, effective_status: str, conversion_type: str) -> str:
    """A UUIDv5 of (conversion_id, entry id, effective status, type): the at-most-once key of contract §2.5."""
    name = _SEPARATOR.join((conversion_id, entry_id, effective_status, conversion_type))
    return str(uuid.uuid5(POSTBACK_ID_NAMESPACE, name))
