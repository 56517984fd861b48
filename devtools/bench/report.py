"""The pure parts of `make bench`: percentiles, busy windows, summaries, ratios, targets and the table.

No I/O here, so tests/devtools/test_bench_report.py checks it with plain values.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

PASS, FAIL, NOT_MEASURED = "PASS", "FAIL", "n/a"
NOT_AT_SIZE = "quick"  # a target set for the full sizes, not judged on a --quick run


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) of `values`, interpolated linearly between the closest ranks; NaN if empty."""
    if not values:
        return math.nan
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is not between 0 and 100")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator; NaN when either is NaN or the denominator is not above 0."""
    if math.isnan(numerator) or math.isnan(denominator) or denominator <= 0:
        return math.nan
    return numerator / denominator


# --- rates from samples of a running process --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    """One look at a measured process: when (monotonic seconds), its CPU time so far, its work done so far."""

    at: float
    cpu: float
    count: int


@dataclass(frozen=True, slots=True)
class Throughput:
    events: int
    seconds: float
    cpu_seconds: float

    @property
    def per_s(self) -> float:
        return ratio(self.events, self.seconds)

    @property
    def cpu_us_per_event(self) -> float:
        return ratio(self.cpu_seconds * 1e6, self.events)


def runs_detail(runs: Mapping[str, list[Throughput | None]]) -> dict[str, list[dict[str, float] | None]]:
    """Every measured run, for bench-results.json (None: a run that measured nothing)."""
    return {
        variant: [
            None
            if t is None
            else {"events": t.events, "seconds": round(t.seconds, 3), "cpu_seconds": round(t.cpu_seconds, 3)}
            for t in measured
        ]
        for variant, measured in runs.items()
    }


def describe(measured: Throughput | None, unit: str) -> str:
    """A progress line's account of one measured run: rate, CPU per item, how much in how long."""
    if measured is None:
        return "no work measured"
    return (
        f"{measured.per_s:9,.0f} {unit}/s  {measured.cpu_us_per_event:6.1f} µs CPU each "
        f"({measured.events:,} in {measured.seconds:.1f}s)"
    )


def busy_window(samples: Sequence[Sample], total: int | None = None) -> Throughput | None:
    """The rate while work was under way: from the first sample that had done some work to the last one
    that had not done all of it (`total`), so neither start-up nor the idle tail counts. With fewer than
    two samples inside, the last sample is the end. None when no work was seen between two samples."""
    started = [s for s in samples if s.count > 0]
    if not started:
        return None
    first = started[0]
    inside = [s for s in started if total is None or s.count < total]
    last = inside[-1] if len(inside) >= 2 else started[-1]
    if last.count <= first.count or last.at <= first.at:
        return None
    return Throughput(last.count - first.count, last.at - first.at, max(0.0, last.cpu - first.cpu))


def per_second(times: Iterable[float], start: float, seconds: int) -> list[int]:
    """How many of `times` fall in each whole second after `start`, for `seconds` seconds."""
    counts = [0] * max(0, seconds)
    for at in times:
        index = math.floor(at - start)
        if 0 <= index < len(counts):
            counts[index] += 1
    return counts


# --- repeated runs -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Summary:
    """A figure over the repeats of a section: what the table shows (min and median) and every value."""

    values: tuple[float, ...]

    @property
    def measured(self) -> tuple[float, ...]:
        return tuple(v for v in self.values if not math.isnan(v))

    @property
    def min(self) -> float:
        return min(self.measured) if self.measured else math.nan

    @property
    def median(self) -> float:
        return statistics.median(self.measured) if self.measured else math.nan

    @property
    def max(self) -> float:
        return max(self.measured) if self.measured else math.nan

    def as_json(self) -> dict[str, Any]:
        def clean(value: float) -> float | None:
            return None if math.isnan(value) else round(value, 4)

        return {
            "min": clean(self.min),
            "median": clean(self.median),
            "max": clean(self.max),
            "values": [clean(v) for v in self.values],
        }


def summarize(values: Iterable[float]) -> Summary:
    return Summary(tuple(float(v) for v in values))


