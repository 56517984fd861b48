"""The fired-state store: which postback ids each conversion has fired, per owned partition.

Keyed by conversion_id, the key of `conversions`, so each partition's state lives with the worker
that processes that partition. Every change is written to a compacted changelog topic (one
partition per conversions partition) before the batch's offsets are committed; a worker that is
assigned a partition restores its state from the changelog before it matches anything on it.

Two backends: memory (tests; restored from the changelog at each assignment) and RocksDB through
rocksdict (production; keeps the applied changelog offset, so a restart replays only what is new).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from aiokafka import TopicPartition

from postback_router.kafka_io import read_partitions
from streams.fired_record import FiredRecord, decode_fired_record

log = logging.getLogger(__name__)

# Stored beside the keys; conversion ids cannot start with a NUL byte (they are JSON strings that
# the schema bounds), so it cannot collide with one.
_OFFSET_KEY = b"\x00changelog-offset"


class PartitionState(Protocol):
    def get(self, key: bytes) -> bytes | None: ...
    def put(self, key: bytes, value: bytes) -> None: ...
    def delete(self, key: bytes) -> None: ...
    def items(self) -> Iterator[tuple[bytes, bytes]]: ...
    def next_changelog_offset(self) -> int: ...
    def set_next_changelog_offset(self, offset: int) -> None: ...
    def close(self) -> None: ...


class MemoryPartitionState:
    def __init__(self) -> None:
        self._data: dict[bytes, bytes] = {}
        self._next_offset = 0

    def get(self, key: bytes) -> bytes | None:
        return self._data.get(key)

    def put(self, key: bytes, value: bytes) -> None:
        self._data[key] = value

    def delete(self, key: bytes) -> None:
        self._data.pop(key, None)

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        return iter(list(self._data.items()))

    def next_changelog_offset(self) -> int:
        return self._next_offset

    def set_next_changelog_offset(self, offset: int) -> None:
        self._next_offset = offset

    def close(self) -> None:
        self._data.clear()


class RocksPartitionState:
    def __init__(self, path: Path) -> None:
        from rocksdict import Rdict

        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = Rdict(str(path))

    def get(self, key: bytes) -> bytes | None:
        value = self._db.get(key)
        return None if value is None else bytes(value)

    def put(self, key: bytes, value: bytes) -> None:
        self._db[key] = value

    def delete(self, key: bytes) -> None:
        if key in self._db:
            del self._db[key]

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        for key, value in self._db.items():
            if key != _OFFSET_KEY and isinstance(key, bytes) and isinstance(value, bytes):
                yield key, value

    def next_changelog_offset(self) -> int:
        raw = self._db.get(_OFFSET_KEY)
        return int(raw) if raw is not None else 0

    def set_next_changelog_offset(self, offset: int) -> None:
        self._db[_OFFSET_KEY] = str(offset).encode()

    def close(self) -> None:
        self._db.close()


class FiredStore:
    """The fired-state of the partitions this worker owns; reads for the matcher, restores on assignment."""

    def __init__(self, bootstrap_servers: str, changelog_topic: str, backend: str, directory: Path) -> None:
        self.changelog_topic = changelog_topic
        self._bootstrap = bootstrap_servers
        self._backend = backend
        self._directory = directory
        self._partitions: dict[int, PartitionState] = {}

    @property
    def partitions(self) -> set[int]:
        return set(self._partitions)

    def _open(self, partition: int) -> PartitionState:
        if self._backend == "memory":
            return MemoryPartitionState()
        return RocksPartitionState(self._directory / f"partition-{partition}")

    async def assign(self, partitions: set[int]) -> None:
        """Open and restore the state of newly assigned partitions from the changelog."""
        new = sorted(partitions - set(self._partitions))
        if not new:
            return
        states = {p: self._open(p) for p in new}
        start = {TopicPartition(self.changelog_topic, p): states[p].next_changelog_offset() for p in new}
        restored = 0
        async for batch in read_partitions(self._bootstrap, list(start), start):
            for record in batch:
                state = states[record.partition]
                if record.key is not None:
                    if record.value is None:
                        state.delete(record.key)
                    else:
                        state.put(record.key, record.value)
                    restored += 1
                state.set_next_changelog_offset(record.offset + 1)
        self._partitions.update(states)
        log.info("fired-state restored for partitions %s (%d changelog records replayed)", new, restored)

    def revoke(self, partitions: set[int]) -> None:
        for partition in partitions & set(self._partitions):
            self._partitions.pop(partition).close()

    def close(self) -> None:
        self.revoke(set(self._partitions))

    def get(self, conversion_id: str, partition: int) -> FiredRecord | None:
        raw = self._partitions[partition].get(conversion_id.encode("utf-8"))
        return None if raw is None else decode_fired_record(raw)

    def apply(self, partition: int, key: bytes, value: bytes | None, changelog_offset: int) -> None:
        """Record a change that the changelog has acknowledged at `changelog_offset`."""
        state = self._partitions.get(partition)
        if state is None:
            return  # revoked meanwhile: the new owner restores it from the changelog
        if value is None:
            state.delete(key)
        else:
            state.put(key, value)
        state.set_next_changelog_offset(max(state.next_changelog_offset(), changelog_offset + 1))

    def expired(self, now: int, retention_seconds: int) -> Iterator[tuple[int, bytes]]:
        for partition, state in list(self._partitions.items()):
            for key, raw in state.items():
                if decode_fired_record(raw).is_expired(now, retention_seconds):
                    yield partition, key


def reset_local_state(directory: Path) -> None:
    """Delete the RocksDB files (e.g. after the changelog topic was recreated)."""
    shutil.rmtree(directory, ignore_errors=True)
