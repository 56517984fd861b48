"""The chaos report: what the run measured against the reference model, its targets, and the table."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import orjson

from devtools.chaos.faults import Ledger
from devtools.chaos.model import KINDS, Expectations, Plan

MAX_DRAIN_S = 120.0
# A repeated request is "in flight" (allowed) when the answer to its earlier copy was sent within this
# window around a dispatcher's SIGKILL: up to 5 s after the kill (the process died waiting for it: a
# destination answers up to 50 ms late, but the platform fakes run in the chaos process, whose event
# loop was seen waking up to 3 s late under the full run's load, and their clock with it:
# driver_max_loop_lag_s) or up to 3 s before it (the answer arrived, but the process died before it had
# recorded it).
IN_FLIGHT_BEFORE_S = 3.0
IN_FLIGHT_AFTER_S = 5.0


@dataclass(frozen=True)
class Outcome:
    """What the run produced, read back at its end."""

    results: list[dict[str, Any]]
    invalid_positions: int
    leaks: dict[str, dict[str, int]]  # where -> what -> count
    kills: int
    kills_per_process: dict[str, int]
    dispatcher_kills: list[float]
    sigterms: int
    unexpected_exits: int
    peak_rss_mb: dict[str, float]
    outage_until: float
    started_at: float  # time.monotonic() when sending began
    driver_max_loop_lag_s: float
    duration_s: float
    completed: bool
    events: list[str]


def after_ack_repeats(accepted: dict[str, list[float]], dispatcher_kills: list[float]) -> int:
    """Repeats of a request whose earlier copy had been answered while no dispatcher was dying."""
    return len(after_ack_cases(accepted, dispatcher_kills))


def after_ack_cases(accepted: dict[str, list[float]], dispatcher_kills: list[float]) -> list[tuple[str, float, float]]:
    """(postback_id, the earlier answer's time, seconds from it to the nearest dispatcher SIGKILL) of each
    repeat after an acknowledged answer."""
    cases = []
    for pid, times in accepted.items():
        for earlier in sorted(times)[:-1]:
            in_flight = any(
                earlier - IN_FLIGHT_AFTER_S <= kill <= earlier + IN_FLIGHT_BEFORE_S for kill in dispatcher_kills
            )
            if not in_flight:
                nearest = min((kill - earlier for kill in dispatcher_kills), key=abs, default=float("inf"))
                cases.append((pid, earlier, nearest))
    return cases


def drain_seconds(
    expect: Expectations, ledger: Ledger, first_sent: dict[str, float], outage_until: float
) -> dict[str, float]:
    """Per destination kind: how long after the outage the last postback pending at its end was accepted."""
    drain = dict.fromkeys(KINDS, 0.0)
    for pid, inputs in expect.must.items():
        times = ledger.accepted.get(pid)
        if not times or first_sent.get(pid, float("inf")) >= outage_until:
            continue
        first = min(times)
        if first > outage_until:
            kind = expect.kind_of_entry[inputs[1]]
            drain[kind] = max(drain[kind], first - outage_until)
    return {kind: round(seconds, 1) for kind, seconds in drain.items()}


def summarise(
    plan: Plan, expect: Expectations, ledger: Ledger, first_sent: dict[str, float], out: Outcome
) -> dict[str, Any]:
    per_postback = Counter(r["postback_id"] for r in out.results)
    outcomes = Counter(r["result"] for r in out.results)
    finished = {r["postback_id"] for r in out.results if r["result"] in ("delivered", "rejected", "dead_lettered")}
    delivered = {r["postback_id"] for r in out.results if r["result"] == "delivered"}
    repeats = {pid: len(times) - 1 for pid, times in ledger.accepted.items() if len(times) > 1}
    unkeyed = sum(n for pid, n in repeats.items() if ledger.destination_of[pid] == "s2s")
    drain = drain_seconds(expect, ledger, first_sent, out.outage_until)
    return {
        "conversions_sent": plan.conversions,
        "records_sent": len(plan.records),
        "invalid_sent": plan.invalid,
        "invalid_captured": out.invalid_positions,
        "hostile_sent": dict(plan.hostile),
        "expected_postbacks": len(expect.must),
        "expected_per_kind": dict(Counter(expect.kind_of_entry[f[1]] for f in expect.must.values())),
        "may_fire_either_way": len(expect.allowed) - len(expect.must),
        "delivered_unique": len(delivered & expect.must.keys()),
        "rejected": outcomes["rejected"],
        "dead_lettered": outcomes["dead_lettered"],
        "lost": len(expect.must.keys() - finished),
        "unexpected_postbacks": len(set(per_postback) - expect.allowed),
        "results_records": len(out.results),
        "postbacks_with_two_results": sum(1 for n in per_postback.values() if n > 1),
        "duplicates_same_key": sum(repeats.values()) - unkeyed,
        "duplicates_unkeyed": unkeyed,
        "duplicates_after_ack": after_ack_repeats(ledger.accepted, out.dispatcher_kills),
        "driver_max_loop_lag_s": round(out.driver_max_loop_lag_s, 2),
        "after_ack_cases": [
            {
                "postback_id": pid,
                "destination": ledger.destination_of[pid],
                "answered_at_s": round(at - out.started_at, 1),
                "nearest_kill_s": round(gap, 1),
            }
            for pid, at, gap in after_ack_cases(ledger.accepted, out.dispatcher_kills)[:20]
        ],
        "destination_requests": dict(ledger.requests),
        "destination_answers": {
            d: {str(status): n for status, n in sorted(a.items())} for d, a in ledger.answers.items()
        },
        "kills": out.kills,
        "kills_per_process": out.kills_per_process,
        "sigterms": out.sigterms,
        "unexpected_exits": out.unexpected_exits,
        "peak_rss_mb": {name: round(mb, 1) for name, mb in sorted(out.peak_rss_mb.items())},
        "max_drain_after_outage_s": max(drain.values()),
        "drain_after_outage_s": drain,
        "pii_or_secret_leaks": sum(sum(found.values()) for found in out.leaks.values()),
        "leaks": out.leaks,
        "completed_before_deadline": out.completed,
        "events": out.events,
        "duration_s": round(out.duration_s, 1),
    }


def targets(report: dict[str, Any], min_kills: int) -> dict[str, tuple[str, bool]]:
    """measure -> (what it must be, whether it is)."""
    return {
        "lost": ("= 0", report["lost"] == 0),
        "unexpected_postbacks": ("= 0", report["unexpected_postbacks"] == 0),
        "postbacks_with_two_results": ("= 0", report["postbacks_with_two_results"] == 0),
        "invalid_captured": (
            f"= invalid_sent ({report['invalid_sent']})",
            report["invalid_captured"] == report["invalid_sent"],
        ),
        "duplicates_unkeyed": (f"<= kills ({report['kills']})", report["duplicates_unkeyed"] <= report["kills"]),
        "duplicates_after_ack": ("= 0", report["duplicates_after_ack"] == 0),
        "pii_or_secret_leaks": ("= 0", report["pii_or_secret_leaks"] == 0),
        "max_drain_after_outage_s": (f"<= {MAX_DRAIN_S:.0f}", report["max_drain_after_outage_s"] <= MAX_DRAIN_S),
        "kills": (f">= {min_kills}", report["kills"] >= min_kills),
        "unexpected_exits": ("= 0", report["unexpected_exits"] == 0),
        "completed_before_deadline": ("true", bool(report["completed_before_deadline"])),
    }


def table(report: dict[str, Any], verdicts: dict[str, tuple[str, bool]]) -> list[str]:
    lines = [f"{'measure':<28} {'value':>14}   target", "-" * 78]
    for name, value in report.items():
        if name in ("events", "leaks", "after_ack_cases"):
            continue
        shown = orjson.dumps(value).decode() if isinstance(value, dict) else str(value)
        verdict = ""
        if name in verdicts:
            wanted, ok = verdicts[name]
            verdict = f"{wanted:<26} {'PASS' if ok else 'FAIL'}"
        lines.append(f"{name:<28} {shown:>14}   {verdict}")
    lines.append("-" * 78)
    return lines
