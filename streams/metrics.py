"""The worker's Prometheus metrics. Label values are bounded sets (kinds, reasons), never ids."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.conversions_consumed = Counter(
            "postback_conversions_consumed_total",
            "Conversion records read from the conversions topic.",
            registry=registry,
        )
        self.conversions_invalid = Counter(
            "postback_conversions_invalid_total",
            "Conversion records refused and written to the .invalid topic, by reason.",
            ["reason"],
            registry=registry,
        )
        self.matched = Counter(
            "postback_matched_total",
            "Postbacks that fired and were written, by destination kind.",
            ["kind"],
            registry=registry,
        )
        self.filtered = Counter(
            "postback_filtered_total",
            "Entries that did not fire (disabled, type, status, payout, duplicate), "
            "and conversions without rules (no_rules).",
            ["reason"],
            registry=registry,
        )
        self.pii_unusable = Counter(
            "postback_pii_unusable_total",
            "Personal fields of conversions whose postbacks were written, left out because they could not be "
            "normalised (phone: no_region, unknown_region, unparseable, invalid_number), by field and reason.",
            ["field", "reason"],
            registry=registry,
        )
        self.rules_invalid = Counter(
            "postback_rules_invalid_total",
            "Campaign-rules and offer-source records refused and written to their .invalid topic, by topic.",
            ["topic"],
            registry=registry,
        )
        self.rules_campaigns = Gauge(
            "postback_rules_campaigns", "Campaigns with rules in this worker's view.", registry=registry
        )
        self.offer_sources = Gauge("postback_offer_sources", "Offer sources in this worker's view.", registry=registry)
        self.batch_seconds = Histogram(
            "postback_match_batch_seconds",
            "Time to match one batch of conversions and have its messages acknowledged.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=registry,
        )
        self.batch_size = Histogram(
            "postback_match_batch_size",
            "Conversions per matched batch.",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000),
            registry=registry,
        )
