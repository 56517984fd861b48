"""The message contract: JSON Schemas for every message postback-router reads or writes.

The `.schema.json` files beside this module are the documentation downstream consumers rely on;
the service validates its input against them at run time and the tests validate its output.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

SCHEMA_NAMES = (
    "conversion",
    "click",
    "campaign-rules",
    "offer-source",
    "matched-postback",
    "invalid-record",
    "evaluation",
    "delivery-result",
    "dead-letter",
)


@functools.cache
def load_schema(name: str) -> dict[str, Any]:
    """The parsed schema `schemas/<name>.schema.json`."""
    if name not in SCHEMA_NAMES:
        raise KeyError(f"no schema named {name!r}; known: {', '.join(SCHEMA_NAMES)}")
    text = resources.files(__name__).joinpath(f"{name}.schema.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema
