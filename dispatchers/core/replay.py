"""Replay of a postback that ended `rejected` or `dead_lettered`, pure: what a replay request is, and what
the dispatcher owning the postback's partition does with one.

A replay request is a record on the postback's own input topic `postbacks.<kind>`, with the postback's
key (its conversion_id: same partition, taken in order by the dispatcher that owns it): the original
matched postback plus a `replay` object (schemas/matched-postback.schema.json). Going through the topic
rather than a side door keeps every guarantee of a delivery: one owner per partition, a `pending` state
acknowledged before the offset is committed, one results record per cycle.

The decision reads only the postback's delivery state (dispatchers/core/delivery_state.py):

- final and delivered: never replayed (`delivered`);
- final as rejected or dead_lettered: a new delivery cycle of the same postback_id (`start`), whose
  `pending` state continues the attempts and carries the next replay number;
- a request id already taken (the request read twice after a crash or a rebalance): `duplicate`;
- not final (pending, decided, or in flight here): `not_final`, the request is ignored;
- no state at all (never consumed here, or its state is gone): `unknown`, ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from dispatchers.core.delivery_state import DeliveryState, ReplayCycle
from schemas.redaction import scrub

ReplayDecision = Literal["start", "delivered", "duplicate", "not_final", "unknown"]

# The request ids a state keeps: a request is read again only from offsets not committed yet (a crash or a
# rebalance repeats at most the last batch), so the last few are what dedupe needs, and a state stays small.
KEPT_REQUEST_IDS = 16
# A request id is an opaque handle chosen by whoever writes the request (a UUID from the CLI or the API).
MAX_REQUEST_ID_CHARS = 128
REPLAYABLE_RESULTS = ("rejected", "dead_lettered")


@dataclass(frozen=True, slots=True)
class ReplayRequest:
    request_id: str
    requested_at: str | None = None
    requested_by: str | None = None

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"request_id": self.request_id}
        if self.requested_at is not None:
            body["requested_at"] = self.requested_at
        if self.requested_by is not None:
            body["requested_by"] = self.requested_by
        return body


class InvalidReplayRequest(ValueError):
    """A `replay` object that is not one: the record goes to dead-letter as `invalid_message`."""


def split_replay_request(postback: dict[str, Any]) -> tuple[dict[str, Any], ReplayRequest | None]:
    """(the matched postback without its `replay` object, the request it carries or None when it is a
    plain postback). Raises InvalidReplayRequest when `replay` is there but malformed."""
    if "replay" not in postback:
        return postback, None
    body = postback["replay"]
    original = {name: value for name, value in postback.items() if name != "replay"}
    if not isinstance(body, dict):
        raise InvalidReplayRequest("replay is not an object")
    request_id = body.get("request_id")
    if not isinstance(request_id, str) or not request_id or len(request_id) > MAX_REQUEST_ID_CHARS:
        raise InvalidReplayRequest(f"replay.request_id is not a string of 1 to {MAX_REQUEST_ID_CHARS} characters")
    requested_at = body.get("requested_at")
    requested_by = body.get("requested_by")
    for name, value in (("requested_at", requested_at), ("requested_by", requested_by)):
        if value is not None and not isinstance(value, str):
            raise InvalidReplayRequest(f"replay.{name} is not a string")
    return original, ReplayRequest(request_id, requested_at, requested_by)


def replay_request_record(postback: dict[str, Any], request: ReplayRequest) -> dict[str, Any]:
    """The value of a replay request on `postbacks.<kind>` (its key: the postback's conversion_id).
    `requested_by` is a free label: an email or a credential written there is masked, no topic carries it."""
    original = {name: value for name, value in postback.items() if name != "replay"}
    body = request.as_json()
    if request.requested_by is not None:
        body["requested_by"] = scrub(request.requested_by)
    return {**original, "replay": body}


def decide_replay(state: DeliveryState | None, request_id: str, in_flight: bool) -> ReplayDecision:
    """What a replay request does, given the postback's delivery state and whether it is being delivered."""
    if state is not None and request_id in state.cycle.requests:
        return "duplicate"
    if in_flight:
        return "not_final"
    if state is None:
        return "unknown"
    if state.status != "final":
        return "not_final"
    if state.result == "delivered":
        return "delivered"
    return "start" if state.result in REPLAYABLE_RESULTS else "unknown"


def replay_pending_state(
    final: DeliveryState, postback: dict[str, Any], request_id: str, now: int, received_at: str
) -> DeliveryState:
    """The `pending` state that starts the replay cycle `decide_replay` allowed: same postback, the attempts
    so far kept (numbers continue), the next replay number, the request id remembered. Its age for the retry
    policy (DELIVERY_MAX_AGE) counts from `received_at`, the start of this cycle."""
    requests = (*final.cycle.requests, request_id)[-KEPT_REQUEST_IDS:]
    cycle = ReplayCycle(final.cycle.number + 1, requests)
    return DeliveryState("pending", now, final.attempts, received_at, None, postback, (), cycle)
