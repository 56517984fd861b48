"""The "60 days later" run's clock shift reaches every process a test starts, not just pytest itself."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CLOCK_SHIFT = Path(__file__).resolve().parent / "clock_shift"


def _child_clock(days_ahead: str) -> float:
    """`time.time()` in a fresh Python process started the way the integration tests start services."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(CLOCK_SHIFT), os.environ.get("PYTHONPATH", "")]),
        "POSTBACK_TEST_DAYS_AHEAD": days_ahead,
    }
    script = "import datetime, time; print(time.time(), datetime.datetime.now(datetime.UTC).timestamp())"
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    wall, aware = map(float, out.stdout.split())
    assert abs(wall - aware) < 5
    return wall


def test_a_started_process_reads_a_clock_moved_ahead_by_the_days_asked_for() -> None:
    unshifted = _child_clock("")
    shifted = _child_clock("60")
    # Both children start within seconds of each other; only the shift separates them.
    assert abs((shifted - unshifted) - 60 * 86_400) < 60
