"""The delivery state of one postback, kept per partition in a ChangelogStore keyed by postback_id.

The state changelog is the one source of truth about a postback (README "Delivery"):

- `pending` carries the postback itself so that a dispatcher restarted (or a new owner of the
  partition) resumes its retries;
- `decided` is written, and acknowledged, as soon as its outcome is known, before anything is done
  with it: the answer was received (or the postback given up), so it is never sent again. It carries
  the records that report it (`emit`: the `postbacks.results` record and, unless delivered, the
  `postbacks.dead-letter` one), each with the partition it goes to and an offset of that partition
  at or below the end when the outcome was decided, so that whoever finds the state `decided` later
  checks from there whether each record is already written, and writes only those that are not;
- `final` keeps only the outcome, once those records are acknowledged: what dedupe needs. A
  postback_id that has any state is never delivered again, except by a replay.

A replay (dispatchers/core/replay.py) starts a new delivery cycle of a postback `final` as rejected or
dead_lettered: every state of that cycle carries its `ReplayCycle` (its number, 1, 2, ..., and the ids of
the replay requests taken so far, so that a request read twice starts one cycle only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import orjson

DeliveryStatus = Literal["pending", "decided", "final"]
# Where a reporting record goes: named by role, not topic name, so a state outlives a topic prefix change.
EmitRole = Literal["results", "dead_letter"]


@dataclass(frozen=True, slots=True)
class EmitRecord:
    """One record reporting a decided postback: its Kafka key is the postback_id."""

    role: EmitRole
    partition: int
    from_offset: int  # the partition's end was at least this when the outcome was decided
    value: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ReplayCycle:
    """Which delivery cycle of a postback a state belongs to: 0 is the first (no replay)."""

    number: int = 0
    requests: tuple[str, ...] = ()  # ids of the replay requests that started cycles, the latest last


FIRST_CYCLE = ReplayCycle()


@dataclass(frozen=True, slots=True)
class DeliveryState:
    status: DeliveryStatus
    updated_at: int  # unix seconds
    attempts: int = 0
    first_attempt_at: str | None = None
    result: str | None = None  # delivered | rejected | dead_lettered, when decided or final
    postback: dict[str, Any] | None = None  # while pending
    emit: tuple[EmitRecord, ...] = ()  # while decided
    cycle: ReplayCycle = FIRST_CYCLE


def encode_delivery_state(state: DeliveryState) -> bytes:
    data: dict[str, Any] = {
        "s": state.status,
        "t": state.updated_at,
        "a": state.attempts,
        "f": state.first_attempt_at,
        "r": state.result,
        "p": state.postback,
    }
    if state.emit:
        data["e"] = [{"r": e.role, "p": e.partition, "o": e.from_offset, "v": e.value} for e in state.emit]
    if state.cycle.number or state.cycle.requests:  # absent for the first cycle: states written before replays
        data["n"] = state.cycle.number
        data["q"] = list(state.cycle.requests)
    return orjson.dumps(data)


def decode_delivery_state(raw: bytes) -> DeliveryState:
    data = orjson.loads(raw)
    return DeliveryState(
        status=data["s"],
        updated_at=int(data["t"]),
        attempts=int(data.get("a") or 0),
        first_attempt_at=data.get("f"),
        result=data.get("r"),
        postback=data.get("p"),
        emit=tuple(EmitRecord(e["r"], int(e["p"]), int(e["o"]), e["v"]) for e in data.get("e") or ()),
        cycle=ReplayCycle(int(data.get("n") or 0), tuple(str(q) for q in data.get("q") or ())),
    )
