"""The fired-state as a Faust table: postback ids fired per conversion, restored after a restart.

The table is keyed by conversion_id, the key of the `conversions` topic, so it is co-partitioned
with the stream and its changelog restores each partition where it is processed. RocksDB (the
`rocksdict` driver) holds it in production, memory in tests.

Faust's table API finds the partition of a write from the event being processed. The matcher works
on whole batches, so each read and write here names its partition explicitly.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from faust.streams import _current_event  # see _partition_context

from streams.fired_record import FiredRecord, decode_fired_record, encode_fired_record

log = logging.getLogger(__name__)

# Yield to the event loop this often while sweeping, so a sweep of a million keys does not stall
# the matcher for seconds.
SWEEP_YIELD_EVERY = 1000


@dataclass(frozen=True, slots=True)
class _Message:
    topic: str
    partition: int


class _PartitionEvent:
    """Stands in for the Faust event whose partition a table read or write belongs to."""

    __slots__ = ("__weakref__", "message")

    def __init__(self, topic: str, partition: int) -> None:
        self.message = _Message(topic, partition)


@contextmanager
def _partition_context(topic: str, partition: int) -> Iterator[None]:
    # Faust tables and the RocksDB store take the partition of a key from the "current event"
    # context variable; there is no public way to name it for a batch, so it is set here.
    event = _PartitionEvent(topic, partition)
    token = _current_event.set(weakref.ref(event))  # type: ignore[arg-type]
    try:
        yield
    finally:
        _current_event.reset(token)


class FaustFiredState:
    """Reads and writes of the fired-state table for the batch matcher."""

    def __init__(self, table: Any, source_topic: str) -> None:
        self._table = table
        self._source_topic = source_topic

    def get(self, conversion_id: str, partition: int) -> FiredRecord | None:
        with _partition_context(self._source_topic, partition):
            raw = self._table.get(conversion_id.encode("utf-8"))
        return None if raw is None else decode_fired_record(raw)

    def put_many(self, updates: dict[str, FiredRecord]) -> None:
        table = self._table
        for conversion_id, record in updates.items():
            with _partition_context(self._source_topic, record.partition):
                table[conversion_id.encode("utf-8")] = encode_fired_record(record)

    async def sweep_expired(self, retention_seconds: int, active_partitions: set[int]) -> int:
        """Delete the records of this worker's partitions not updated within the retention."""
        now = int(time.time())
        expired: list[tuple[bytes, int]] = []
        for index, (key, raw) in enumerate(list(self._table.items())):
            record = decode_fired_record(raw)
            if record.partition in active_partitions and record.is_expired(now, retention_seconds):
                expired.append((key, record.partition))
            if index % SWEEP_YIELD_EVERY == 0:
                await asyncio.sleep(0)
        for key, partition in expired:
            with _partition_context(self._source_topic, partition):
                self._table.pop(key, None)
        if expired:
            log.info("fired-state sweep", extra={"deleted": len(expired)})
        return len(expired)
