"""Test-only start-up hook: run this Python process as if it were `POSTBACK_TEST_DAYS_AHEAD` days later.

`make test` puts this folder on PYTHONPATH for its "60 days later" run, so that the pytest process and
every `postback-router` process a test starts (they inherit the environment) read a clock moved ahead
by that many days. A timestamp written into a test as a date ages past an age rule (Meta's 7 days,
Microsoft's 90) there and fails at once, instead of weeks after it was written. `time_machine` moves
`time.time()` and `datetime.now()` but not `time.monotonic()`, so timeouts and asyncio keep working.
Nothing of the service imports this: it is loaded by the interpreter's `site` module only.
"""

from __future__ import annotations

import os

_DAYS_AHEAD = os.environ.get("POSTBACK_TEST_DAYS_AHEAD", "").strip()
# What tests/conftest.py checks, so that a run that asked for the shift cannot silently go without it.
SHIFTED_DAYS = 0

if _DAYS_AHEAD:
    from datetime import UTC, datetime, timedelta

    import time_machine

    # tick=True: the clock keeps running from the shifted moment, as a real clock would.
    time_machine.travel(datetime.now(UTC) + timedelta(days=int(_DAYS_AHEAD)), tick=True).start()
    SHIFTED_DAYS = int(_DAYS_AHEAD)
