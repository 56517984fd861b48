"""The fired-state: which postback ids each conversion has fired, kept per owned conversions partition.

Keyed by conversion_id, the key of `conversions`, in a ChangelogStore whose changelog is
`<APP_ID>-fired-state-changelog` (see service/changelog_store.py).
"""

from __future__ import annotations

from collections.abc import Iterator

from service.changelog_store import ChangelogStore
from streams.core.fired_record import FiredRecord, decode_fired_record


class FiredStore(ChangelogStore):
    def get(self, conversion_id: str, partition: int) -> FiredRecord | None:
        raw = self.get_raw(conversion_id.encode("utf-8"), partition)
        return None if raw is None else decode_fired_record(raw)

    def expired(self, now: int, retention_seconds: int) -> Iterator[tuple[int, bytes]]:
        """(partition, key) of the conversions whose fired-state is older than the retention."""
        for partition, key, raw in self.items():
            if decode_fired_record(raw).is_expired(now, retention_seconds):
                yield partition, key
