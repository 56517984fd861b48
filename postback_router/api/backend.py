"""Where the api's state lives: the compacted topics, read through the workers' own views.

Reads go through `CompactedTopicView`, the class the workers use, with the workers' parsers: a
record the workers would skip as invalid is skipped here too (the key keeps its previous value),
so a GET shows exactly what the workers match with. Every read first catches up with the topic's
end, so a write acknowledged through any replica is visible to a read through any other.

Writes are produced with acks=all and awaited within a bound: a cluster that does not answer
makes the request fail with 503 instead of holding it forever.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from postback_router.api.listing import Listed, page_of_keys
from service.compacted_view import CompactedTopicView
from service.consumer_health import KafkaHealth
from service.kafka_io import Outgoing, send_all
from service.ops_http import Readiness
from service.settings import Settings
from streams.core.conversion import parse_conversion
from streams.core.offer_sources import parse_offer_source
from streams.core.rules import parse_campaign_rules

log = logging.getLogger(__name__)

Table = Literal["campaign_rules", "offer_sources", "conversion_index"]
ListedTable = Literal["campaign_rules", "offer_sources"]
Destination = Literal["conversions", "campaign_rules", "offer_sources", "conversion_index"]

# A produce normally takes milliseconds; a cluster that has not acknowledged in this long is in
# trouble (leader election, unreachable), and the caller is better told so than kept waiting.
PRODUCE_TIMEOUT_SECONDS = 10.0
# A catch-up is one ListOffsets round trip plus the view's next fetch.
READ_TIMEOUT_SECONDS = 5.0


class Unavailable(Exception):
    """Kafka did not answer in time, or the api has not recovered its views yet: answer 503."""


@dataclass(frozen=True, slots=True)
class Write:
    destination: Destination
    key: str
    value: Mapping[str, Any] | None  # None: a tombstone (delete)


class Backend(Protocol):
    async def read(self, table: Table, key: str) -> dict[str, Any] | None:
        """The current document under `key`, after catching up with everything written before the call."""
        ...

    async def write(self, writes: Sequence[Write]) -> None:
        """Publish and wait for the acknowledgements."""
        ...

    async def scan(self, table: ListedTable, prefix: str, after: str | None, limit: int) -> list[Listed]:
        """Up to `limit` documents whose ids start with `prefix` and come after `after`, ordered by id,
        after catching up as `read` does."""
        ...


def _keeping_value(parse: Callable[[bytes | None, bytes], object]) -> Callable[[bytes | None, bytes], bytes]:
    """A view parser that checks a record as the workers do but keeps its bytes: the api returns
    the document as published, and bytes take a fraction of the memory of parsed objects."""

    def parse_and_keep(key: bytes | None, value: bytes) -> bytes:
        parse(key, value)
        return value

    return parse_and_keep


class KafkaBackend:
    def __init__(self, settings: Settings, readiness: Readiness, kafka_health: KafkaHealth) -> None:
        topics = settings.topics
        kafka = settings.kafka
        self._readiness = readiness
        self._kafka_health = kafka_health
        self._probe: asyncio.Task[None] | None = None
        self._kafka = kafka
        self._topics: dict[Destination, str] = {
            "conversions": topics.conversions,
            "campaign_rules": topics.campaign_rules,
            "offer_sources": topics.offer_sources,
            "conversion_index": topics.conversion_index,
        }

        def parse_indexed(key: bytes | None, value: bytes) -> object:
            return parse_conversion(key, value, settings.max_conversion_bytes, indexed=True)

        self._views: dict[Table, CompactedTopicView[bytes]] = {
            "campaign_rules": CompactedTopicView(
                kafka, topics.campaign_rules, _keeping_value(parse_campaign_rules), keep_timestamps=True
            ),
            "offer_sources": CompactedTopicView(
                kafka, topics.offer_sources, _keeping_value(parse_offer_source), keep_timestamps=True
            ),
            "conversion_index": CompactedTopicView(kafka, topics.conversion_index, _keeping_value(parse_indexed)),
        }
        self._producer: AIOKafkaProducer | None = None
        # the ids of a listed view in order, with the view's `applied` count they were sorted at
        self._sorted: dict[ListedTable, tuple[int, list[str]]] = {}

    @property
    def _recovered(self) -> bool:
        return all(view.recovered for view in self._views.values())

    async def start(self) -> None:
        """Connect and read the compacted topics to their end; requests get 503 until this is done."""
        producer = AIOKafkaProducer(
            **self._kafka.client_kwargs(),
            acks="all",
            linger_ms=1,  # each request waits for its own acknowledgement: lingering would add to every answer
            request_timeout_ms=int(PRODUCE_TIMEOUT_SECONDS * 1000),
        )
        await producer.start()
        self._producer = producer
        self._readiness.set("kafka", True)
        # /readyz notices a lost cluster while no request comes in, as on the workers
        self._probe = asyncio.create_task(self._kafka_health.probe_forever(producer.client), name="kafka-probe")
        for view in self._views.values():
            await view.start()
        for view in self._views.values():
            await view.wait_recovered()
        self._readiness.set("views_recovered", True)
        log.info(
            "views recovered: %d campaigns, %d offer sources, %d conversions taken in",
            *(len(view) for view in self._views.values()),
        )

    async def stop(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            await asyncio.gather(self._probe, return_exceptions=True)
        for view in self._views.values():
            await view.stop()
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def read(self, table: Table, key: str) -> dict[str, Any] | None:
        view = self._views[table]
        await self._catch_up(view)
        value = view.get(key)
        return None if value is None else _as_document(value)

    async def scan(self, table: ListedTable, prefix: str, after: str | None, limit: int) -> list[Listed]:
        view = self._views[table]
        await self._catch_up(view)
        applied, keys = self._sorted.get(table, (-1, []))
        if applied != view.applied:
            # sorted again only after a change: lists are read far more often than campaigns change
            keys = sorted(view.keys())
            self._sorted[table] = (view.applied, keys)
        listed = []
        for key in page_of_keys(keys, prefix, after, limit):
            value = view.get(key)
            if value is not None:
                listed.append(Listed(key, _as_document(value), view.timestamp_ms(key)))
        return listed

    async def write(self, writes: Sequence[Write]) -> None:
        producer = self._producer
        if producer is None or not self._recovered:
            raise Unavailable("the api is starting: its views of the compacted topics are not recovered yet")
        records: list[Outgoing] = [
            (
                self._topics[w.destination],
                w.key.encode("utf-8"),
                None if w.value is None else orjson.dumps(w.value),
                None,
            )
            for w in writes
        ]
        try:
            await asyncio.wait_for(send_all(producer, records), PRODUCE_TIMEOUT_SECONDS)
        except (TimeoutError, KafkaError) as exc:
            self._readiness.set("kafka", False)
            log.warning("publishing failed: %s", type(exc).__name__)
            raise Unavailable("Kafka did not acknowledge the write in time; repeat the request") from None
        self._readiness.set("kafka", True)
        # A PUT's answer then means this api's view (the workers' code) holds the document. Not for
        # the conversion index: intake must answer fast, and a PATCH catches up before it reads.
        written = {w.destination for w in writes}
        for table in ("campaign_rules", "offer_sources"):
            if table in written:
                await self._catch_up(self._views[table])

    async def _catch_up(self, view: CompactedTopicView[bytes]) -> None:
        if not self._recovered:
            raise Unavailable("the api is starting: its views of the compacted topics are not recovered yet")
        try:
            await asyncio.wait_for(view.catch_up(), READ_TIMEOUT_SECONDS)
        except (TimeoutError, KafkaError, RuntimeError) as exc:
            log.warning("catching up with %s failed: %s", view.topic, type(exc).__name__)
            raise Unavailable(f"could not read {view.topic} to its end in time; repeat the request") from None


def _as_document(value: bytes) -> dict[str, Any]:
    document: dict[str, Any] = orjson.loads(value)
    return document
