"""S2S delivery (contract §4): the one scheduler of `scheduler_core.py` with the S2S strategy.

A queue per destination (`destination_id`, an S2S host), a circuit breaker per host and URL path, one
postback per request, no linger, no precheck and no credentials. The request is built and the traffic
source's answer judged by the pure `dispatchers/core/s2s.py`; a postback whose URL cannot be sent counts
as an attempt that sent nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Unpack

from dispatchers.core.http import HttpRequest, HttpResponse, Transport
from dispatchers.core.outcome import Outcome
from dispatchers.core.s2s import build_s2s_request, classify_s2s_response, s2s_breaker_scope
from dispatchers.engine.scheduler_core import Postback, Scheduler, SchedulerOptions, exchange, utc_now


class S2SDeliverer:
    """The S2S `Deliverer`: one request per postback, built from its rendered URL."""

    name = "s2s"
    max_batch = 1
    linger = timedelta(0)

    def __init__(self, timeout_seconds: float) -> None:
        if timeout_seconds <= 0:
            raise ValueError("timeout_seconds must be positive")
        self.timeout_seconds = timeout_seconds

    def queue_key(self, postback: Postback) -> tuple[str, ...]:
        return ()  # one queue per destination

    def breaker_scope(self, postback: Postback) -> str:
        return s2s_breaker_scope(postback)  # a breaker per host and path

    def precheck(self, postback: Postback, now: datetime) -> Outcome | None:
        return None

    async def credentials(self, postback: Postback) -> None:
        return None

    def invalidate(self, credentials: None) -> None:
        pass

    def build(self, postbacks: Sequence[Postback], credentials: None) -> HttpRequest | Outcome:
        return build_s2s_request(postbacks[0], self.timeout_seconds)

    def classify(
        self, response: HttpResponse, postbacks: Sequence[Postback], now: datetime, credentials: None
    ) -> list[Outcome]:
        entry = postbacks[0].get("entry")
        return [classify_s2s_response(response, entry if isinstance(entry, Mapping) else {}, now=now)]


async def deliver_s2s(transport: Transport, postback: Postback, timeout_seconds: float) -> Outcome:
    """Build, send and classify one S2S postback as the scheduler does, without one; never raises for a
    delivery problem."""
    deliverer = S2SDeliverer(timeout_seconds)
    request = deliverer.build([postback], None)
    [outcome] = await exchange(transport, deliverer, request, [postback], None, utc_now)
    return outcome


class DeliveryScheduler(Scheduler[None]):
    """Delivers matched S2S postbacks with retries, per-destination isolation, limits and a breaker."""

    def __init__(self, transport: Transport, *, timeout_seconds: float, **options: Unpack[SchedulerOptions]) -> None:
        super().__init__(transport, S2SDeliverer(timeout_seconds), **options)
