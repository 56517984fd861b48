"""`python -m tests.integration.crashpoint_dispatch dispatch --kind s2s`: the real dispatcher, held at a chosen step.

Test-only (nothing of it is in the product): it wraps the consumer-group member's two Kafka writes,
`GroupMember.send` and `GroupMember.write_changelog`, then runs the command line as usual. When the
dispatcher reaches the step named by CRASHPOINT, the name is written to CRASHPOINT_FILE and the task
that reached it waits forever (the rest of the process carries on), so that the test SIGKILLs the
process exactly there. Only for the postback whose id is CRASHPOINT_POSTBACK, and only the first time.

Steps, in the order a postback's finalisation goes through them:

- `outcome-recording`: a delivery state holding an outcome (`decided`) is about to be written;
- `results-writing`: records for `postbacks.results` are about to be produced;
- `results-written`: they were acknowledged;
- `final-written`: a `final` delivery state was acknowledged.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Sequence
from typing import Any

import orjson

from postback_router.cli import main
from service.group_member import GroupMember
from service.settings import load_settings

STEP = os.environ.get("CRASHPOINT", "")
SIGNAL_FILE = os.environ.get("CRASHPOINT_FILE", "")
POSTBACK_ID = os.environ.get("CRASHPOINT_POSTBACK", "").encode()
RESULTS_TOPIC = load_settings(os.environ).topics.results
_reached = False


async def _hold(step: str) -> None:
    global _reached
    if step != STEP or _reached:
        return
    _reached = True
    with open(SIGNAL_FILE, "w") as signal_file:
        signal_file.write(step)
    await asyncio.Event().wait()  # until SIGKILL


def _statuses(changes: Sequence[tuple[int, bytes, bytes | None]]) -> set[str]:
    """The delivery statuses `changes` write for the postback held."""
    return {orjson.loads(value).get("s") for _, key, value in changes if key == POSTBACK_ID and value is not None}


_send = GroupMember.send
_write_changelog = GroupMember.write_changelog


async def send(self: GroupMember, records: Sequence[Any], what: str, *args: Any, **kwargs: Any) -> Any:
    results = any(topic == RESULTS_TOPIC and key == POSTBACK_ID for topic, key, *_ in records)
    if results:
        await _hold("results-writing")
    written = await _send(self, records, what, *args, **kwargs)
    if results:
        await _hold("results-written")
    return written


async def write_changelog(self: GroupMember, store: Any, changes: Any, what: str, *args: Any, **kwargs: Any) -> Any:
    statuses = _statuses(changes)
    if "decided" in statuses:
        await _hold("outcome-recording")
    written = await _write_changelog(self, store, changes, what, *args, **kwargs)
    if "final" in statuses:
        await _hold("final-written")
    return written


GroupMember.send = send  # type: ignore[method-assign]
GroupMember.write_changelog = write_changelog  # type: ignore[method-assign]

if __name__ == "__main__":
    main(sys.argv[1:])
