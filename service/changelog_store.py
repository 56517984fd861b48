"""State kept per owned partition and restored from a compacted changelog topic.

Used for the worker's fired-state (keyed by conversion_id) and the dispatchers' delivery state
(keyed by postback_id). The state of input partition p lives in changelog partition p, so it moves
with the partition in a consumer-group rebalance. Every change is written to the changelog, and
acknowledged, before the input offsets that caused it are committed; a process that is assigned a
partition restores its state from the changelog before it handles anything on it (the group member,
service/group_member.py, does both).

Two backends: memory (tests; restored from the changelog at each assignment) and RocksDB through
rocksdict (production; keeps the applied changelog offset, so a restart replays only what is new).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from aiokafka import TopicPartition

from service.kafka_io import read_partitions

log = logging.getLogger(__name__)

# Stored beside the keys; the keys are ids from JSON messages that never start with a NUL byte, so
# it cannot collide with one.
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


class ChangelogStore:
    """Key-value state of the partitions this process owns, restored from the changelog on assignment."""

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
        log.info("%s restored for partitions %s (%d changelog records replayed)", self.changelog_topic, new, restored)

    def revoke(self, partitions: set[int]) -> None:
        for partition in partitions & set(self._partitions):
            self._partitions.pop(partition).close()

    def close(self) -> None:
        self.revoke(set(self._partitions))

    def get_raw(self, key: bytes, partition: int) -> bytes | None:
        return self._partitions[partition].get(key)

    def items(self) -> Iterator[tuple[int, bytes, bytes]]:
        """(partition, key, value) of every owned key."""
        for partition, state in list(self._partitions.items()):
            for key, value in state.items():
                yield partition, key, value

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
