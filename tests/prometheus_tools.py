"""Where the Prometheus tools are: `promtool` and `prometheus` from Debian's `prometheus` package.

`make tools` unpacks them into `.venv/tools/bin` (and `make test` / `make test-deploy` do it first), so
CI machines start bare and still run them. A test that needs one fails, rather than skips, when it
is missing: a skipped check of the alert rules would pass unnoticed.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
TOOLS_BIN = REPO_ROOT / ".venv" / "tools" / "bin"


def tool_path(name: str) -> Path | None:
    """`.venv/tools/bin/<name>` of this repository, else `<name>` on PATH, else None."""
    local = TOOLS_BIN / name
    if local.is_file() and os.access(local, os.X_OK):
        return local
    found = shutil.which(name)
    return Path(found) if found else None


def require_tool(name: str) -> Path:
    """The tool's path; fails the calling test with what to run when it is not installed."""
    path = tool_path(name)
    if path is None:
        pytest.fail(
            f"{name} not found in {TOOLS_BIN} nor on PATH: run `make tools` "
            "(it unpacks Debian's `prometheus` package into .venv/tools)",
            pytrace=False,
        )
    return path


def promtool_path() -> Path:
    return require_tool("promtool")


def prometheus_path() -> Path:
    return require_tool("prometheus")