def pairwise_ratios(numerators: Sequence[float], denominators: Sequence[float]) -> Summary:
    """Ratios of the runs of one repeat with each other (interleaved runs share the machine's state)."""
    if len(numerators) != len(denominators):
        raise ValueError(f"{len(numerators)} runs against {len(denominators)} baseline runs")
    return summarize(ratio(n, d) for n, d in zip(numerators, denominators, strict=True))


# --- targets -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """A figure's target from issue 13 / contract §6, judged on the median over the repeats."""

    section: str
    figure: str
    comparison: Literal["<=", ">="]
    bound: float
    sized: bool = False  # set for the full sizes (100k campaigns, 1M keys): a --quick run is not judged

    def verdict(self, value: float | None) -> str:
        if value is None or math.isnan(value):
            return NOT_MEASURED
        held = value <= self.bound if self.comparison == "<=" else value >= self.bound
        return PASS if held else FAIL

    @property
    def text(self) -> str:
        return f"{self.comparison} {self.bound:g}"


TARGETS: tuple[Target, ...] = (
    Target("matcher", "cpu_us_per_event", "<=", 60),
    Target("matcher", "ratio_vs_raw", ">=", 0.6),
    Target("matcher", "ratio_vs_faust_batch", ">=", 3),
    Target("matcher", "ratio_vs_faust_naive", ">=", 10),
    Target("dispatch_s2s", "ratio", ">=", 0.8),
    Target("dispatch_s2s", "cpu_us_per_postback", "<=", 300),
    Target("latency", "p99_ratio_vs_raw", "<=", 1.5),
    # "1,000 conversions/s sustained with no growing backlog": what got through against what was offered
    Target("latency", "achieved_ratio", ">=", 0.95),
    Target("memory", "peak_rss_mb_memory_store", "<=", 400, sized=True),
    Target("memory", "peak_rss_mb_rocksdb", "<=", 400, sized=True),
    Target("memory", "recovery_s", "<=", 5, sized=True),
    # /readyz ready only after the fired-state is restored: how long it said ready before that (0 or less)
    Target("memory", "ready_before_restored_s", "<=", 0),
)


def target_for(section: str, figure: str, targets: Sequence[Target] = TARGETS) -> Target | None:
    for target in targets:
        if (target.section, target.figure) == (section, figure):
            return target
    return None


# --- the table -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Row:
    section: str
    figure: str
    min: float
    median: float
    target: str
    verdict: str


def rows_for(
    sections: Mapping[str, Mapping[str, Summary]], targets: Sequence[Target] = TARGETS, *, quick: bool = False
) -> list[Row]:
    """One row per figure, in the order the sections measured them; the verdict on the median (`quick`: the
    targets set for the full sizes are not judged)."""
    rows: list[Row] = []
    for section, figures in sections.items():
        for figure, summary in figures.items():
            target = target_for(section, figure, targets)
            verdict = ""
            if target is not None:
                verdict = NOT_AT_SIZE if quick and target.sized else target.verdict(summary.median)
            rows.append(Row(section, figure, summary.min, summary.median, target.text if target else "", verdict))
    return rows


def verdict_counts(rows: Iterable[Row]) -> dict[str, int]:
    counts = {PASS: 0, FAIL: 0, NOT_MEASURED: 0, NOT_AT_SIZE: 0}
    for row in rows:
        if row.verdict:
            counts[row.verdict] += 1
    return counts


def number(value: float) -> str:
    """A figure as the table shows it: thousands separated, fewer decimals the larger it is; `-` for NaN."""
    if math.isnan(value):
        return "-"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def render_table(rows: Sequence[Row], markdown: bool = False) -> str:
    """The table printed at the end of a run (`markdown`: the same as a Markdown table, for the README)."""
    header = ("section", "figure", "min", "median", "target", "verdict")
    cells = [(r.section, r.figure, number(r.min), number(r.median), r.target, r.verdict) for r in rows]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
        lines += ["| " + " | ".join(cell) + " |" for cell in cells]
        return "\n".join(lines)
    widths = [max(len(str(row[i])) for row in [header, *cells]) for i in range(len(header))]
    right = {2, 3}  # numbers

    def line(row: Sequence[str]) -> str:
        return "  ".join(c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(row)).rstrip()

    rule = "-" * len(line(header))
    return "\n".join([line(header), rule, *(line(c) for c in cells), rule])
