"""The api's Prometheus metrics. Every label has a bounded set of values."""

from __future__ import annotations

from typing import Literal, get_args

from prometheus_client import CollectorRegistry, Counter, Histogram

IntakeResult = Literal["accepted", "invalid", "unfilled_macro", "unauthorized", "unavailable"]
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED_ROUTE = "(unmatched)"


class ApiMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "postback_api_requests",
            "HTTP requests answered, by route template (never the raw path), method and status code.",
            ["route", "method", "code"],
            registry=registry,
        )
        self.duration = Histogram(
            "postback_api_request_duration_seconds",
            "Time to answer an HTTP request, by route template.",
            ["route"],
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.intake = Counter(
            "postback_intake",
            "Postbacks received on /v1/postback and /postback, by result.",
            ["result"],
            registry=registry,
        )
        for result in get_args(IntakeResult):
            self.intake.labels(result)  # present at 0 from the start, so rate() works at once

    def observe(self, route: str, method: str, code: int, seconds: float) -> None:
        # Methods are free text in HTTP; a client must not be able to grow the label set.
        self.requests.labels(route, method if method in METHODS else "other", str(code)).inc()
        self.duration.labels(route).observe(seconds)

    def count_intake(self, result: IntakeResult) -> None:
        self.intake.labels(result).inc()
