"""Finding postbacks that failed for good and asking their dispatchers to send them again (docs/replay.md).

`postback-router replay` and `POST /v1/postbacks/{postback_id}/replay` both end here. A postback is
replayable when the LAST record of its postback_id on `postbacks.results` is `rejected` or
`dead_lettered` (a replay adds a record per delivery cycle; the last one is the current outcome). Its
body comes from its latest `postbacks.dead-letter` record, which holds the matched postback as it was
consumed (schemas/dead-letter.schema.json; null only for a postback too large to keep whole, which is
not replayable: its dispatcher would refuse it again). The request written is that postback plus a
`replay` object, on its own topic `postbacks.<kind>` with its own key (its conversion_id): the
dispatcher owning that partition takes it in order (dispatchers/core/replay.py) and decides again from
its delivery state, so a request for a postback delivered meanwhile is refused there, and a request
written twice starts one delivery cycle.

Cost: `find_replayable` reads every partition of `postbacks.results` (keeping a few fields per
postback_id) and of `postbacks.dead-letter` (keeping the bodies of the candidates only). `find_postback`
reads one partition of each, the one holding the key (both are keyed by postback_id, placed by the
default partitioner): a scan of 1/N of each topic, linear in its retained size.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from aiokafka import TopicPartition
from aiokafka.partitioner import murmur2

from dispatchers.core.replay import ReplayRequest, replay_request_record
from service.kafka_connection import KafkaConnection
from service.kafka_io import Record, partitions_of, produce, read_partitions
from service.settings import Topics

Progress = Callable[[str], None]
REPLAYABLE = frozenset({"rejected", "dead_lettered"})
_RELATIVE = re.compile(r"(\d+)\s*([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# How often (in records read) progress is reported while a topic is scanned.
PROGRESS_EVERY = 50_000


class BadTime(ValueError):
    """A --since/--until value that is neither a relative duration nor an RFC 3339 timestamp."""


def parse_moment(value: str, now: datetime) -> datetime:
    """`24h`, `30m`, `7d`, `90s` (that long before `now`) or an RFC 3339 timestamp with its offset."""
    text = value.strip()
    relative = _RELATIVE.fullmatch(text)
    if relative:
        return now - timedelta(seconds=int(relative.group(1)) * _UNIT_SECONDS[relative.group(2)])
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise BadTime(f"{value!r} is neither a duration (24h, 30m, 7d) nor an RFC 3339 time") from None
    if moment.utcoffset() is None:
        raise BadTime(f"{value!r} has no UTC offset (write it as 2026-01-31T12:00:00Z)")
    return moment


@dataclass(frozen=True, slots=True)
class ReplayFilter:
    destination: str | None = None
    kind: str | None = None
    reason: str | None = None  # the last results record's last_reason (http_400, timeout, ...)
    since: datetime | None = None  # the last results record's finished_at, inclusive
    until: datetime | None = None  # exclusive

    def matches(self, last: LastResult) -> bool:
        if self.destination is not None and last.destination_id != self.destination:
            return False
        if self.kind is not None and last.kind != self.kind:
            return False
        if self.reason is not None and last.reason != self.reason:
            return False
        if self.since is not None and (last.finished_at is None or last.finished_at < self.since):
            return False
        return not (self.until is not None and (last.finished_at is None or last.finished_at >= self.until))


@dataclass(frozen=True, slots=True)
class LastResult:
    """The last `postbacks.results` record of one postback_id: only what the filters and the listing need."""

    postback_id: str
    kind: str
    destination_id: str
    result: str
    reason: str
    finished_at: datetime | None
    replay: int  # the delivery cycle it ended (0: the first)

    @classmethod
    def of(cls, record: dict[str, Any]) -> LastResult:
        finished = record.get("finished_at")
        try:
            finished_at = datetime.fromisoformat(str(finished).replace("Z", "+00:00")) if finished else None
        except ValueError:
            finished_at = None
        replay = record.get("replay")
        return cls(
            str(record.get("postback_id", "")),
            str(record.get("kind", "")),
            str(record.get("destination_id", "")),
            str(record.get("result", "")),
            str(record.get("last_reason", "")),
            finished_at,
            replay if isinstance(replay, int) else 0,
        )


@dataclass(slots=True)
class Replayable:
    last: LastResult
    postback: dict[str, Any] | None = None  # from its latest dead-letter record; None: no whole body found


@dataclass(slots=True)
class ReplayPlan:
    """What a replay run found: the postbacks to replay (with a body) and the ones it cannot replay."""

    to_replay: list[Replayable] = field(default_factory=list)
    without_body: list[Replayable] = field(default_factory=list)


def _json(record: Record) -> dict[str, Any] | None:
    try:
        value = orjson.loads(record.value) if record.value is not None else None
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


async def _read(
    kafka: KafkaConnection,
    partitions: list[TopicPartition],
    what: str,
    progress: Progress,
    take: Callable[[list[Record]], None],
) -> None:
    """Hand every record of `partitions` now to `take`, batch by batch as fetched (in offset order within a
    partition), keeping none of them: memory is what `take` keeps."""
    count = 0
    async for batch in read_partitions(kafka, partitions):
        before = count // PROGRESS_EVERY
        count += len(batch)
        take(batch)
        if count // PROGRESS_EVERY > before:
            progress(f"{what}: {count} records read")
    progress(f"{what}: {count} records read, done")


def fold_last_results(failed: dict[str, LastResult], records: Iterable[Record]) -> None:
    """Keep in `failed` the last results record of each postback_id whose last record so far is not
    `delivered` (records in offset order per partition; a postback_id's records are all on one partition,
    keyed by it). A delivered postback is dropped: delivered is final, never replayed, so memory grows with
    the postbacks that failed only."""
    for record in records:
        value = _json(record)
        if value is None or not isinstance(value.get("postback_id"), str):
            continue
        if value.get("result") == "delivered":
            failed.pop(value["postback_id"], None)
        else:
            failed[value["postback_id"]] = LastResult.of(value)


def last_results(records: Iterable[Record]) -> dict[str, LastResult]:
    """The last results record of each postback_id that did not end delivered (see fold_last_results)."""
    failed: dict[str, LastResult] = {}
    fold_last_results(failed, records)
    return failed


def attach_bodies(candidates: dict[str, Replayable], dead_letter: Iterable[Record]) -> None:
    """Each candidate's postback from its latest dead-letter record holding one whole."""
    for record in dead_letter:
        value = _json(record)
        if value is None:
            continue
        found = candidates.get(str(value.get("postback_id")))
        postback = value.get("postback")
        if found is not None and isinstance(postback, dict):
            found.postback = postback


