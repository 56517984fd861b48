"""The delivery state of one postback, kept per partition in a ChangelogStore keyed by postback_id.

`pending` carries the postback itself so that a dispatcher restarted (or a new owner of the
partition) resumes its retries; `final` keeps only the outcome, which is what dedupe needs: a
postback_id that has a state is never delivered again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import orjson

DeliveryStatus = Literal["pending", "final"]


@dataclass(frozen=True, slots=True)
class DeliveryState:
    status: DeliveryStatus
    updated_at: int  # unix seconds
    attempts: int = 0
    first_attempt_at: str | None = None
    result: str | None = None  # delivered | rejected | dead_lettered, when final
    postback: dict[str, Any] | None = None  # while pending


def encode_delivery_state(state: DeliveryState) -> bytes:
    return orjson.dumps(
        {
            "s": state.status,
            "t": state.updated_at,
            "a": state.attempts,
            "f": state.first_attempt_at,
            "r": state.result,
            "p": state.postback,
        }
    )


def decode_delivery_state(raw: bytes) -> DeliveryState:
    data = orjson.loads(raw)
    return DeliveryState(
        status=data["s"],
        updated_at=int(data["t"]),
        attempts=int(data.get("a") or 0),
        first_attempt_at=data.get("f"),
        result=data.get("r"),
        postback=data.get("p"),
    )
