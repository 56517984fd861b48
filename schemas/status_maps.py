"""Status maps: how a status a network sends (`sale`, `APPROVED`, `hold`) becomes one of the four
conversion statuses. Used by intake (the default map, `INTAKE_STATUS_MAP`, and an offer source's
`status_map`); the worker only ever sees the four statuses (contract §2 is unchanged).

Pure data and pure functions: settings (service) and the offer-source parser (streams/core) both
check maps with `status_map_errors`, so a map is refused with the same words wherever it is given.
"""

from __future__ import annotations

from collections.abc import Mapping

from schemas.errors import FieldError
from schemas.kinds import STATUSES

# The longest status text intake reads, and the most entries one map may hold: a network has a handful
# of statuses; the bound keeps an offer-source document (and its error message) small.
MAX_STATUS_LENGTH = 128
MAX_STATUS_MAP_ENTRIES = 100

# The statuses networks send to trackers in practice (RedTrack, Voluum, Keitaro, Binom, Everflow),
# matched case-insensitively. Keitaro's `lead` is a conversion waiting for approval and `rebill` a
# repeat sale; `cancelled` and `canceled` are both spelt in the wild.
DEFAULT_STATUS_MAP: Mapping[str, str] = {
    "sale": "approved",
    "approve": "approved",
    "confirmed": "approved",
    "rebill": "approved",
    "hold": "pending",
    "lead": "pending",
    "rejected": "declined",
    "reject": "declined",
    "cancelled": "declined",
    "canceled": "declined",
}


def fold(status: str) -> str:
    """The form statuses are compared in: `Sale`, `SALE` and `sale` are one status."""
    return status.casefold()


def status_map_errors(raw: object, field: str) -> list[FieldError]:
    """What is wrong with `raw` as a status map (`field` names it in the errors): it must be a JSON
    object of at most MAX_STATUS_MAP_ENTRIES entries, each a status of 1-MAX_STATUS_LENGTH characters
    mapped to approved, pending, declined or other. Keys equal but for case must agree, and a key
    that is one of the four statuses must map to itself: `APPROVED` always means approved, so that
    no map can turn a canonical status into another one behind the sender's back."""
    if not isinstance(raw, dict):
        return [FieldError(field, "must be a JSON object of status -> approved, pending, declined or other")]
    if len(raw) > MAX_STATUS_MAP_ENTRIES:
        return [FieldError(field, f"must have at most {MAX_STATUS_MAP_ENTRIES} entries")]
    errors: list[FieldError] = []
    seen: dict[str, object] = {}
    for key, value in raw.items():
        name = f"{field}.{key}" if isinstance(key, str) and len(key) <= MAX_STATUS_LENGTH else field
        if not isinstance(key, str) or not 0 < len(key.strip()) <= MAX_STATUS_LENGTH:
            errors.append(FieldError(name, f"each status must be 1-{MAX_STATUS_LENGTH} characters"))
        elif value not in STATUSES:
            errors.append(FieldError(name, "must be one of " + ", ".join(STATUSES)))
        elif fold(key) in STATUSES and value != fold(key):
            errors.append(FieldError(name, f"must be {fold(key)}: a canonical status always maps to itself"))
        elif seen.setdefault(fold(key), value) != value:
            errors.append(FieldError(name, "is given again in another case with another status"))
    return errors


def folded(status_map: Mapping[str, str]) -> dict[str, str]:
    """A checked map with its keys folded (and stripped), ready for `map_status`."""
    return {fold(key.strip()): value for key, value in status_map.items()}


def map_status(status: str, *maps: Mapping[str, str]) -> str | None:
    """The conversion status `status` means: the canonical statuses themselves, else the first of
    `maps` (folded, see `folded`) that knows it; None when none does."""
    key = fold(status.strip())
    if key in STATUSES:
        return key
    for status_map in maps:
        if key in status_map:
            return status_map[key]
    return None


def accepted_statuses(*maps: Mapping[str, str]) -> list[str]:
    """Every status `map_status` accepts with these maps, canonical ones first, for an error message."""
    extra = sorted({key for status_map in maps for key in status_map} - set(STATUSES))
    return [*STATUSES, *extra]
