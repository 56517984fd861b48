"""The fired-state of one conversion: which postback ids it has fired, and when it last changed.

Kept per conversion_id (the key of the `conversions` topic, so the state is co-partitioned with
its stream). The partition is stored in the value so that retention can delete a key without the
record that wrote it.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson


@dataclass(frozen=True, slots=True)
class FiredRecord:
    updated_at: int  # unix seconds of the last postback fired for the conversion
    partition: int
    postback_ids: frozenset[str]

    def is_expired(self, now: int, retention_seconds: int) -> bool:
        return now - self.updated_at > retention_seconds


def encode_fired_record(record: FiredRecord) -> bytes:
    return orjson.dumps({"t": record.updated_at, "p": record.partition, "ids": sorted(record.postback_ids)})


def decode_fired_record(raw: bytes) -> FiredRecord:
    data = orjson.loads(raw)
    return FiredRecord(updated_at=int(data["t"]), partition=int(data["p"]), postback_ids=frozenset(data["ids"]))
