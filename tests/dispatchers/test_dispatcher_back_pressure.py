"""The dispatcher's back-pressure (issue 8, defect 5): it stops fetching once DISPATCH_MAX_PENDING postbacks it
took are not final and fetches again once they are down to DISPATCH_RESUME_PENDING; a fetched batch is never
larger than the bound. The member side (pause, resume, rebalances) is tests/service/test_group_member_back_pressure.py;
the whole of it against a broker, tests/integration/test_dispatch_back_pressure.py."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from dispatchers.dispatcher import MAX_BATCH_RECORDS, Dispatcher
from service.settings import load_settings


def dispatcher(tmp_path: Path, **env: str) -> Dispatcher:
    base = {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "STATE_STORE": "memory://", "STATE_DIR": str(tmp_path)}
    return Dispatcher(load_settings({**base, **env}), "s2s")


async def test_fetching_pauses_at_the_bound_and_resumes_at_the_low_water_mark(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    d = dispatcher(tmp_path, DISPATCH_MAX_PENDING="10", DISPATCH_RESUME_PENDING="4")
    assert d.member._max_records == 10, "one batch never holds more than the bound"

    def before_a_fetch(pending: int) -> bool:
        d._partition_of = {f"pb-{n}": 0 for n in range(pending)}
        d.member.paused = d._fetch_paused()  # what the member does with the answer
        return d.paused

    with caplog.at_level(logging.INFO, logger="dispatchers.dispatcher"):
        states = [before_a_fetch(n) for n in (0, 9, 10, 19, 8, 5, 4, 3, 9, 10)]
    assert states == [False, False, True, True, True, True, False, False, False, True]
    messages = [r.getMessage() for r in caplog.records if "fetching" in r.getMessage()]
    assert [m.split()[0] for m in messages] == ["paused", "resumed", "paused"]
    assert "10 postbacks not final (DISPATCH_MAX_PENDING=10, DISPATCH_RESUME_PENDING=4)" in messages[0]
    await d.close()


async def test_a_large_bound_keeps_the_usual_batch(tmp_path: Path) -> None:
    d = dispatcher(tmp_path)
    assert d.member._max_records == MAX_BATCH_RECORDS
    assert not d._fetch_paused()
    await d.close()
