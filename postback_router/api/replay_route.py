"""POST /v1/postbacks/{postback_id}/replay: find one postback that failed for good and write its replay
request (postback_router/replay.py, docs/replay.md).

The lookup reads the partition of `postbacks.results` holding the key (results are keyed by postback_id)
and, for a postback to replay, the one of `postbacks.dead-letter`: a scan of 1/N of each topic per
request, linear in what they retain. The trace index (postback_router/api/trace_index.py) could serve
this lookup later without the scan. The dispatcher owning the postback decides again from its delivery
state, so a 202 says the request was written, not that a cycle started (docs/replay.md).
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from aiokafka.errors import KafkaError

from dispatchers.core.replay import ReplayRequest
from postback_router.api.backend import Unavailable
from postback_router.replay import REPLAYABLE, Replayable, find_postback, new_request, write_requests
from service.kafka_connection import KafkaConnection
from service.settings import Topics

# Postback ids are UUIDv5 (schemas/matched-postback.schema.json): any other id is unknown without a scan.
POSTBACK_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
# A lookup reads two partitions to their end; Kafka not answering within this is a 503, repeated by the client.
LOOKUP_TIMEOUT_SECONDS = 15.0
REQUESTED_BY = "api"


class PostbackReplays(Protocol):
    """Where the route finds a postback and writes its replay request (Kafka; tests may bring another)."""

    async def find(self, postback_id: str) -> Replayable | None: ...

    async def request(self, postback: dict[str, Any], request: ReplayRequest) -> None: ...


@dataclass(frozen=True, slots=True)
class KafkaPostbackReplays:
    kafka: KafkaConnection
    topics: Topics

    async def find(self, postback_id: str) -> Replayable | None:
        try:
            async with asyncio.timeout(LOOKUP_TIMEOUT_SECONDS):
                return await find_postback(self.kafka, self.topics, postback_id)
        except (TimeoutError, KafkaError) as exc:
            raise Unavailable(f"reading postbacks.results did not complete: {type(exc).__name__}") from None

    async def request(self, postback: dict[str, Any], request: ReplayRequest) -> None:
        try:
            async with asyncio.timeout(LOOKUP_TIMEOUT_SECONDS):
                await write_requests(self.kafka, self.topics, [(postback, request)])
        except (TimeoutError, KafkaError) as exc:
            raise Unavailable(f"writing the replay request did not complete: {type(exc).__name__}") from None


@dataclass(frozen=True, slots=True)
class ReplayAnswer:
    status: int
    body: dict[str, Any] | None = None  # the 202's body
    message: str = ""  # an error's


def _time(moment: datetime | None) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment else None


async def replay_postback(replays: PostbackReplays, postback_id: str) -> ReplayAnswer:
    """202 with the request written, 404 unknown (or not final yet), 409 delivered (never replayed),
    422 when no whole copy of the postback was kept (too large: its dispatcher would refuse it again)."""
    found = await replays.find(postback_id) if POSTBACK_ID.fullmatch(postback_id) else None
    if found is None:
        return ReplayAnswer(404, message="no results record of this postback (unknown, or not final yet)")
    last = found.last
    if last.result not in REPLAYABLE:
        return ReplayAnswer(409, message=f"the postback was {last.result}: a delivered postback is never replayed")
    if found.postback is None:
        return ReplayAnswer(422, message="no whole copy of this postback was kept (it was too large): not replayable")
    request = new_request(REQUESTED_BY)
    await replays.request(found.postback, request)
    body = {
        "status": "requested",
        "postback_id": postback_id,
        "kind": last.kind,
        "destination_id": last.destination_id,
        "request": request.as_json(),
        "last_outcome": {
            "result": last.result,
            "reason": last.reason,
            "finished_at": _time(last.finished_at),
            "replay": last.replay,
        },
    }
    return ReplayAnswer(202, body)