def plan(candidates: Sequence[Replayable]) -> ReplayPlan:
    out = ReplayPlan()
    for candidate in sorted(candidates, key=lambda c: c.last.finished_at or datetime.min.replace(tzinfo=UTC)):
        (out.to_replay if candidate.postback is not None else out.without_body).append(candidate)
    return out


async def find_replayable(
    kafka: KafkaConnection, topics: Topics, filters: ReplayFilter, progress: Progress = lambda _: None
) -> ReplayPlan:
    """Every postback whose last results record is rejected or dead_lettered and matches `filters`."""
    failed: dict[str, LastResult] = {}
    partitions = await partitions_of(kafka, topics.results)
    await _read(kafka, partitions, topics.results, progress, lambda batch: fold_last_results(failed, batch))
    candidates = {
        pid: Replayable(last) for pid, last in failed.items() if last.result in REPLAYABLE and filters.matches(last)
    }
    failed.clear()
    progress(f"{len(candidates)} postbacks ended rejected or dead_lettered and match the filters")
    if candidates:
        dead = await partitions_of(kafka, topics.dead_letter)
        await _read(kafka, dead, topics.dead_letter, progress, lambda batch: attach_bodies(candidates, batch))
    return plan(list(candidates.values()))


def partition_of_key(key: bytes, partitions: list[TopicPartition]) -> TopicPartition:
    """The partition the default partitioner (murmur2, as Kafka's Java client and aiokafka) puts `key` on."""
    return partitions[(murmur2(key) & 0x7FFFFFFF) % len(partitions)]


async def find_postback(kafka: KafkaConnection, topics: Topics, postback_id: str) -> Replayable | None:
    """One postback's last results record and body: reads the partition of `postbacks.results` and of
    `postbacks.dead-letter` holding its key. None: no results record (unknown, or not final yet)."""
    key = postback_id.encode()
    results = await partitions_of(kafka, topics.results)
    if not results:
        return None
    last: list[LastResult] = []  # the last results record of the key so far, delivered ones included

    def take_results(batch: list[Record]) -> None:
        for record in batch:
            value = _json(record) if record.key == key else None
            if value is not None and value.get("postback_id") == postback_id:
                last[:] = [LastResult.of(value)]

    await _read(kafka, [partition_of_key(key, results)], topics.results, _quiet, take_results)
    if not last:
        return None
    found = {postback_id: Replayable(last[0])}
    if last[0].result in REPLAYABLE:
        dead = await partitions_of(kafka, topics.dead_letter)
        if dead:
            await _read(
                kafka,
                [partition_of_key(key, dead)],
                topics.dead_letter,
                _quiet,
                lambda batch: attach_bodies(found, (r for r in batch if r.key == key)),
            )
    return found[postback_id]


def _quiet(_: str) -> None:
    return None


def new_request(requested_by: str | None, now: datetime | None = None) -> ReplayRequest:
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    stamp = moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return ReplayRequest(str(uuid.uuid4()), stamp, requested_by)


async def write_requests(
    kafka: KafkaConnection,
    topics: Topics,
    replays: Sequence[tuple[dict[str, Any], ReplayRequest]],
    progress: Progress = lambda _: None,
    chunk: int = 1000,
) -> int:
    """Write one replay request per (postback, request) on `postbacks.<kind>`, keyed by its conversion_id
    (acknowledged); returns how many were written. A postback of an unknown kind is skipped."""
    written = 0
    by_topic: dict[str, list[tuple[bytes, bytes]]] = {}
    for postback, request in replays:
        topic = topics.postbacks.get(str(postback.get("kind")))
        if topic is None:
            continue
        value = orjson.dumps(replay_request_record(postback, request))
        by_topic.setdefault(topic, []).append((str(postback["conversion_id"]).encode(), value))
    for topic, records in by_topic.items():
        for start in range(0, len(records), chunk):
            part = records[start : start + chunk]
            await produce(kafka, topic, part)
            written += len(part)
            progress(f"{written}/{len(replays)} replay requests written")
    return written
