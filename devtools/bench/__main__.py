"""`make bench` (`python -m devtools.bench`): run the sections, print the table, write the JSON and the plot.

Each section starts its own embedded broker (or uses KAFKA_BOOTSTRAP_SERVERS, under topics of its own) and
measures the service's processes against a baseline in the same invocation, interleaved and repeated
(`--repeats`); the table shows the min and the median over the repeats and, where issue 13 sets a target, a
PASS or FAIL on the median. A missed target is a result, not an error: the exit status is non-zero only when
the harness itself could not measure (a section that failed is named, and the others still run).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import shutil
import sys
import tempfile
import traceback
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import orjson

from devtools.bench.common import FULL, QUICK, Context, SectionResult, Timer, say
from devtools.bench.report import Summary, render_table, rows_for, verdict_counts

SECTIONS = ("machine", "matcher", "dispatch_s2s", "dispatch_batch", "latency", "memory")


def parse_sections(raw: str | None) -> list[str]:
    if not raw:
        return list(SECTIONS)
    chosen = [name.strip() for name in raw.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in SECTIONS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}")
    return [name for name in SECTIONS if name in chosen]  # always in the usual order


def section_runner(name: str) -> Callable[[Context], Awaitable[SectionResult]]:
    module = importlib.import_module(f"devtools.bench.{name}")
    runner: Callable[[Context], Awaitable[SectionResult]] = module.run
    return runner


async def run_all(sections: list[str], ctx: Context) -> tuple[dict[str, SectionResult], dict[str, str]]:
    results: dict[str, SectionResult] = {}
    errors: dict[str, str] = {}
    for name in sections:
        timer = Timer()
        say(f"== {name} " + "=" * max(0, 60 - len(name)))
        try:
            results[name] = await section_runner(name)(ctx)
        except Exception as exc:  # a harness error: named, kept in the JSON, and the other sections still run
            errors[name] = f"{type(exc).__name__}: {exc}"
            say(f"{name}: HARNESS ERROR {errors[name]}")
            traceback.print_exc(file=sys.stdout)
        else:
            say(f"{name}: done in {timer.seconds:.0f}s")
    return results, errors


def write_results(
    path: str, args: argparse.Namespace, results: dict[str, SectionResult], errors: dict[str, str], seconds: float
) -> dict[str, Any]:
    figures: dict[str, dict[str, Summary]] = {name: r.figures for name, r in results.items()}
    rows = rows_for(figures, quick=args.quick)
    document = {
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "duration_s": round(seconds, 1),
        "options": {"quick": args.quick, "repeats": args.repeats, "sections": list(results) + list(errors)},
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "table": [
            {"section": r.section, "figure": r.figure, "target": r.target or None, "verdict": r.verdict or None}
            for r in rows
        ],
        "sections": {
            name: {
                "figures": {figure: summary.as_json() for figure, summary in result.figures.items()},
                "details": {k: v for k, v in result.details.items() if k != "plot"},
            }
            for name, result in results.items()
        },
        "errors": errors,
        # for the README: the same table in Markdown
        "table_markdown": render_table(rows, markdown=True),
    }
    with open(path, "wb") as out:
        out.write(orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS) + b"\n")
    return document


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes: about two minutes, figures rougher")
    parser.add_argument(
        "--only", type=parse_sections, default=None, metavar="SECTION[,SECTION]", help=f"of {', '.join(SECTIONS)}"
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="runs of each measurement (default 2; 1 with --quick)"
    )
    parser.add_argument("--results", default="bench-results.json", help="where the JSON goes")
    parser.add_argument("--plot", default="bench-latency.png", help="where the latency plot goes")
    parser.add_argument(
        "--keep", action="store_true", help="keep the processes' logs and state (kept anyway on an error)"
    )
    args = parser.parse_args()
    if args.repeats is None:
        args.repeats = 1 if args.quick else 2
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    sections: list[str] = args.only or list(SECTIONS)
    workdir = tempfile.mkdtemp(prefix="postback-router-bench-")
    ctx = Context(QUICK if args.quick else FULL, args.repeats, workdir)
    timer = Timer()
    say(
        f"bench: {', '.join(sections)}; {'quick' if args.quick else 'full'} sizes, "
        f"{args.repeats} repeat(s); logs in {workdir}"
    )
    try:
        results, errors = asyncio.run(run_all(sections, ctx))
    except KeyboardInterrupt:
        say(f"interrupted; logs kept in {workdir}")
        raise SystemExit(130) from None
    write_results(args.results, args, results, errors, timer.seconds)
    plotted = _plot(args.plot, results)
    rows = rows_for({name: r.figures for name, r in results.items()}, quick=args.quick)
    print()
    print(render_table(rows))
    counts = verdict_counts(rows)
    quick = f", {counts['quick']} set for the full sizes (not judged on --quick)" if counts["quick"] else ""
    say(
        f"targets: {counts['PASS']} PASS, {counts['FAIL']} FAIL, {counts['n/a']} not measured{quick}; "
        f"{args.results}{' and ' + args.plot if plotted else ''} written in {timer.seconds:.0f}s"
    )
    if errors:
        say(f"harness errors in {', '.join(errors)}; logs kept in {workdir}")
        raise SystemExit(1)
    if args.keep:
        say(f"logs and state kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)


def _plot(path: str, results: dict[str, SectionResult]) -> bool:
    latency = results.get("latency")
    if latency is None or "plot" not in latency.details:
        if os.path.exists(path):
            say(f"{path} left as it was: the latency section did not run")
        return False
    from devtools.bench.plot import plot_latency

    try:
        plot_latency(path, latency.details["plot"])
    except ImportError:
        say("matplotlib is not installed (pip install -e '.[bench]'): no plot")
        return False
    return True


if __name__ == "__main__":
    main()
