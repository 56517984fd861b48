"""The partition state backends of ChangelogStore: memory for tests, RocksDB (rocksdict) for production."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from service.changelog_store import MemoryPartitionState, PartitionState, RocksPartitionState


def memory(_: Path) -> PartitionState:
    return MemoryPartitionState()


def rocks(path: Path) -> PartitionState:
    return RocksPartitionState(path / "partition-0")


@pytest.mark.parametrize("open_state", [memory, rocks], ids=["memory", "rocksdb"])
def test_put_get_delete_items_and_changelog_offset(
    open_state: Callable[[Path], PartitionState], tmp_path: Path
) -> None:
    state = open_state(tmp_path)
    assert state.get(b"a") is None and state.next_changelog_offset() == 0
    state.put(b"a", b"1")
    state.put(b"b", b"2")
    state.put(b"a", b"3")
    state.delete(b"b")
    state.delete(b"never-there")
    state.set_next_changelog_offset(42)
    assert state.get(b"a") == b"3" and state.get(b"b") is None
    assert dict(state.items()) == {b"a": b"3"}  # the offset marker is not a key
    assert state.next_changelog_offset() == 42
    state.close()


def test_rocksdb_state_survives_a_reopen(tmp_path: Path) -> None:
    state = rocks(tmp_path)
    state.put(b"conversion", b"fired")
    state.set_next_changelog_offset(7)
    state.close()
    reopened = rocks(tmp_path)
    assert reopened.get(b"conversion") == b"fired"
    assert reopened.next_changelog_offset() == 7
    reopened.close()
