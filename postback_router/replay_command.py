"""What `postback-router replay` prints and does: the postbacks found (postback_router/replay.py), one line
each on stdout, progress on stderr, then the replay requests written unless --dry-run."""

from __future__ import annotations

import click

from postback_router.replay import (
    Replayable,
    ReplayFilter,
    find_replayable,
    new_request,
    write_requests,
)
from service.settings import Settings


def _progress(message: str) -> None:
    click.echo(message, err=True)


def replay_line(item: Replayable) -> str:
    last = item.last
    finished = last.finished_at.isoformat().replace("+00:00", "Z") if last.finished_at else "-"
    cycle = f" replay={last.replay}" if last.replay else ""
    return f"{last.postback_id} {last.kind} {last.destination_id} {last.result} {last.reason} {finished}{cycle}"


async def run_replay(settings: Settings, filters: ReplayFilter, *, dry_run: bool, requested_by: str) -> int:
    """Returns how many replay requests were written (0 in a dry run)."""
    found = await find_replayable(settings.kafka, settings.topics, filters, _progress)
    for item in found.to_replay:
        click.echo(replay_line(item))
    for item in found.without_body:
        _progress(f"not replayable (its dead-letter record holds no whole postback): {replay_line(item)}")
    if dry_run:
        _progress(f"dry run: {len(found.to_replay)} postbacks would be replayed; nothing written")
        return 0
    requests = [(item.postback, new_request(requested_by)) for item in found.to_replay if item.postback is not None]
    written = await write_requests(settings.kafka, settings.topics, requests, _progress)
    _progress(f"{written} replay requests written; each dispatcher decides from its delivery state (docs/replay.md)")
    return written
