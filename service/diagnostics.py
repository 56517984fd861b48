"""What an operator can ask a running process for."""

from __future__ import annotations

import asyncio
import io
import logging

log = logging.getLogger(__name__)


def dump_tasks() -> None:
    """`kill -USR1 <pid>`: every asyncio task's stack in the log, to see where a stalled process waits.

    Thread dumps (py-spy, faulthandler) show only the idle event loop; this shows the coroutines.
    """
    buffer = io.StringIO()
    for task in asyncio.all_tasks():
        buffer.write(f"--- {task.get_name()}\n")
        task.print_stack(limit=20, file=buffer)
    log.warning("asyncio tasks:\n%s", buffer.getvalue())
