"""bench-latency.png: the latency section's distribution and throughput over time (matplotlib, `bench` extra)."""

from __future__ import annotations

from typing import Any

COLOURS = {"service": "tab:red", "raw": "tab:blue"}
LABELS = {"service": "service (worker + dispatch --kind s2s)", "raw": "raw two-hop pipeline"}


def plot_latency(path: str, data: dict[str, Any]) -> None:
    """Left: each pipeline's latency distribution (CDF, log scale). Right: offered and delivered per second."""
    import matplotlib  # the `bench` extra; see pyproject.toml

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, (left, right) = pyplot.subplots(1, 2, figsize=(13, 5))
    pipelines: dict[str, Any] = data["pipelines"]
    for name, series in pipelines.items():
        latencies = sorted(series["latencies_ms"])
        if latencies:
            shares = [(i + 1) / len(latencies) for i in range(len(latencies))]
            label = f"{LABELS.get(name, name)}: p50 {series['p50_ms']:.0f} ms, p99 {series['p99_ms']:.0f} ms"
            left.plot(latencies, shares, color=COLOURS.get(name), label=label)
    left.set_xscale("log")
    left.set_xlabel("conversion produced → request received (ms, log scale)")
    left.set_ylabel("share of delivered conversions")
    left.axhline(0.99, color="grey", linewidth=0.6, linestyle=":")
    left.grid(True, which="both", alpha=0.3)
    left.legend(loc="upper left", fontsize=8)
    left.set_title("Latency distribution")
    offered_drawn = False
    for name, series in pipelines.items():
        if not offered_drawn:
            right.plot(series["offered_series"], color="grey", linestyle="--", label="offered")
            offered_drawn = True
        right.plot(series["delivered_series"], color=COLOURS.get(name), label=f"delivered: {LABELS.get(name, name)}")
    right.axvline(data["seconds"], color="grey", linewidth=0.6, linestyle=":")
    right.set_xlabel("seconds since the offering started (dotted: it stops)")
    right.set_ylabel("conversions per second")
    right.grid(True, alpha=0.3)
    right.legend(loc="lower left", fontsize=8)
    right.set_title(f"Throughput at {data['rate']:,}/s offered")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot.close(figure)
