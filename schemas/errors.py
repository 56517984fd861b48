"""Why an input record was refused: a bounded reason code (the `reason` of invalid-record.schema.json,
and a metric label) and a readable message.

Messages name fields and constraints, never the offending value: a value may be personal data.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

InvalidReason = Literal[
    "not_utf8",
    "not_json",
    "not_object",
    "missing_field",
    "wrong_type",
    "invalid_value",
    "oversized",
    "key_mismatch",
    "invalid_rule",
    "processing_error",
    "unknown_click",  # a conversion without campaign_id whose click did not arrive within the grace period
]


@dataclass(frozen=True, slots=True)
class FieldError:
    field: str
    message: str


@dataclass(slots=True)
class InvalidInput(Exception):
    """Raised by the parsers; carries everything the `.invalid` record needs."""

    reason: InvalidReason
    message: str
    field: str | None = None
    errors: list[FieldError] = dataclasses.field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"
