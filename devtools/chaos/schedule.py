"""When things happen in a chaos run: the kills, the damaged-state restarts, the rules change, the outage.

Times are seconds from the start of sending, over a run that sends for `seconds`. Besides a SIGKILL of a
random process every 10-20 s (until `kill_until`), a run has fixed events at fractions of `seconds`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

KILL_EVERY = (10.0, 20.0)
QUIET_AROUND_SPECIAL_S = 6.0


@dataclass(frozen=True)
class Event:
    at: float
    action: str  # kill, snapshot, stale, emptied, rebalance_sigterm, rules
    process: str = ""


def special_events(seconds: float) -> list[Event]:
    return [
        Event(0.15 * seconds, "snapshot", "worker-2"),  # SIGKILL, copy its state, restart
        Event(0.20 * seconds, "snapshot", "dispatcher-1"),
        Event(0.45 * seconds, "stale", "dispatcher-1"),  # SIGKILL, restart on the copy taken above
        Event(0.50 * seconds, "rules"),
        Event(0.55 * seconds, "stale", "worker-2"),
        Event(0.65 * seconds, "emptied", "worker-1"),  # SIGKILL, restart on an empty state directory
        Event(0.70 * seconds, "emptied", "dispatcher-2"),
        # SIGKILL dispatcher-1 and restart it (its return starts a rebalance), then SIGTERM dispatcher-2
        Event(0.80 * seconds, "rebalance_sigterm", "dispatcher-2"),
    ]


def make_schedule(rng: random.Random, seconds: float, kill_until: float, names: list[str]) -> list[Event]:
    specials = special_events(seconds)
    events = list(specials)
    at = rng.uniform(*KILL_EVERY)
    while at < kill_until:
        if all(abs(at - s.at) >= QUIET_AROUND_SPECIAL_S for s in specials):
            events.append(Event(at, "kill", rng.choice(names)))
        at += rng.uniform(*KILL_EVERY)
    return sorted(events, key=lambda e: e.at)
